"""How close is sam's cheap ``local-top`` scheme to the exact ``dense`` statistic? Prints the overlap.

For ``--num-partitions`` clients (the run's partitioner and seed), computes each client's accumulated
gradient exactly as ``query.sam_stats`` does, then selects the global top-k from (a) the sum of the
dense statistics and (b) the clients' local top ``factor * k`` entries only, and prints |a ∩ b| / k
with the upload bytes per client of each (raw array bytes: float32 values, int32 positions).

    python -m simulations.benchmark.sam_overlap --num-partitions 10 -c "data-dir='../shared/data/sst2' sam-batches=8"
"""

from __future__ import annotations

import argparse
import time

import torch

from shared.settings import parse_run_config
from shared.model import base_weights_digest, load_base_model
from shared.runtime import client_partition, num_labels_for
from shared.methods.sam.statistic import (accumulate_gradients, global_statistic, local_top, overlap, to_flat_index,
                                          top_by_square)
from shared.methods.sam.tuner import SamTuner


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--run-config", default="", help="run-config overrides, as for the launcher")
    ap.add_argument("--num-partitions", type=int, default=10)
    ap.add_argument("--factors", default="1,2,4,8", help="local-top sizes as multiples of k")
    args = ap.parse_args(argv)
    from flwr.common.config import parse_config_args

    cfg = parse_run_config({**dict(parse_config_args([args.run_config]) if args.run_config else {}),
                            "method": "sam"})
    base = load_base_model(cfg.model, num_labels_for(cfg), cfg.seed)
    tuner = SamTuner(base, cfg, base_weights_digest(base.model, base.head_names))
    batches = tuner.settings.batches
    t0, grads = time.perf_counter(), []
    for pid in range(args.num_partitions):
        data = client_partition(cfg, base.tokenizer, pid, args.num_partitions)
        grads.append(accumulate_gradients(base.model, list(tuner.shapes), data, batches, cfg.batch_size,
                                          seed=cfg.seed * 100_003 + pid * 1_009))
    n = tuner.num_candidates
    dense = to_flat_index(top_by_square(global_statistic([(None, g) for g in grads], n).float(), tuner.shapes,
                                        cfg.mask_density, cfg.mask_scope), tuner.shapes)
    print(f"candidates {n:,}  k {dense.numel():,}  clients {len(grads)}  sam-batches {batches}  "
          f"gradients {time.perf_counter() - t0:.1f}s")
    print(f"dense      upload/client {4 * n:>12,} B  overlap 1.0000 (reference)")
    for factor in (float(f) for f in args.factors.split(",")):
        reports = [local_top(g, tuner.shapes, cfg.mask_density, factor, cfg.mask_scope) for g in grads]
        cheap = to_flat_index(top_by_square(global_statistic(reports, n).float(), tuner.shapes, cfg.mask_density,
                                            cfg.mask_scope), tuner.shapes)
        up = sum(8 * int(idx.numel()) for idx, _ in reports) / len(reports)
        print(f"local-top x{factor:<4g} upload/client {up:>12,.0f} B  overlap {overlap(dense, cheap):.4f}")
        # What a second pass would reach: exact sums, but only on the union of the reported positions.
        union = torch.unique(torch.cat([idx for idx, _ in reports]))
        exact = global_statistic([(None, g) for g in grads], n)
        restricted = torch.zeros(n, dtype=torch.float64)
        restricted[union] = exact[union]
        refined = to_flat_index(top_by_square(restricted.float(), tuner.shapes, cfg.mask_density, cfg.mask_scope),
                                tuner.shapes)
        print(f"  + refine on the union ({union.numel():,} positions): upload/client "
              f"{up + 4 * union.numel():>12,.0f} B  overlap {overlap(dense, refined):.4f}")


if __name__ == "__main__":
    main()
