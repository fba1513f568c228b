"""Benchmark plots (matplotlib, PNG): accuracy vs cumulative MB, accuracy vs round, bytes per client-round.

Each run (or each run over its seeds: the mean, with a band of ± one standard deviation) is one line,
coloured by method and dashed by value-dtype, so a plot reads without the table: the legend names
method and dtype, axes carry units, the target accuracy is a grey line.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from simulations.runs import RunResult  # noqa: E402
from simulations.seeds import band, group_runs  # noqa: E402

LINESTYLES = {"float32": "-", "float16": "--", "bfloat16": "-.", "int8": ":"}


def _style(runs: list[RunResult]) -> dict[str, dict]:
    """Group name -> matplotlib line kwargs (colour per method, line style per value-dtype)."""
    groups = group_runs(runs)
    methods = sorted({r.summary.get("method", "?") for r in runs})
    cmap = plt.get_cmap("tab10")
    colour = {m: cmap(i % 10) for i, m in enumerate(methods)}
    out = {}
    for name, members in groups.items():
        s = members[0].summary
        label = f"{s.get('method')} · {s.get('value_dtype')}" + (f" ({name})" if _ambiguous(groups, name) else "")
        out[name] = {"color": colour[s.get("method", "?")], "linestyle": LINESTYLES.get(s.get("value_dtype"), "-"),
                     "marker": "o", "markersize": 3,
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


def _finish(ax, fig, path: Path, target: float | None, title: str) -> None:
    if target is not None:
        ax.axhline(100 * target, color="grey", linewidth=1, linestyle=(0, (4, 4)),
                   label=f"target {100 * target:.1f} %")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_accuracy_vs_bytes(runs: list[RunResult], path: Path, target: float | None) -> None:
    """Accuracy (%) against cumulative up + down megabytes (log x); round 0 = before training."""
    fig, ax = plt.subplots(figsize=(8, 5))
    _plot_bands(ax, runs, "mb")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative communication, MB (up + down, all clients; log scale)")
    ax.set_ylabel("server-side accuracy (%)")
    _finish(ax, fig, path, target, "Accuracy vs megabytes on the wire")


def plot_accuracy_vs_round(runs: list[RunResult], path: Path, target: float | None) -> None:
    """Accuracy (%) per round (round 0 = the untrained global model)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    _plot_bands(ax, runs, "round")
    ax.set_xlabel("server round")
    ax.set_ylabel("server-side accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish(ax, fig, path, target, "Accuracy vs round")


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
    """All three PNGs into ``out``; returns their paths."""
    paths = [out / "accuracy_vs_mb.png", out / "accuracy_vs_round.png", out / "bytes_per_client_round.png"]
    plot_accuracy_vs_bytes(runs, paths[0], target)
    plot_accuracy_vs_round(runs, paths[1], target)
    plot_bytes_per_client_round(runs, paths[2])
    return paths
