"""The report over seeds: the runs of one preset entry (``<name>-s<seed>``) folded into one row.

Pure functions over :class:`simulations.benchmark.lib.report.RunResult`: mean ± sample standard deviation of the
final, best and last-10-round score (the task's headline metric, :mod:`simulations.benchmark.lib.scores`), bytes per
client-round, megabytes to the target score (mean over the seeds that reached it, and how many did), the plateau gain (how much the last quarter of the rounds
still added), and per-round bands (mean ± std) for the plots.
"""

from __future__ import annotations

import math
from typing import Any

from shared.schedule import full_rate_rounds
from simulations.benchmark.lib.runs import MB, RunResult, fmt_cell, cumulative_bytes, reach_target
from simulations.benchmark.lib.scores import LEGACY_METRIC, best_of, final_score, score_of, short_label

GROUP_COLUMNS = ("name", "task", "metric", "method", "value_dtype", "partitioner", "mask_density", "num_trainable",
                 "seeds", "rounds", "final_score", "final_std", "best_score", "best_std", "tail_score", "tail_std",
                 "tail_vs_reference", "bytes_up_per_client_round",
                 "bytes_down_per_client_round", "reduction_up", "reduction_down", "reduction_reference",
                 "total_bytes", "target_score", "bytes_to_target", "reached", "round_to_target",
                 "score_vs_reference", "plateau_gain", "plateau_std", "plateau_window", "seconds_per_round")


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with n - 1; 0.0 for one value), or (None, None) for no values."""
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def group_runs(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Runs by their group, in the order the groups first appear."""
    out: dict[str, list[RunResult]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    return out


def _trained(history: list[dict[str, Any]], metric: str | None = None) -> list[float]:
    """The scores of the trained rounds (round 0, the untrained model, left out) that have one."""
    scores = (score_of(r, metric) for r in history if r.get("round", 0) >= 1)
    return [s for s in scores if s is not None]


def run_lengths(runs: list[RunResult]) -> list[int]:
    """The distinct numbers of trained rounds among ``runs``: one value when the seeds ran equally long; more when a
    group mixes, say, a finished 140-round seed with one still at 120 (its means are interim, not comparable)."""
    return sorted({len(_trained(r.history, r.metric)) for r in runs})


def fmt_rounds(lengths: list[int] | None) -> str:
    """``140``, or ``120/140 (mixed)`` for a group whose seeds ran unequally long."""
    if not lengths:
        return "–"
    return str(lengths[0]) if len(lengths) == 1 else "/".join(map(str, lengths)) + " (mixed)"


TARGET_DENSITY = 0.005  # the density the targets are stated for (PaFi's paper); other densities are ablations
ORDERING = ("pafi", "random", "magnitude")  # the PaFi paper: smallest > random > largest magnitude
TAIL_ROUNDS = 10  # rounds averaged into the tail score: one round's accuracy on 872 rows swings by ~1 pt


def tail_score(history: list[dict[str, Any]], rounds: int = TAIL_ROUNDS, metric: str | None = None) -> float | None:
    """Mean score of the last ``rounds`` trained rounds: a final figure that one noisy round does not move
    (full-s42 of ``paper`` read 88.0 % in round 79 and 86.1 % in round 80). None for a shorter history."""
    accs = _trained(history, metric)
    return sum(accs[-rounds:]) / rounds if len(accs) >= rounds else None


def _tails(runs: list[RunResult]) -> tuple[float | None, float | None]:
    """(mean, std) of the runs' tail scores, over the runs long enough to have one."""
    return mean_std([t for t in (tail_score(r.history, metric=r.metric) for r in runs) if t is not None])


def plateau_gain(history: list[dict[str, Any]], window: int | None = None, upto: int | None = None,
                 metric: str | None = None) -> tuple[float | None, int]:
    """(mean score of the last ``window`` trained rounds minus the mean of the ``window`` before, window).

    ``window`` defaults to a quarter of the trained rounds (10 of 40), at least 1; the gain is None when the
    history has fewer than two windows. Near zero (or negative): the run had plateaued before its last quarter.
    ``upto``: only the first ``upto`` trained rounds count (a run with an lr decay is judged on its rounds at the
    full rate, :func:`shared.schedule.full_rate_rounds`).
    """
    accs = _trained(history, metric)
    if upto is not None:
        accs = accs[:max(0, upto)]
    w = window or max(1, len(accs) // 4)
    if len(accs) < 2 * w:
        return None, w
    return sum(accs[-w:]) / w - sum(accs[-2 * w:-w]) / w, w


def band(runs: list[RunResult]) -> dict[str, list[float]]:
    """Per round present in every run (round 0 included) where every run has a score: round, mean/std score, mean
    cumulative MB."""
    per_run = [{h["round"]: (score_of(h, r.metric), c) for h, c in zip(r.history, cumulative_bytes(r.history))}
               for r in runs]
    rounds = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    out: dict[str, list[float]] = {"round": [], "mean": [], "std": [], "mb": []}
    for rnd in rounds:
        accs = [d[rnd][0] for d in per_run]
        if any(a is None for a in accs):
            continue
        mean, std = mean_std(accs)
        out["round"].append(rnd)
        out["mean"].append(mean)
        out["std"].append(std)
        out["mb"].append(sum(d[rnd][1] for d in per_run) / len(per_run) / MB)
    return out


def group_row(name: str, runs: list[RunResult], ref: list[RunResult] | None, target: float | None) -> dict[str, Any]:
    """One row over the seeds of ``runs`` (one task); reductions and Δ score against the mean of ``ref``'s runs."""
    s = runs[0].summary
    finals = [f for f in (final_score(r.summary) for r in runs) if f is not None]
    bests = [best_of(r.metric, acc) for r, acc in ((r, _trained(r.history, r.metric)) for r in runs) if acc]
    final, final_std = mean_std(finals)
    best, best_std = mean_std(bests)
    tail, tail_std = _tails(runs)
    up = mean_std([r.summary.get("bytes_up_per_client_round") or 0 for r in runs])[0]
    down = mean_std([r.summary.get("bytes_down_per_client_round") or 0 for r in runs])[0]
    reached = [reach_target(r.history, target, r.metric) for r in runs]
    plateaus = [plateau_gain(r.history, upto=full_rate_rounds(r.config), metric=r.metric) for r in runs]
    gain, gain_std = mean_std([g for g, _ in plateaus if g is not None])
    hits = [(rnd, b) for rnd, b in reached if rnd is not None]
    if ref:
        ref_up = mean_std([r.summary["bytes_up_per_client_round"] for r in ref])[0]
        ref_down = mean_std([r.summary["bytes_down_per_client_round"] for r in ref])[0]
        ref_final = mean_std([f for f in (final_score(r.summary) for r in ref) if f is not None])[0]
        ref_tail = _tails(ref)[0]
        reference = f"{ref[0].group} (measured, mean of {len(ref)})"
    else:
        ref_up = ref_down = s.get("dense_bytes_per_client_round")
        ref_final = ref_tail = None
        reference = "dense N*4 bytes (no full run)"
    return {
        "name": name, "task": runs[0].task, "metric": runs[0].metric, "method": s.get("method"),
        "value_dtype": s.get("value_dtype"),
        "partitioner": runs[0].config.get("partitioner"), "mask_density": s.get("mask_density"),
        "num_trainable": s.get("num_trainable"), "seeds": len(runs),
        "seed_list": [r.config.get("seed") for r in runs], "rounds": run_lengths(runs),
        "seed_finals": _by_seed(runs, lambda r: final_score(r.summary)),
        "seed_tails": _by_seed(runs, lambda r: tail_score(r.history, metric=r.metric)),
        "seed_bytes_to_target": _by_seed(runs, lambda r: reach_target(r.history, target, r.metric)[1]),
        "final_score": final, "final_std": final_std, "best_score": best, "best_std": best_std,
        "tail_score": tail, "tail_std": tail_std,
        "tail_vs_reference": tail - ref_tail if tail is not None and ref_tail is not None else None,
        "bytes_up_per_client_round": up, "bytes_down_per_client_round": down,
        "reduction_up": ref_up / up if ref_up and up else None,
        "reduction_down": ref_down / down if ref_down and down else None, "reduction_reference": reference,
        "total_bytes": mean_std([cumulative_bytes(r.history)[-1] for r in runs if r.history])[0],
        "target_score": target, "bytes_to_target": mean_std([b for _, b in hits])[0],
        "reached": len(hits), "round_to_target": mean_std([rnd for rnd, _ in hits])[0],
        "score_vs_reference": final - ref_final if final is not None and ref_final is not None else None,
        "plateau_gain": gain, "plateau_std": gain_std, "plateau_window": max((w for _, w in plateaus), default=None),
        "seconds_per_round": mean_std([r.summary["seconds_per_round"] for r in runs
                                       if r.summary.get("seconds_per_round") is not None])[0],
    }


def _by_seed(runs: list[RunResult], value) -> dict[int, float]:
    """{seed: value} over the runs that have a seed and the value (the pairs :func:`paired` matches on)."""
    out = {}
    for r in runs:
        seed, v = r.config.get("seed"), value(r)
        if seed is not None and v is not None:
            out[seed] = v
    return out


# two-sided 95 % quantiles of Student's t for 1..10 degrees of freedom (the paired gap over 2..11 seeds)
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
PAIRED_KINDS = {"final": "seed_finals", "tail": "seed_tails"}


def paired(a: dict[str, Any], b: dict[str, Any], kind: str = "final") -> dict[str, Any] | None:
    """``a`` − ``b`` seed by seed, on the seeds both rows were run on (same seed: same partition, same sampled
    clients), so the partition's own difficulty (seed 43 of ``paper`` is harder for every method) cancels out of the
    gap. Returns seeds, per-seed gaps, their mean, sample std, a t-based 95 % confidence interval of the mean (None
    for one seed) and ``ahead`` (seeds on which ``a`` is higher); None when the rows share no seed."""
    xa, xb = a.get(PAIRED_KINDS[kind]) or {}, b.get(PAIRED_KINDS[kind]) or {}
    seeds = sorted(set(xa) & set(xb))
    if not seeds:
        return None
    gaps = [xa[s] - xb[s] for s in seeds]
    mean, std = mean_std(gaps)
    return {"seeds": seeds, "gaps": gaps, "mean": mean, "std": std, "ci95": ci95(mean, std, len(gaps)),
            "ahead": sum(g > 0 for g in gaps)}


def ci95(mean: float, std: float, n: int) -> tuple[float, float] | None:
    """The two-sided 95 % confidence interval of a mean over ``n`` samples with sample std ``std`` (Student's t,
    n − 1 degrees of freedom; the 10-degree value beyond that), or None for one sample."""
    if n < 2:
        return None
    half = T95[min(n - 2, len(T95) - 1)] * std / math.sqrt(n)
    return mean - half, mean + half


def paired_ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """``b``'s bytes to the target over ``a``'s, seed by seed on the seeds on which both reached it, and their
    geometric mean (a ratio's average); None when no seed has both."""
    xa, xb = a.get("seed_bytes_to_target") or {}, b.get("seed_bytes_to_target") or {}
    seeds = sorted(s for s in set(xa) & set(xb) if xa[s] and xb[s])
    if not seeds:
        return None
    ratios = [xb[s] / xa[s] for s in seeds]
    return {"seeds": seeds, "ratios": ratios,
            "geomean": math.exp(sum(math.log(x) for x in ratios) / len(ratios))}


def fmt_paired(p: dict[str, Any]) -> str:
    """``-2.06 ± 0.52 (95 % CI -3.35 … -0.77)`` in points, or ``-1.61 (1 seed)``."""
    if p["ci95"] is None:
        return f"{100 * p['mean']:+.2f} (1 seed)"
    lo, hi = p["ci95"]
    return f"{100 * p['mean']:+.2f} ± {100 * p['std']:.2f} (95 % CI {100 * lo:+.2f} … {100 * hi:+.2f})"


def paired_pairs(rows: list[dict[str, Any]], reference: str | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The comparisons the paired table makes: every group against the full group of its own partitioner (the
    reference for non-IID, ``full-iid`` for IID groups), then the PaFi paper's mask ordering (pafi − random,
    random − magnitude, pafi − magnitude) and pafi − lora, on the groups at the target density."""
    by_name = {r["name"]: r for r in rows}
    fulls = {r.get("partitioner"): r for r in rows if r.get("method") == "full"}
    if reference in by_name:
        fulls[by_name[reference].get("partitioner")] = by_name[reference]
    out = []
    for r in rows:
        ref = fulls.get(r.get("partitioner"))
        if ref is not None and r is not ref and r.get("method") != "full":
            out.append((r, ref))
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        dens = r.get("mask_density")
        if r.get("partitioner") != "iid" and (dens is None or abs(dens - TARGET_DENSITY) <= 1e-9):
            first.setdefault(r.get("method"), r)
    neighbours = list(zip(ORDERING, ORDERING[1:]))
    for ma, mb in neighbours + [(ORDERING[0], ORDERING[-1]), (ORDERING[0], "lora")]:
        if ma in first and mb in first:
            out.append((first[ma], first[mb]))
    return out


def markdown_paired(rows: list[dict[str, Any]], reference: str | None) -> str:
    """The paired table: one line per comparison that shares at least two seeds; empty when none does."""
    head = ("comparison", "seeds", "Δ final per seed (pts)", "Δ final (pts, mean ± std, 95 % CI)",
            f"Δ last-{TAIL_ROUNDS} per seed (pts)", f"Δ last-{TAIL_ROUNDS} (pts, mean ± std, 95 % CI)",
            "seeds ahead (final / last-10)")
    lines = []
    for a, b in paired_pairs(rows, reference):
        pf, pt = paired(a, b, "final"), paired(a, b, "tail")
        if pf is None or len(pf["seeds"]) < 2:
            continue
        per = lambda p: " / ".join(f"{100 * g:+.2f}" for g in p["gaps"]) if p else "–"
        ahead = f"{pf['ahead']}/{len(pf['seeds'])} / " + (f"{pt['ahead']}/{len(pt['seeds'])}" if pt else "–")
        lines.append("| " + " | ".join((f"{a['name']} − {b['name']}", "/".join(map(str, pf["seeds"])), per(pf),
                                         fmt_paired(pf), per(pt), fmt_paired(pt) if pt else "–", ahead)) + " |")
    if not lines:
        return ""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + lines)


def group_rows(runs: list[RunResult], ref: RunResult | None, target: float | None) -> list[dict[str, Any]]:
    """One row per group; the reference is ``ref``'s whole group (all its seeds)."""
    groups = group_runs(runs)
    ref_runs = groups.get(ref.group) if ref is not None else None
    return [group_row(name, members, ref_runs, target) for name, members in groups.items()]


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def _gain(row: dict[str, Any]) -> str:
    """``+0.12 ± 0.30`` points over the last ``plateau_window`` rounds, or – for a run too short to tell."""
    if row.get("plateau_gain") is None:
        return "–"
    return f"{100 * row['plateau_gain']:+.2f} ± {100 * (row.get('plateau_std') or 0.0):.2f}"


def markdown_groups(rows: list[dict[str, Any]], metric: str = LEGACY_METRIC) -> str:
    """The table over seeds as GitHub Markdown; the score columns name ``metric``."""
    m = short_label(metric)
    head = ("run", "seeds", "rounds", "trainable", "up B/client-round", "down B/client-round", "up reduction",
            f"final {m} (mean ± std)", f"best {m} (mean ± std)", f"last-{TAIL_ROUNDS} {m} (mean ± std)",
            "Δ final vs full (pts)", f"Δ last-{TAIL_ROUNDS} vs full (pts)",
            "MB to target (mean)", "seeds at target", "total MB (mean)", "gain in the last quarter (pts)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r["name"], str(r["seeds"]), fmt_rounds(r.get("rounds")), fmt_cell(r["num_trainable"]), fmt_cell(r["bytes_up_per_client_round"], "bytes"),
                 fmt_cell(r["bytes_down_per_client_round"], "bytes"), fmt_cell(r["reduction_up"], "x"),
                 _pm(r["final_score"], r["final_std"]), _pm(r["best_score"], r["best_std"]),
                 _pm(r["tail_score"], r["tail_std"]), fmt_cell(r["score_vs_reference"], "pts"),
                 fmt_cell(r["tail_vs_reference"], "pts"), fmt_cell(r["bytes_to_target"], "mb"),
                 f"{r['reached']}/{r['seeds']}", fmt_cell(r["total_bytes"], "mb"), _gain(r))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
