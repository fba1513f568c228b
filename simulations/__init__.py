"""Commands that run, measure and analyse federations, in four rooms; ``python -m simulations`` lists them.

Each room is a package with its commands at the top and the machinery that serves them in its ``lib/``:

- ``engines/``     how a federation runs: ``launcher`` (``make run``: Flower's Simulation Engine on a private
                   SuperLink), ``deployment`` (SuperLink + SuperNodes as processes, TLS and node auth),
                   ``ray_cluster`` (a local Ray cluster, by PID); ``lib/``: the SuperLink machinery and the
                   in-process grid the tests and attack runs use.
- ``benchmark/``   the communication-cost benchmark (``python -m simulations.benchmark --preset paper``), its
                   ``presets/``, and the analyses that read its runs (``round_mix``, ``mask_layout``,
                   ``sam_overlap``); ``lib/``: matrix (presets), run store, runs, report, seeds, targets, plots.
- ``robustness/``  ``attack_benchmark`` (attacks x aggregators, whole federations under attack) and
                   ``secagg_compare`` (SecAgg+ against the plain round); ``lib/``: attacks, adversary.
- ``performance/`` ``perf_benchmark``, ``scale_benchmark`` (10,000 clients), ``wire_truth`` (bytes on a real
                   socket against the reported ones); ``lib/``: perf steps, the counting proxy, peak RSS.

A room uses another only through that room's package (``from simulations.engines import run_simulation``), never
its ``lib/`` directly; tests/test_architecture.py keeps that and the shape.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository (the Flower app's folder)
SST2 = (REPO / ".." / "shared" / "data" / "sst2").resolve()  # the real SST-2 beside the clone (../shared/data)
