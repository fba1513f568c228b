"""Peak resident memory of a whole simulation: the summed RSS of every process a run starts (SuperLink, ServerApp,
Ray workers), sampled while it runs. The perf benchmark's ``rss`` section and the scale benchmark use it."""

from __future__ import annotations

import threading
import time

import psutil

from simulations.engines import run_simulation


def run_with_peak_rss(run_config: dict, num_supernodes: int, timeout: float, **launch) -> dict:
    """Run one simulation; sample the summed RSS of this process's descendants every 0.2 s.

    ``launch``: further keywords of :func:`simulations.engines.run_simulation` (client resources,
    ``ray_address``, ``quiet``).
    """
    me, peak, stop = psutil.Process(), [0, 0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total, count = 0, 0
            for p in me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                    count += 1
                except psutil.Error:
                    pass
            if total > peak[0]:
                peak[:] = [total, count]
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        rc = run_simulation(run_config, num_supernodes=num_supernodes, timeout=timeout, **{"quiet": True, **launch})
    finally:
        stop.set()
        sampler.join()
    return {"rc": rc, "peak_rss_bytes": peak[0], "processes_at_peak": peak[1],
            "wall_seconds": time.perf_counter() - t0}
