"""Benchmark plots (matplotlib, PNG) in the task's headline metric: score vs cumulative MB, score vs round, the
mean of the last ten rounds vs round, bytes per client-round.

A plot is read at a glance, not decoded: each curve is its run's trailing mean over :data:`SMOOTH_ROUNDS` rounds
(the mean over its seeds where it has several) drawn bold over its raw rounds drawn faint, since one round's score
on a few hundred rows swings by 1-3 points with the sampled clients' label mix; runs the preset marks as variants or
diagnostics (``variant = true``: ablations, IID controls, drift probes) go in a figure of their own
(``*_variants.png``), beside the main rows of the same methods for reference; runs of several tasks get one panel
per task, each in its own metric (``score_vs_*.png`` then, else ``<metric>_vs_*.png``).

Groups that differ only in value-dtype share a colour and differ in line style; every other group (another method,
partitioner, density, rate) has a colour of its own: the legend names method and dtype (and the group where that is
ambiguous), axes carry units, the target score is a grey line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from simulations.benchmark.lib.runs import RunResult, split_by_task  # noqa: E402
from simulations.benchmark.lib.scores import long_label, score_of, target_for, unit, with_score  # noqa: E402
from simulations.benchmark.lib.seeds import TAIL_ROUNDS, band, group_runs, tail_score  # noqa: E402

LINESTYLES = {"float32": "-", "float16": "--", "bfloat16": "-.", "int8": ":"}
SMOOTH_ROUNDS = 5  # the bold curve: each run's mean of its last 5 rounds
SMOOTH_MIN_ROUNDS = 4 * SMOOTH_ROUNDS  # shorter runs are drawn as measured, with a marker per round
MARKER_MAX_ROUNDS = 30  # beyond this many rounds a marker per round hides the lines
LEGEND_OUTSIDE = 6  # with more entries than this the legend goes beside the axes, off the curves
PANEL_COLUMNS = 3  # panels per row when runs span several tasks
_LEGEND_IN = 2.8  # inches beside the panels for the legend of a figure of several tasks
# Keys that tell neither colour nor line style: they vary between the seeds of one group, are locations, or name the
# task (a method keeps its colour from one task's panel to the next).
_NOT_A_VARIANT = {"seed", "value-dtype", "data-dir", "output-dir", "resume", "dataset"}

Target = float | Mapping[str, float] | None


def _colour_key(run: RunResult) -> tuple:
    """What a group's colour stands for: its settings other than value-dtype, seed and task. From the run-config
    when the benchmark wrote one, else from the summary's method, partitioner and density."""
    if run.config:
        return tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in _NOT_A_VARIANT))
    s = run.summary
    return (s.get("method"), s.get("partitioner"), s.get("mask_density"))


def _style(runs: list[RunResult]) -> dict[str, dict]:
    """Group name -> matplotlib line kwargs (colour per variant, line style per value-dtype, label)."""
    groups = group_runs(runs)
    keys = list(dict.fromkeys(_colour_key(members[0]) for members in groups.values()))
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    colour = {k: cmap(i % cmap.N) for i, k in enumerate(keys)}
    one_task = len(split_by_task(runs)) == 1
    out = {}
    for name, members in groups.items():
        s = members[0].summary
        label = f"{s.get('method')} · {s.get('value_dtype')}" + (f" ({name})" if _ambiguous(groups, name) else "")
        if one_task and len(members) > 1:  # across tasks the seed counts differ: one legend entry per colour
            label += f", mean of {len(members)} seeds"
        out[name] = {"color": colour[_colour_key(members[0])], "linestyle": LINESTYLES.get(s.get("value_dtype"), "-"),
                     "label": label}
    return out


def _ambiguous(groups: dict[str, list[RunResult]], name: str) -> bool:
    """Another group of the same task shares this one's method and dtype: the legend names the group."""
    key = lambda g: (groups[g][0].task, groups[g][0].summary.get("method"), groups[g][0].summary.get("value_dtype"))  # noqa: E731
    return sum(key(g) == key(name) for g in groups) > 1


def trailing_mean(run: RunResult, window: int = TAIL_ROUNDS) -> RunResult:
    """``run`` with each trained round's score replaced by the mean of its last ``window`` trained rounds (that
    round included); round 0 and the rounds before the window fills keep their bytes but have no score. One round's
    accuracy on a few hundred rows moves 1-3 pts with the sampled clients' label mix; the trailing mean shows the
    trend under it."""
    trained = [h for h in run.history if h.get("round", 0) >= 1 and score_of(h, run.metric) is not None]
    means = {h["round"]: tail_score(trained[:i + 1], window, run.metric)  # the report's last-N, round by round
             for i, h in enumerate(trained)}
    history = [with_score(h, means.get(h.get("round"))) for h in run.history]
    return RunResult(run.name, run.summary, history, run.group, run.config, run.variant)


def _pct(xs: list[float]) -> list[float]:
    return [100 * x for x in xs]


def _draw(ax, runs: list[RunResult], x: str, style: dict[str, dict], smooth: int | None, fill: bool) -> None:
    """One curve per group: with ``smooth``, its trailing mean bold over its raw rounds faint; else as measured (a
    marker per round for a short run). ``fill``: a ± 1 std band over the seeds of a group that has several."""
    rounds = max((len(r.history) for r in runs), default=0)
    groups = group_runs(runs)
    for i, (name, members) in enumerate(groups.items()):
        st = dict(style[name], zorder=2 + (len(groups) - i) / len(groups))  # the first rows (pafi, full) on top
        raw = band(members)
        if smooth:
            ax.plot(raw[x], _pct(raw["mean"]), color=st["color"], linestyle=st["linestyle"], linewidth=0.7, alpha=0.3,
                    zorder=1)
            shown = band([trailing_mean(r, smooth) for r in members])
            ax.plot(shown[x], _pct(shown["mean"]), linewidth=2.0, **st)
        else:
            shown = raw
            ax.plot(shown[x], _pct(shown["mean"]), linewidth=1.4, markersize=3,
                    marker="o" if rounds <= MARKER_MAX_ROUNDS else None, **st)
        if fill and len(members) > 1:
            lo = [100 * (m - sd) for m, sd in zip(shown["mean"], shown["std"])]
            hi = [100 * (m + sd) for m, sd in zip(shown["mean"], shown["std"])]
            ax.fill_between(shown[x], lo, hi, color=st["color"], alpha=0.15, linewidth=0)


def _smooth(runs: list[RunResult]) -> int | None:
    """:data:`SMOOTH_ROUNDS` when the runs are long enough for a trailing mean to mean anything, else None."""
    longest = max((sum(h.get("round", 0) >= 1 for h in r.history) for r in runs), default=0)
    return SMOOTH_ROUNDS if longest >= SMOOTH_MIN_ROUNDS else None


def _panels(runs: list[RunResult]):
    """A figure with one panel per task (room on the right for the legend): (fig, [(ax, task, metric, runs)])."""
    tasks = split_by_task(runs)
    n = len(tasks)
    cols = min(n, PANEL_COLUMNS)
    nrows = math.ceil(n / cols)
    if n == 1:
        wide = len(group_runs(runs)) + 1 > LEGEND_OUTSIDE
        size = (11.5 if wide else 8, 5.5 if wide else 5)
    else:
        size = (5.0 * cols + _LEGEND_IN, 4.4 * nrows + 0.6)
    fig, axes = plt.subplots(nrows, cols, figsize=size, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, [(ax, task, metric, members) for ax, ((task, metric), members) in zip(flat, tasks.items())]


def _ylabel(metric: str, what: str = "") -> str:
    return f"server-side {long_label(metric)}{what} ({unit(metric)})"


def _finish(fig, panels, path: Path, target: Target, title: str) -> None:
    """Target lines, titles, grids and one legend for the figure; saved to ``path``."""
    for ax, task, metric, _ in panels:
        t = target_for(target, task)
        if t is not None:
            ax.axhline(100 * t, color="grey", linewidth=1, linestyle=(0, (4, 4)), label=f"target {100 * t:.1f} {unit(metric)}")
        ax.grid(True, which="both", alpha=0.3)
        if len(panels) > 1:
            ax.set_title(f"{task or '?'} · {long_label(metric)}", fontsize=10)
    if len(panels) == 1:
        ax = panels[0][0]
        ax.set_title(title)
        if len(ax.get_legend_handles_labels()[0]) > LEGEND_OUTSIDE:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
    else:
        seen: dict[str, object] = {}
        for ax, *_ in panels:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(label if not label.startswith("target") else "target", handle)
        fig.suptitle(title)
        right = 1 - _LEGEND_IN / fig.get_figwidth()  # the legend's strip, beside the panels
        fig.legend(list(seen.values()), list(seen), fontsize=8, loc="upper left", bbox_to_anchor=(right + 0.005, 0.93))
        fig.tight_layout(rect=(0, 0, right, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _what(runs: list[RunResult]) -> str:
    """``Accuracy`` for one metric, ``Score`` across metrics: the start of a title."""
    metrics = {r.metric for r in runs}
    return long_label(metrics.pop()).capitalize() if len(metrics) == 1 else "Score"


def _note(smooth: int | None, tag: str) -> str:
    return (f"\nbold: mean of the last {smooth} rounds; faint: each round" if smooth else "") + tag


def plot_score_vs_bytes(runs: list[RunResult], path: Path, target: Target, tag: str = "") -> None:
    """Score (x 100) against cumulative up + down megabytes (log x); round 0 = before training."""
    smooth, style = _smooth(runs), _style(runs)
    fig, panels = _panels(runs)
    for ax, _, metric, members in panels:
        _draw(ax, members, "mb", style, smooth, fill=False)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative communication, MB (up + down, all clients; log scale)")
        ax.set_ylabel(_ylabel(metric))
    _finish(fig, panels, path, target, f"{_what(runs)} vs megabytes on the wire{_note(smooth, tag)}")


def plot_score_vs_round(runs: list[RunResult], path: Path, target: Target, tag: str = "") -> None:
    """Score (x 100) per round (round 0 = the untrained global model)."""
    smooth, style = _smooth(runs), _style(runs)
    fig, panels = _panels(runs)
    for ax, _, metric, members in panels:
        _draw(ax, members, "round", style, smooth, fill=False)
        ax.set_xlabel("server round")
        ax.set_ylabel(_ylabel(metric))
        ax.xaxis.get_major_locator().set_params(integer=True)
    _finish(fig, panels, path, target, f"{_what(runs)} vs round{_note(smooth, tag)}")


def plot_score_vs_round_smoothed(runs: list[RunResult], path: Path, target: Target, window: int = TAIL_ROUNDS,
                                 tag: str = "") -> None:
    """The round plot as the mean of each run's last ``window`` rounds (then mean ± std over seeds): what the
    report's last-10 column reads at every round, so plateaus and orderings are visible under the per-round swing."""
    style = _style(runs)
    fig, panels = _panels(runs)
    for ax, _, metric, members in panels:
        _draw(ax, [trailing_mean(r, window) for r in members], "round", style, None, fill=True)
        ax.set_xlabel(f"server round (mean of rounds r-{window - 1} … r)")
        ax.set_ylabel(_ylabel(metric, f", mean of the last {window} rounds"))
        ax.xaxis.get_major_locator().set_params(integer=True)
    _finish(fig, panels, path, target, f"{_what(runs)} vs round, mean of the last {window} rounds{tag}")


def plot_bytes_per_client_round(runs: list[RunResult], path: Path) -> None:
    """Grouped bars: measured bytes up and down per client-round, per run (log y, values printed).

    Seeds of one run send the same payloads: one pair of bars per group (its first seed)."""
    groups = group_runs(runs)
    runs = [members[0] for members in groups.values()]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(runs) + 2), 5))
    xs = range(len(runs))
    width = 0.38
    up = [r.summary.get("bytes_up_per_client_round") or 0 for r in runs]
    down = [r.summary.get("bytes_down_per_client_round") or 0 for r in runs]
    bars_up = ax.bar([x - width / 2 for x in xs], up, width, label="up (client → server)", color="tab:blue")
    bars_down = ax.bar([x + width / 2 for x in xs], down, width, label="down (server → client)", color="tab:orange")
    for bars in (bars_up, bars_down):
        ax.bar_label(bars, labels=[_human(b.get_height()) for b in bars], fontsize=7, rotation=90, padding=2)
    ax.set_yscale("log")
    names = [r.group if _ambiguous(groups, r.group) else r.summary.get("method") for r in runs]
    ax.set_xticks(list(xs), [f"{n}\n{r.summary.get('value_dtype')}" for n, r in zip(names, runs)], fontsize=8)
    ax.set_ylabel("bytes per client per round (measured, log scale)")
    ax.set_ylim(top=max(up + down + [1]) * 5)  # room for the value labels
    ax.set_title("Bytes per client-round")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _human(n: float) -> str:
    for unit_, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit_}"
    return f"{n:.0f} B"


def figure_sets(runs: list[RunResult]) -> list[tuple[str, list[RunResult]]]:
    """(file suffix, runs) of each figure: the main rows; then, if the preset marks variants, the variants with the
    main rows of their methods and tasks as a reference."""
    main = [r for r in runs if not r.variant]
    variants = [r for r in runs if r.variant]
    if not main or not variants:
        return [("", runs)]
    of = {(r.task, r.summary.get("method")) for r in variants}
    return [("", main), ("_variants", [r for r in main if (r.task, r.summary.get("method")) in of] + variants)]


def write_plots(out: Path, runs: list[RunResult], target: Target) -> list[Path]:
    """The score plots (main rows, then variants if any) and the bytes plot into ``out``; returns their paths."""
    metrics = {r.metric for r in runs}
    prefix = metrics.pop() if len(metrics) == 1 else "score"
    paths = []
    for suffix, members in figure_sets(runs):
        tag = "\nvariants and diagnostics (beside the main rows of their methods)" if suffix else ""
        mb, rnd, last = (out / f"{prefix}_vs_mb{suffix}.png", out / f"{prefix}_vs_round{suffix}.png",
                         out / f"{prefix}_vs_round_last{TAIL_ROUNDS}{suffix}.png")
        plot_score_vs_bytes(members, mb, target, tag)
        plot_score_vs_round(members, rnd, target, tag)
        plot_score_vs_round_smoothed(members, last, target, tag=tag)
        paths += [mb, rnd, last]
    paths.append(out / "bytes_per_client_round.png")
    plot_bytes_per_client_round(runs, paths[-1])
    return paths
