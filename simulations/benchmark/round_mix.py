"""Which rounds swing, and why: the label mix of each round's sampled clients against the round's accuracy.

A run's seed fixes its partition and the clients each round trains (``server.strategy.seeded_sample``), so the
label mix that FedAvg averages in round r can be replayed from the run's config alone: the sampled partitions'
label counts, weighted as the server weighted them (``weighting``, ``examples-cap-multiple``). Its distance from
the training set's label mix (total variation: half the L1 distance; for two classes, how far the round's positive
share is from the data's) says how far the round pulls the shared head toward one class. For each stored run this
prints how many rounds were skewed (distance above ``--skew``), the mean accuracy in skewed and in balanced rounds,
the skewed rounds split by the class they over-represent most, and the correlation of distance and accuracy over the rounds at the full rate (after ``--skip`` rounds of start;
the decay, which damps the swing, is left out). No training: it reads the data, the run's config and history.

    python -m simulations.benchmark.round_mix docs/results/paper/runs --only "pafi-*,full-*"
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from server.guards import capped_weights, example_caps
from server.strategy import seeded_sample
from shared.config import ConfigError
from shared.data import DataLoadError, partition, run_splits
from shared.tasks import score_of, task_of
from shared.schedule import full_rate_rounds
from shared.settings import parse_run_config

SKEW = 0.2  # a round whose weighted label mix is 20 pts (total variation) from the data's is "skewed"
SKIP = 10  # the start, where every run climbs from chance, says nothing about the swing


def label_table(labels: list[list[int]], num_classes: int) -> np.ndarray:
    """(clients, classes) counts from each client's labels."""
    return np.array([np.bincount(np.asarray(ls, dtype=np.int64), minlength=num_classes) for ls in labels],
                    dtype=np.float64)


def round_mix(table: np.ndarray, picked: list[int], weights: list[float]) -> np.ndarray:
    """The label mix of ``picked`` clients: each client's own mix, weighted by ``weights`` as FedAvg weights its
    update."""
    mixes = table[picked] / np.maximum(table[picked].sum(1, keepdims=True), 1.0)
    w = np.asarray(weights, dtype=np.float64)
    return (w[:, None] * mixes).sum(0) / w.sum()


def round_skew(table: np.ndarray, picked: list[int], weights: list[float]) -> float:
    """Total variation distance between the weighted label mix of ``picked`` clients and the mix of all clients'
    rows."""
    overall = table.sum(0) / table.sum()
    return float(0.5 * np.abs(round_mix(table, picked, weights) - overall).sum())


def _rounds(table: np.ndarray, fraction: float, seed: int, rounds: int, weighting: str, cap_multiple: float):
    """(picked partitions, their FedAvg weights) of rounds 1..``rounds`` as the server drew and weighted them (one
    node per partition, in partition-id order, each declaring and claiming its partition's size)."""
    sizes = {pid: int(n) for pid, n in enumerate(table.sum(1))}
    caps = example_caps(sizes, cap_multiple)
    for rnd in range(1, rounds + 1):
        picked = sorted(seeded_sample(list(range(len(table))), fraction, seed, rnd))
        weights, _ = capped_weights([(pid, sizes[pid]) for pid in picked], caps, weighting)
        yield picked, weights.tolist()


def replay(table: np.ndarray, fraction: float, seed: int, rounds: int, weighting: str = "examples",
           cap_multiple: float = 0.0) -> list[float]:
    """The skew (:func:`round_skew`) of rounds 1..``rounds``."""
    return [round_skew(table, p, w) for p, w in _rounds(table, fraction, seed, rounds, weighting, cap_multiple)]


def replay_leaning(table: np.ndarray, fraction: float, seed: int, rounds: int, weighting: str = "examples",
                   cap_multiple: float = 0.0) -> list[int]:
    """The class each of rounds 1..``rounds`` over-represents most against the data's mix."""
    overall = table.sum(0) / table.sum()
    return [int(np.argmax(round_mix(table, p, w) - overall))
            for p, w in _rounds(table, fraction, seed, rounds, weighting, cap_multiple)]


def correlation(x: list[float], y: list[float]) -> float | None:
    """Pearson's r, or None when either side is constant or there are fewer than 3 points."""
    if len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(sxx * syy)


def summarize(skews: list[float], accuracies: list[float], skew: float = SKEW, skip: int = SKIP,
              upto: int | None = None, leaning: list[int] | None = None) -> dict[str, Any]:
    """Rounds ``skip+1..upto`` (all trained rounds without ``upto``): how many were skewed, the mean accuracy in
    skewed and balanced rounds, the correlation of skew and accuracy and, given each round's ``leaning`` class,
    ``by_class``: {class: (skewed rounds leaning to it, their mean accuracy)}."""
    end = min(len(skews), len(accuracies), upto or len(accuracies))
    pairs = list(zip(skews[skip:end], accuracies[skip:end]))
    by_class: dict[int, tuple[int, float]] = {}
    if leaning is not None:
        for c in sorted(set(leaning[skip:end])):
            accs = [a for (s, a), lc in zip(pairs, leaning[skip:end]) if s > skew and lc == c]
            if accs:
                by_class[c] = (len(accs), sum(accs) / len(accs))
    hi = [a for s, a in pairs if s > skew]
    lo = [a for s, a in pairs if s <= skew]
    return {"rounds": (skip + 1, end) if end > skip else None, "skewed": len(hi), "balanced": len(lo),
            "acc_skewed": sum(hi) / len(hi) if hi else None, "acc_balanced": sum(lo) / len(lo) if lo else None,
            "r": correlation([s for s, _ in pairs], [a for _, a in pairs]),
            "mean_skew": sum(s for s, _ in pairs) / len(pairs) if pairs else None,
            "skew_of_skewed": sum(s for s, _ in pairs if s > skew) / len(hi) if hi else None, "by_class": by_class}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _run_folders(root: Path, only: str) -> list[Path]:
    pats = [p.strip() for p in only.split(",") if p.strip()] or ["*"]
    found = sorted(p for p in root.iterdir() if (p / "history.json").is_file() and (p / "run_config.json").is_file())
    return [p for p in found if any(fnmatch.fnmatch(p.name, pat) for pat in pats)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, help="a folder of stored runs (each with run_config.json and history.json)")
    ap.add_argument("--only", default="*", help="comma-separated run-name patterns (default: every run)")
    ap.add_argument("--data-dir", default=None, help="read the data here instead of the runs' data-dir")
    ap.add_argument("--skew", type=float, default=SKEW, help=f"a skewed round's distance (default {SKEW})")
    ap.add_argument("--skip", type=int, default=SKIP, help=f"start rounds left out (default {SKIP})")
    args = ap.parse_args(argv)
    if not 0 < args.skew < 1 or args.skip < 0:
        raise SystemExit("round_mix: --skew must be in (0, 1) and --skip >= 0; e.g. --skew 0.2 --skip 10")
    if not args.runs.is_dir():
        raise SystemExit(f"round_mix: {args.runs} is not a folder of runs; pass e.g. docs/results/paper/runs")
    folders = _run_folders(args.runs, args.only)
    if not folders:
        raise SystemExit(f"round_mix: no stored run in {args.runs} matches --only {args.only!r}")
    tables: dict[tuple, np.ndarray] = {}
    lines = [f"skewed round: the sampled clients' weighted label mix is more than {args.skew:.2f} (total variation) "
             f"from the data's; rounds {args.skip + 1}..the last at the full rate",
             "| run | seed | rounds | skewed | mean skew | mean skew of the skewed | acc % skewed | acc % balanced "
             "| Δ (pts) | r(skew, acc) | skewed rounds by the class they over-represent (rounds: acc %) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        stored = json.loads((folder / "run_config.json").read_text())
        records = json.loads((folder / "history.json").read_text())
        history = [h for h in records if h.get("round", 0) >= 1]
        handshake = [h for h in records if h.get("round") == 0]
        if args.data_dir:
            stored["data-dir"] = args.data_dir
        try:
            cfg = parse_run_config({k: v for k, v in stored.items() if k != "output-dir"})
            clients = int(handshake[0]["sampled"]) if handshake else None
            names = task_of(cfg).label_names
            if not names:
                raise SystemExit(f"round_mix: {folder.name}: its task {cfg.dataset!r} is a regression; the round mix "
                                 f"is a mix of classes, so it reads classification runs only")
            if not clients:
                raise SystemExit(f"round_mix: {folder.name} has no handshake round in its history; cannot tell "
                                 f"how many clients it had")
            key = (cfg.dataset, cfg.data_dir, cfg.partitioner, cfg.dirichlet_alpha, cfg.seed, clients)
            if key not in tables:
                train = run_splits(cfg)["train"]
                parts = [partition(train, clients, i, cfg.partitioner, cfg.dirichlet_alpha, cfg.seed)["label"]
                         for i in range(clients)]
                tables[key] = label_table(parts, len(names))
        except (ConfigError, DataLoadError) as exc:
            raise SystemExit(f"round_mix: {folder.name}: {exc}") from None
        skews = replay(tables[key], cfg.fraction_train, cfg.seed, len(history), cfg.weighting,
                       cfg.examples_cap_multiple)
        leaning = replay_leaning(tables[key], cfg.fraction_train, cfg.seed, len(history), cfg.weighting,
                                 cfg.examples_cap_multiple)
        s = summarize(skews, [score_of(h) for h in history], args.skew, args.skip, full_rate_rounds(stored), leaning)
        by_class = "; ".join(f"{names[c]} {n}: {_pct(a)}" for c, (n, a) in s["by_class"].items()) or "–"
        delta = (f"{100 * (s['acc_skewed'] - s['acc_balanced']):+.1f}"
                 if s["acc_skewed"] is not None and s["acc_balanced"] is not None else "–")
        r = "–" if s["r"] is None else f"{s['r']:+.2f}"
        mean_skew, of_skewed = ("–" if x is None else f"{x:.3f}" for x in (s["mean_skew"], s["skew_of_skewed"]))
        span = f"{s['rounds'][0]}-{s['rounds'][1]}" if s["rounds"] else f"– (only {len(history)} rounds)"
        lines.append(f"| {folder.name} | {cfg.seed} | {span} | {s['skewed']} | "
                     f"{mean_skew} | {of_skewed} | {_pct(s['acc_skewed'])} | {_pct(s['acc_balanced'])} | {delta} | {r} | "
                     f"{by_class} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
