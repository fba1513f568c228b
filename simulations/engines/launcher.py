"""Run the app in Flower's Simulation Engine through the real ``flwr run`` CLI, and clean up.

It starts its own ``flower-superlink --simulation`` on free loopback ports (so runs never share
or leak a SuperLink), submits the app with ``flwr run <app> <connection> --stream``, waits for
the run to end and stops the SuperLink and everything it spawned by process id.

    python -m simulations.engines.launcher --num-supernodes 10 -c "num-server-rounds=3 data-dir='../shared/data/sst2'"

Client resources: ``--cpus-per-client`` (an integer, Flower's default 2) and ``--gpus-per-client``
(fractional: 0.25 runs four clients per GPU). ``--ray-cpus N`` tells the local Ray it has N CPUs (default: the
machine's): with 1 CPU per client, at most N clients train at once, e.g. to leave cores to other jobs. (3 on 2
cores, to run 5 sampled clients in two waves rather than three, gave no speed-up: docs/performance.md.)
``--ray-address HOST:PORT`` attaches the Simulation Engine to a running Ray cluster instead of starting a local
Ray (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from simulations.engines.lib.superlink import (check_ray, federation_config, format_run_config, parse_overrides,
                                               preflight, run_simulation)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--run-config", action="append", default=[],
                    help="run-config overrides, e.g. \"lr=0.01 method='pafi'\"; may repeat, a later -c wins")
    ap.add_argument("--num-supernodes", type=int, default=10)
    ap.add_argument("--cpus-per-client", type=int, default=2, help="CPUs per virtual client (integer)")
    ap.add_argument("--gpus-per-client", type=float, default=0.0,
                    help="GPUs per virtual client; a fraction shares one (0.25 = four clients per GPU)")
    ap.add_argument("--ray-cpus", type=int, default=0,
                    help="CPUs the local Ray schedules clients on (default 0: the machine's); e.g. 3 on 2 cores "
                         "trains 3 one-CPU clients at once")
    ap.add_argument("--ray-address", default=None,
                    help="attach to a running Ray cluster (HOST:PORT of its head, as `ray start` prints)")
    ap.add_argument("--flwr-home", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds the run may take before it is stopped (exit 124); default 3600")
    args = ap.parse_args(argv)
    try:
        federation_config(args.num_supernodes, args.cpus_per_client, args.gpus_per_client, args.ray_cpus)
        if args.timeout <= 0:
            raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
        check_ray(args.ray_cpus, args.ray_address)
    except ValueError as exc:
        print(f"fedsparse: error: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    for text in args.run_config:
        overrides.update(parse_overrides(text))
    problem = preflight(overrides, args.num_supernodes)  # the whole run-config, the data and the model: before any process starts
    if problem:
        print(f"fedsparse: {problem}", file=sys.stderr)
        return 2
    print("flwr run with --run-config", shlex.quote(format_run_config(overrides)), flush=True)
    return run_simulation(overrides, args.num_supernodes, args.cpus_per_client, flwr_home=args.flwr_home,
                          timeout=args.timeout, gpus_per_client=args.gpus_per_client, ray_address=args.ray_address,
                          ray_cpus=args.ray_cpus)


if __name__ == "__main__":
    sys.exit(main())
