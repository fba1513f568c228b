"""The same run with and without secure aggregation (SecAgg+), through the Simulation Engine: the table.

Both runs share every knob and the seed; the plain one weighs uniformly (``weighting='uniform'``) as a
secure round does, so the two differ only by SecAgg+'s clipping and quantization. Printed and written
to ``OUT/secagg_compare.{json,md}``: per-round accuracy, the final values' relative difference, bytes per
client-round of every SecAgg+ stage, the total over the plain run's (the overhead ratio) and the ratio
of seconds per round.

    flock /work/heavy.lock python -m simulations.robustness.secagg_compare --out outputs/secagg -c "num-server-rounds=3"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from simulations import SST2
from simulations.engines import parse_overrides, run_simulation

DEFAULTS = {  # simulations/benchmark/presets/compare.toml's pafi run, 3 rounds
    "data-dir": str(SST2), "dataset": "sst2",
    "num-server-rounds": 3, "fraction-train": 0.3, "local-steps": 10, "batch-size": 32, "max-length": 64,
    "max-eval-examples": 0, "mask-density": 0.005, "partitioner": "dirichlet", "dirichlet-alpha": 0.5,
    "lr": 0.005, "seed": 42, "method": "pafi", "weighting": "uniform",
}


def final_vector(out: Path) -> torch.Tensor:
    """The run's final values ‖ head from delta.safetensors."""
    t = load_file(str(out / "delta.safetensors"))
    return torch.cat([t["values"].double()] + [t[k].reshape(-1).double() for k in sorted(t) if k.startswith("head.")])


def compare(plain: Path, secure: Path) -> dict[str, Any]:
    """The comparison of two finished runs' outputs."""
    hp, hs = (json.loads((d / "history.json").read_text()) for d in (plain, secure))
    sp, ss = (json.loads((d / "summary.json").read_text()) for d in (plain, secure))
    a, b = final_vector(secure), final_vector(plain)
    plain_trip = sp["bytes_up_per_client_round"] + sp["bytes_down_per_client_round"]
    secure_trip = ss["bytes_up_per_client_round"] + ss["bytes_down_per_client_round"]
    spr_p = sum(r["round_seconds"] for r in hp[1:]) / max(1, len(hp) - 1)
    spr_s = sum(r["round_seconds"] for r in hs[1:]) / max(1, len(hs) - 1)
    return {
        "rounds": [{"round": p["round"], "plain_accuracy": p["accuracy"], "secure_accuracy": s["accuracy"],
                    "plain_seconds": p["round_seconds"], "secure_seconds": s["round_seconds"],
                    "secure_survivors": (s.get("secagg") or {}).get("survivors")} for p, s in zip(hp, hs)],
        "final_values_rel_diff": float((a - b).norm() / b.norm()),
        "final_values_max_abs_diff": float((a - b).abs().max()),
        "max_accuracy_gap_pt": 100 * max(abs(p["accuracy"] - s["accuracy"]) for p, s in zip(hp, hs)),
        "secagg_bytes_per_client_round": ss.get("secagg_bytes_per_client_round"),
        "plain_bytes_per_client_round": {"down": sp["bytes_down_per_client_round"],
                                         "up": sp["bytes_up_per_client_round"]},
        "secure_bytes_per_client_round": secure_trip, "plain_round_trip_bytes": plain_trip,
        "overhead_ratio": secure_trip / plain_trip,
        "seconds_per_round": {"plain": spr_p, "secure": spr_s, "ratio": spr_s / spr_p},
        "quantization_step": ss.get("secagg_quantization_step"), "k": ss["k"], "head_size": ss["head_size"],
    }


def markdown(res: dict[str, Any]) -> str:
    lines = ["| round | plain acc | secure acc | plain s | secure s |", "|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['plain_accuracy']:.4f} | {r['secure_accuracy']:.4f} | {r['plain_seconds']:.1f} | "
              f"{r['secure_seconds']:.1f} |" for r in res["rounds"]]
    lines += ["", "| SecAgg+ stage | down B/client-round | up B/client-round |", "|---|---|---|"]
    for stage, b in (res["secagg_bytes_per_client_round"] or {}).items():
        lines.append(f"| {stage} | {b['down']:,.0f} | {b['up']:,.0f} |")
    pb = res["plain_bytes_per_client_round"]
    lines += [f"| plain round (values only) | {pb['down']:,.0f} | {pb['up']:,.0f} |", "",
              f"final values: relative difference {res['final_values_rel_diff']:.3e}, max |diff| "
              f"{res['final_values_max_abs_diff']:.3e} (quantization step {res['quantization_step']:.3g}); "
              f"largest accuracy gap {res['max_accuracy_gap_pt']:.2f} pt",
              f"bytes per client-round: secure {res['secure_bytes_per_client_round']:,.0f} vs plain "
              f"{res['plain_round_trip_bytes']:,.0f}: overhead ratio {res['overhead_ratio']:.2f}",
              f"seconds per round: secure {res['seconds_per_round']['secure']:.1f} vs plain "
              f"{res['seconds_per_round']['plain']:.1f}: ratio {res['seconds_per_round']['ratio']:.2f}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--run-config", default="", help="overrides of both runs' run-config")
    ap.add_argument("--out", type=Path, default=Path("outputs/secagg-compare"))
    ap.add_argument("--num-supernodes", type=int, default=10)
    ap.add_argument("--cpus-per-client", type=int, default=1)
    args = ap.parse_args(argv)
    conf = {**DEFAULTS, **parse_overrides(args.run_config)}
    out = args.out.resolve()
    for name, secure in (("plain", False), ("secure", True)):
        rc = run_simulation({**conf, "secure-aggregation": secure, "output-dir": str(out / name)},
                            args.num_supernodes, args.cpus_per_client, flwr_home=out / "flwr", timeout=7200)
        if rc != 0:
            print(f"secagg_compare: the {name} run failed (exit {rc})", file=sys.stderr)
            return rc
    res = compare(out / "plain", out / "secure")
    (out / "secagg_compare.json").write_text(json.dumps(res, indent=2))
    (out / "secagg_compare.md").write_text(markdown(res))
    print(markdown(res), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
