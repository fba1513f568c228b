"""The issue's measured targets, checked on the benchmark's run rows (see ``report.run_row``).

- PaFi at density 0.005 sends >= 800x fewer bytes up per client-round than ``full`` in float16,
  >= 1500x in int8;
- PaFi's final score is within 1.0 point of ``full``'s, on the last round and on the mean of the last
  10 rounds (``tail_score``: one round's accuracy swings by about a point);
- PaFi needs >= 2x fewer total bytes than LoRA to reach the target score, and >= 500x fewer than full;
- the PaFi paper's ordering of the masks: smallest |w| (pafi) > random > largest |w| (magnitude),
  each gap measured with its spread, on the last round and on the last-10 mean;
- PaFi and full had plateaued: the mean score of the last quarter of the rounds is within 0.5 point
  above the quarter before (issue 16: "enough rounds that pafi and full have plateaued, show it"); a run whose
  lr decays at its end is judged on its rounds before the decay (shared.schedule.full_rate_rounds).

Rows may be single runs or rows over seeds (``simulations.benchmark.lib.seeds.group_row``: means, with ``final_std``
and ``reached``); the checks read the same keys either way. A check appears only when the runs it needs
are in the results.

The score is the task's headline metric (:mod:`simulations.benchmark.lib.scores`; accuracy for SST-2), one point
being 0.01 of it; the rows given to :func:`check_targets` are of one task, whose metric names the checks.
"""

from __future__ import annotations

from typing import Any

from simulations.benchmark.lib.scores import LEGACY_METRIC, long_label
from simulations.benchmark.lib.seeds import ORDERING, TAIL_ROUNDS, TARGET_DENSITY, ci95, fmt_paired, paired, paired_ratio

UPLINK_REDUCTION = {"float16": 800.0, "int8": 1500.0}  # value-dtype -> required reduction vs full
MAX_SCORE_GAP = 0.01  # 1.0 point of the headline metric
MIN_BYTES_ADVANTAGE = 2.0  # vs lora
MIN_BYTES_ADVANTAGE_FULL = 500.0
PLATEAU_GAIN = 0.005  # 0.5 point: the most the last quarter of the rounds may still add
PLATEAU_METHODS = ("pafi", "full")
MIN_PLATEAU_WINDOW = 2  # a quarter of at least 8 rounds: shorter runs are too short to tell


def _check(target: str, run: str, measured: str, required: str, met: bool,
           compared: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """One check; ``compared``: the rows it sets against each other, whose seed sets it names when they differ."""
    return {"target": target, "run": run, "measured": measured + _seed_note(compared), "required": required,
            "met": bool(met)}


def _seed_note(rows: tuple[dict[str, Any], ...]) -> str:
    """`` [seeds differ: pafi 42/43, random 42]`` when rows over seeds that a check compares were not made on the
    same seeds: each seed is its own partition and sampling (seed 43 of `paper` is harder for every method), so such
    a comparison mixes the methods' difference with the seeds' and is interim until the seed sets agree."""
    seeds = {r["name"]: tuple(sorted(x for x in r.get("seed_list") or () if x is not None)) for r in rows}
    if len(set(seeds.values())) <= 1:
        return ""
    return " [seeds differ: " + ", ".join(f"{n} {'/'.join(map(str, s)) or '?'}" for n, s in seeds.items()) + "]"


def uplink_checks(pafi: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in pafi:
        need = UPLINK_REDUCTION.get(row["value_dtype"])
        if need is None or row["reduction_up"] is None or not _at_target_density(row):
            continue
        out.append(_check(f"up bytes vs full, {row['value_dtype']}", row["name"],
                          f"{row['reduction_up']:,.0f}× (vs {row['reduction_reference']})", f"≥ {need:,.0f}×",
                          row["reduction_up"] >= need))
    return out


def _spread(row: dict[str, Any], std: str = "final_std") -> str:
    """`` ± s (n seeds)`` for a row over several seeds, else nothing."""
    n = row.get("seeds", 1)
    return f" ± {100 * row[std]:.2f} ({n} seeds)" if n > 1 and row.get(std) is not None else ""


def _kind(kind: str, metric: str) -> tuple[str, str, str, str]:
    """(label, value column, its std column, its gap-to-full column) of the final or the last-10 score."""
    name = long_label(metric)
    return {"final": (f"final {name}", "final_score", "final_std", "score_vs_reference"),
            "tail": (f"last-{TAIL_ROUNDS}-round {name}", "tail_score", "tail_std", "tail_vs_reference")}[kind]


def score_checks(pafi: list[dict[str, Any]], full: list[dict[str, Any]], kind: str = "final",
                 metric: str = LEGACY_METRIC) -> list[dict[str, Any]]:
    """pafi's (mean) final or last-10 score against full's; rows without that figure are left out."""
    if not full:
        return []
    label, col, std, gap = _kind(kind, metric)
    return [_check(f"{label} vs full", row["name"], f"{100 * row[gap]:+.2f} pts"
                   + (f" (pafi {100 * row[col]:.2f}{_spread(row, std)})" if _spread(row, std) else "")
                   + _paired_note(row, full[0], kind, -MAX_SCORE_GAP,
                                  f"within {100 * MAX_SCORE_GAP:.1f}"),
                   f"≥ {-100 * MAX_SCORE_GAP:.1f} pts", row[gap] >= -MAX_SCORE_GAP, (row, full[0]))
            for row in pafi if row.get(gap) is not None]


def _paired_note(a: dict[str, Any], b: dict[str, Any], kind: str, line: float, what: str) -> str:
    """``; paired over seeds 42/43/44: -2.06 ± 0.52 (95 % CI …), 0/3 seeds within 1.0, the CI holds -1.0: not
    separated`` when the rows share at least two seeds (``simulations.benchmark.lib.seeds.paired``: the per-seed gap, the
    partition's difficulty cancelled). ``line``: the gap the check needs to clear (0 for an ordering, -1.0 pt for
    pafi vs full); a confidence interval wholly on one side of it is what separates the two, not the means."""
    p = paired(a, b, kind)
    if p is None or len(p["seeds"]) < 2:
        return ""
    hits = sum(g > line if line == 0 else g >= line for g in p["gaps"])
    lo, hi = p["ci95"]
    mark = "0" if line == 0 else f"{100 * line:+.1f}"
    side = (f"the CI holds {mark}: not separated" if lo <= line <= hi
            else f"the CI lies {'above' if lo > line else 'below'} {mark}")
    return (f"; paired over seeds {'/'.join(map(str, p['seeds']))}: {fmt_paired(p)},"
            f" {hits}/{len(p['seeds'])} seeds {what}, {side}")


def _reached(row: dict[str, Any], *, other: bool = False) -> str:
    """How many of a row's seeds reached the target: ``, 2/3 seeds reached it`` for pafi's own row; for the row it is
    compared with, only when some seeds never did (``; lora: 2/3 seeds reached it, its MB are their mean``): its mean
    leaves them out, which flatters it."""
    seeds = row.get("seeds", 1)
    if seeds <= 1:
        return ""
    if not other:
        return f", {row['reached']}/{seeds} seeds reached it"
    if row.get("reached", seeds) < seeds:
        return f"; {row['method']}: {row['reached']}/{seeds} seeds reached it, its MB are their mean"
    return ""


def bytes_checks(pafi: list[dict[str, Any]], others: list[dict[str, Any]], need: float) -> list[dict[str, Any]]:
    """pafi's (mean) bytes to the target vs another method's, same value-dtype where there is one."""
    out = []
    for row in pafi:
        same = [r for r in others if r["value_dtype"] == row["value_dtype"]] or others
        if not same or row.get("target_score") is None:
            continue
        other, mine = same[0], row["bytes_to_target"]
        theirs = other["bytes_to_target"]
        if mine is None:
            measured, met = "pafi did not reach the target", False
        elif theirs is None:
            measured, met = f"{other['name']} did not reach the target; pafi {mine / 1e6:,.2f} MB{_reached(row)}", True
        else:
            measured, met = (f"{theirs / mine:,.1f}× ({theirs / 1e6:,.2f} vs {mine / 1e6:,.2f} MB{_reached(row)}"
                             f"{_reached(other, other=True)})", theirs / mine >= need)
        out.append(_check(f"bytes to target vs {other['name']}", row["name"], measured + _paired_ratio_note(row, other, need),
                          f"≥ {need:,.0f}× fewer", met, (row, other)))
    return out


def _paired_ratio_note(row: dict[str, Any], other: dict[str, Any], need: float) -> str:
    """``; paired over seeds 42/43: 1.38× / 2.76×, geometric mean 1.95×, 1/2 seeds ≥ 2×`` when both rows reached
    the target on at least two common seeds: the bytes to a target count whole rounds up to the first that crosses
    it, and that round moves with the seed's partition for every method alike."""
    p = paired_ratio(row, other)
    if p is None or len(p["seeds"]) < 2:
        return ""
    per = " / ".join(f"{x:,.1f}×" if x >= 10 else f"{x:.2f}×" for x in p["ratios"])
    hits = sum(x >= need for x in p["ratios"])
    g = p["geomean"]
    common = set(row.get("seed_list") or ()) & set(other.get("seed_list") or ())
    mine, theirs = set(row.get("seed_bytes_to_target") or ()), set(other.get("seed_bytes_to_target") or ())
    only = [f"seed {x}: only {name} reached it" for x in sorted(common - set(p["seeds"]))
            for name, got in ((row["method"], mine), (other["method"], theirs)) if x in got]
    return (f"; paired over seeds {'/'.join(map(str, p['seeds']))}: {per}, geometric mean "
            f"{f'{g:,.1f}' if g >= 10 else f'{g:.2f}'}×, {hits}/{len(p['seeds'])} seeds ≥ {need:,.0f}×"
            + "".join(f"; {o}" for o in only))


def ordering_checks(rows: list[dict[str, Any]], kind: str = "final",
                    metric: str = LEGACY_METRIC) -> list[dict[str, Any]]:
    """smallest |w| > random > largest |w| on the (mean) final or last-10 score, each with its spread."""
    label, col, std, _ = _kind(kind, metric)
    first = {}
    for r in rows:
        if r.get("method") in ORDERING and r.get(col) is not None:
            first.setdefault(r["method"], r)
    if len(first) < len(ORDERING):
        return []
    chain = [first[m] for m in ORDERING]
    # the measured relation between neighbours (the required one is the check's own column)
    measured = f"{chain[0]['method']} {100 * chain[0][col]:.2f}{_spread(chain[0], std)}"
    for a, b in zip(chain, chain[1:]):
        sign = ">" if a[col] > b[col] else "<" if a[col] < b[col] else "="
        measured += f" {sign} {b['method']} {100 * b[col]:.2f}{_spread(b, std)}"
    for a, b in zip(chain, chain[1:]):
        note = _paired_note(a, b, kind, 0.0, f"{a['method']} ahead")
        measured += note.replace("; paired", f"; {a['method']} − {b['method']} paired", 1)
    met = all(a[col] > b[col] for a, b in zip(chain, chain[1:]))
    return [_check(f"mask ordering ({label})", ", ".join(r["name"] for r in chain), measured,
                   "pafi > random > magnitude", met, tuple(chain))]


def plateau_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pafi and full: the (mean) gain of the last quarter of the rounds over the quarter before."""
    out = []
    for row in rows:
        if (row.get("method") not in PLATEAU_METHODS or row.get("plateau_gain") is None
                or row["plateau_window"] < MIN_PLATEAU_WINDOW):
            continue
        w, gain = row["plateau_window"], row["plateau_gain"]
        spread = ""
        if row.get("seeds", 1) > 1:
            lo, hi = ci95(gain, row["plateau_std"], row["seeds"])
            spread = (f" ± {100 * row['plateau_std']:.2f} ({row['seeds']} seeds, 95 % CI {100 * lo:+.2f} …"
                      f" {100 * hi:+.2f})")
        out.append(_check("plateau (last quarter of the rounds)", row["name"],
                          f"{100 * gain:+.2f} pts{spread}: mean of the last {w} rounds − the {w} before",
                          f"< {100 * PLATEAU_GAIN:.1f} pts", gain < PLATEAU_GAIN))
    return out


def lora_checks(pafi: list[dict[str, Any]], lora: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return bytes_checks(pafi, lora, MIN_BYTES_ADVANTAGE)


def _at_target_density(row: dict[str, Any]) -> bool:
    """The targets are PaFi's at its paper's density: a run at another density (an ablation such as ``paper``'s
    pafi-d2) is in the tables, not in the checks."""
    dens = row.get("mask_density")
    return row.get("method") not in ORDERING or dens is None or abs(dens - TARGET_DENSITY) <= 1e-9


def _lengths(rows: list[dict[str, Any]]) -> set[int]:
    out: set[int] = set()
    for r in rows:
        got = r.get("rounds")
        out |= set(got) if isinstance(got, list) else ({got} if isinstance(got, int) else set())
    return out


def check_targets(rows: list[dict[str, Any]], metric: str = LEGACY_METRIC) -> list[dict[str, Any]]:
    """All applicable target checks for the rows of one task (single runs or means over seeds), their scores
    ``metric``'s. When the runs compared are of
    unequal length (a preset extended while some of its runs still hold fewer rounds), every check says so: its
    figures are interim."""
    rows = [r for r in rows if _at_target_density(r)]
    checks = _checks(rows, metric)
    lengths = _lengths(rows)
    if len(lengths) > 1:
        note = f" [interim: runs of {'/'.join(map(str, sorted(lengths)))} rounds]"
        checks = [dict(c, measured=c["measured"] + note) for c in checks]
    return checks


def _checks(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    pafi = [r for r in rows if r.get("method") == "pafi"]
    lora = [r for r in rows if r.get("method") == "lora"]
    full = [r for r in rows if r.get("method") == "full"]
    return (uplink_checks(pafi) + score_checks(pafi, full, "final", metric) + score_checks(pafi, full, "tail", metric)
            + lora_checks(pafi, lora) + bytes_checks(pafi, full, MIN_BYTES_ADVANTAGE_FULL)
            + ordering_checks(rows, "final", metric) + ordering_checks(rows, "tail", metric) + plateau_checks(rows))
