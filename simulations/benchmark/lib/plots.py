"""Benchmark plots (matplotlib, PNG): accuracy vs cumulative MB, accuracy vs round (as measured, and as the mean
of the last ten rounds), bytes per client-round.

Each run (or each run over its seeds: the mean, with a band of ± one standard deviation) is one line. Groups
that differ only in value-dtype share a colour and differ in line style; every other group (another method,
partitioner, density, rate) has a colour of its own, so a plot reads without the table: the legend names
method and dtype (and the group where that is ambiguous), axes carry units, the target accuracy is a grey line.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from simulations.benchmark.lib.runs import RunResult  # noqa: E402
from simulations.benchmark.lib.seeds import TAIL_ROUNDS, band, group_runs, tail_accuracy  # noqa: E402

LINESTYLES = {"float32": "-", "float16": "--", "bfloat16": "-.", "int8": ":"}
MARKER_MAX_ROUNDS = 30  # beyond this many rounds a marker per round hides the lines
LEGEND_OUTSIDE = 6  # with more entries than this the legend goes beside the axes, off the curves
# Keys that tell neither colour nor line style: they vary between the seeds of one group, or are locations.
_NOT_A_VARIANT = {"seed", "value-dtype", "data-dir", "output-dir", "resume"}


def _colour_key(run: RunResult) -> tuple:
    """What a group's colour stands for: its settings other than value-dtype (and the seed). From the run-config
    when the benchmark wrote one, else from the summary's method, partitioner and density."""
    if run.config:
        return tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in _NOT_A_VARIANT))
    s = run.summary
    return (s.get("method"), s.get("partitioner"), s.get("mask_density"))


def _style(runs: list[RunResult]) -> dict[str, dict]:
    """Group name -> matplotlib line kwargs (colour per variant, line style per value-dtype)."""
    groups = group_runs(runs)
    keys = list(dict.fromkeys(_colour_key(members[0]) for members in groups.values()))
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    colour = {k: cmap(i % cmap.N) for i, k in enumerate(keys)}
    rounds = max((len(r.history) for r in runs), default=0)
    out = {}
    for name, members in groups.items():
        s = members[0].summary
        label = f"{s.get('method')} · {s.get('value_dtype')}" + (f" ({name})" if _ambiguous(groups, name) else "")
        out[name] = {"color": colour[_colour_key(members[0])],
                     "linestyle": LINESTYLES.get(s.get("value_dtype"), "-"),
                     "marker": "o" if rounds <= MARKER_MAX_ROUNDS else None, "markersize": 3, "linewidth": 1.4,
                     "label": label + (f", mean of {len(members)} seeds" if len(members) > 1 else "")}
    return out


def _ambiguous(groups: dict[str, list[RunResult]], name: str) -> bool:
    key = lambda g: (groups[g][0].summary.get("method"), groups[g][0].summary.get("value_dtype"))  # noqa: E731
    return sum(key(g) == key(name) for g in groups) > 1


def _plot_bands(ax, runs: list[RunResult], x: str) -> None:
    """One line per group (mean over its seeds) and a ± std band where it has several seeds."""
    style = _style(runs)
    for name, members in group_runs(runs).items():
        b = band(members)
        xs = b[x]
        ax.plot(xs, [100 * m for m in b["mean"]], **style[name])
        if len(members) > 1:
            lo = [100 * (m - sd) for m, sd in zip(b["mean"], b["std"])]
            hi = [100 * (m + sd) for m, sd in zip(b["mean"], b["std"])]
            ax.fill_between(xs, lo, hi, color=style[name]["color"], alpha=0.18, linewidth=0)


def _figure(runs: list[RunResult]):
    """A figure with room on its right for the legend when there are many groups."""
    wide = len(group_runs(runs)) + 1 > LEGEND_OUTSIDE
    return plt.subplots(figsize=(11.5 if wide else 8, 5.5 if wide else 5))


def _finish(ax, fig, path: Path, target: float | None, title: str) -> None:
    if target is not None:
        ax.axhline(100 * target, color="grey", linewidth=1, linestyle=(0, (4, 4)),
                   label=f"target {100 * target:.1f} %")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if len(ax.get_legend_handles_labels()[0]) > LEGEND_OUTSIDE:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_accuracy_vs_bytes(runs: list[RunResult], path: Path, target: float | None) -> None:
    """Accuracy (%) against cumulative up + down megabytes (log x); round 0 = before training."""
    fig, ax = _figure(runs)
    _plot_bands(ax, runs, "mb")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative communication, MB (up + down, all clients; log scale)")
    ax.set_ylabel("server-side accuracy (%)")
    _finish(ax, fig, path, target, "Accuracy vs megabytes on the wire")


def plot_accuracy_vs_round(runs: list[RunResult], path: Path, target: float | None) -> None:
    """Accuracy (%) per round (round 0 = the untrained global model)."""
    fig, ax = _figure(runs)
    _plot_bands(ax, runs, "round")
    ax.set_xlabel("server round")
    ax.set_ylabel("server-side accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish(ax, fig, path, target, "Accuracy vs round")


def trailing_mean(run: RunResult, window: int = TAIL_ROUNDS) -> RunResult:
    """``run`` with each trained round's accuracy replaced by the mean of its last ``window`` trained rounds (that
    round included); rounds before the window fills, and round 0, are dropped. One round's accuracy on a few
    hundred rows moves 1-3 pts with the sampled clients' label mix; the trailing mean shows the trend under it."""
    trained = [h for h in run.history if h.get("round", 0) >= 1 and h.get("accuracy") is not None]
    smoothed = [{**h, "accuracy": tail_accuracy(trained[:i + 1], window)}  # the report's last-N, round by round
                for i, h in enumerate(trained) if i >= window - 1]
    return RunResult(run.name, run.summary, smoothed, run.group, run.config)


def plot_accuracy_vs_round_smoothed(runs: list[RunResult], path: Path, target: float | None,
                                    window: int = TAIL_ROUNDS) -> None:
    """The round plot as the mean of each run's last ``window`` rounds (then mean ± std over seeds): what the
    report's last-10 column reads at every round, so plateaus and orderings are visible under the per-round swing."""
    fig, ax = _figure(runs)
    _plot_bands(ax, [trailing_mean(r, window) for r in runs], "round")
    ax.set_xlabel(f"server round (mean of rounds r-{window - 1} … r)")
    ax.set_ylabel(f"server-side accuracy, mean of the last {window} rounds (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish(ax, fig, path, target, f"Accuracy vs round, mean of the last {window} rounds")


def plot_bytes_per_client_round(runs: list[RunResult], path: Path) -> None:
    """Grouped bars: measured bytes up and down per client-round, per run (log y, values printed).

    Seeds of one run send the same payloads: one pair of bars per group (its first seed)."""
    runs = [members[0] for members in group_runs(runs).values()]
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
    ax.set_xticks(list(xs), [f"{r.summary.get('method')}\n{r.summary.get('value_dtype')}" for r in runs], fontsize=8)
    ax.set_ylabel("bytes per client per round (measured, log scale)")
    ax.set_ylim(top=max(up + down + [1]) * 5)  # room for the value labels
    ax.set_title("Bytes per client-round")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def write_plots(out: Path, runs: list[RunResult], target: float | None) -> list[Path]:
    """All four PNGs into ``out``; returns their paths."""
    paths = [out / "accuracy_vs_mb.png", out / "accuracy_vs_round.png", out / f"accuracy_vs_round_last{TAIL_ROUNDS}.png",
             out / "bytes_per_client_round.png"]
    plot_accuracy_vs_bytes(runs, paths[0], target)
    plot_accuracy_vs_round(runs, paths[1], target)
    plot_accuracy_vs_round_smoothed(runs, paths[2], target)
    plot_bytes_per_client_round(runs, paths[3])
    return paths
