"""Report writer on a fabricated two-run history: CSV columns, Markdown table, reductions, target figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from simulations.benchmark.lib.plots import _style, trailing_mean, write_plots
from simulations.benchmark.lib.report import (RUN_COLUMNS, ROUND_COLUMNS, ReportError, RunResult, cumulative_bytes,
                                               load_run, reach_target, write_report)
from simulations.benchmark.lib.scores import score_of
from simulations.benchmark.lib.seeds import band

N = 22_713_216  # MiniLM-sized, so the reductions look like the real ones


def _history(accs: list[float], up: int, down: int, clients: int = 2) -> list[dict]:
    rows = [{"round": 0, "accuracy": 0.5, "loss": 0.69, "bytes_up": 300, "bytes_down": 200, "sampled": clients,
             "replied": clients, "rejected": 0, "failed": 0, "round_seconds": 1.0, "codec_rel_error": None}]
    for i, acc in enumerate(accs, start=1):
        rows.append({"round": i, "accuracy": acc, "loss": 0.5, "train_loss": 0.6, "bytes_up": up * clients,
                     "bytes_down": down * clients, "sampled": clients, "replied": clients, "rejected": 0,
                     "failed": 0, "round_seconds": 10.0 * i, "codec_rel_error": 0.004 if up < 100_000 else 0.0})
    return rows


def _summary(method: str, dtype: str, up: int, down: int, k: int, accs: list[float]) -> dict:
    return {"method": method, "num_params": N, "num_trainable": k, "k": k, "mask_density": 0.005,
            "value_dtype": dtype, "bytes_up_per_client_round": up, "bytes_down_per_client_round": down,
            "dense_bytes_per_client_round": 4 * N, "final_accuracy": accs[-1], "rounds": len(accs),
            "wall_seconds": 70.0, "seconds_per_round": 20.0}


@pytest.fixture()
def two_runs(tmp_path: Path) -> list[RunResult]:
    specs = [("full-float32", "full", "float32", 90_900_000, 90_900_100, N, [0.70, 0.82, 0.85]),
             ("pafi-int8", "pafi", "int8", 60_000, 61_000, 54_000, [0.60, 0.78, 0.845])]
    runs = []
    for name, method, dtype, up, down, k, accs in specs:
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps(_summary(method, dtype, up, down, k, accs)))
        (run_dir / "history.json").write_text(json.dumps(_history(accs, up, down)))
        runs.append(load_run(run_dir))
    return runs


def test_reach_target_counts_handshake_and_all_clients(two_runs):
    pafi = two_runs[1]
    assert reach_target(pafi.history, 0.8) == (3, 500 + 3 * 2 * (60_000 + 61_000))
    assert reach_target(pafi.history, 0.9) == (None, None)
    assert reach_target(pafi.history, None) == (None, None)


def test_csv_has_one_row_per_run_and_per_round(tmp_path, two_runs):
    out = tmp_path / "results"
    write_report(out, two_runs, target=0.8)
    with open(out / "runs.csv") as fh:
        runs = list(csv.DictReader(fh))
    with open(out / "rounds.csv") as fh:
        rounds = list(csv.DictReader(fh))
    assert tuple(runs[0]) == RUN_COLUMNS and len(runs) == 2
    assert tuple(rounds[0]) == ROUND_COLUMNS and len(rounds) == 2 * 4  # round 0 + 3 rounds, per run
    assert [r["round"] for r in rounds if r["name"] == "pafi-int8"] == ["0", "1", "2", "3"]
    assert int(rounds[-1]["cumulative_bytes"]) == 500 + 3 * 2 * 121_000


def test_reduction_target_and_accuracy_figures(tmp_path, two_runs):
    rows = write_report(tmp_path / "results", two_runs, target=0.8)
    full, pafi = rows
    assert full["reduction_up"] == pytest.approx(1.0) and full["score_vs_reference"] == 0.0
    assert pafi["reduction_up"] == pytest.approx(90_900_000 / 60_000)
    assert pafi["reduction_down"] == pytest.approx(90_900_100 / 61_000)
    assert pafi["reduction_reference"] == "full-float32 (measured)"
    assert (full["round_to_target"], full["bytes_to_target"]) == (2, 500 + 2 * 2 * (90_900_000 + 90_900_100))
    assert (pafi["round_to_target"], pafi["bytes_to_target"]) == (3, 500 + 3 * 2 * 121_000)
    assert pafi["score_vs_reference"] == pytest.approx(-0.005)
    assert pafi["codec_rel_error"] == pytest.approx(0.004)
    assert pafi["num_trainable"] == 54_000 and pafi["seconds_per_round"] == 20.0


def test_markdown_table_and_targets(tmp_path, two_runs):
    out = tmp_path / "results"
    write_report(out, two_runs, target=0.8)
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| pafi-int8")]
    assert len(table) == 1
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[:5] == ["pafi-int8", "54,000", "60,000", "61,000", "1,515×"]
    assert cells[6] == "3" and cells[9] == "84.50" and cells[11] == "-0.50"
    assert cells[10] == "–"  # last-10 accuracy: 3 rounds are too few
    # The targets, checked by the report itself: int8 >= 1500x (met), accuracy within 1 point (met).
    assert "| up bytes vs full, int8 | pafi-int8 | 1,515×" in md
    assert "| final accuracy vs full | pafi-int8 | -0.50 pts | ≥ -1.0 pts | yes |" in md
    data = json.loads((out / "results.json").read_text())
    assert {t["target"] for t in data["targets"]} == {"up bytes vs full, int8", "final accuracy vs full",
                                                      "bytes to target vs full-float32"}
    assert all(t["met"] for t in data["targets"])


def test_without_full_run_reduction_is_against_dense_bytes(tmp_path, two_runs):
    rows = write_report(tmp_path / "results", two_runs[1:], target=0.8)
    assert rows[0]["reduction_up"] == pytest.approx(4 * N / 60_000)
    assert rows[0]["reduction_reference"].startswith("dense N*4")
    assert rows[0]["score_vs_reference"] is None


def test_plots_are_written(tmp_path, two_runs):
    paths = write_plots(tmp_path, two_runs, 0.8)
    assert [p.name for p in paths] == ["accuracy_vs_mb.png", "accuracy_vs_round.png", "accuracy_vs_round_last10.png",
                                       "bytes_per_client_round.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_trailing_mean_averages_the_last_rounds_and_keeps_every_rounds_bytes():
    accs = [0.5, 0.6, 0.7, 0.8, 0.9]
    run = RunResult("r", _summary("pafi", "float32", 1, 1, 1, accs), _history(accs, 1, 1))
    smoothed = trailing_mean(run, window=3)
    scores = [score_of(h) for h in smoothed.history]
    assert scores[:3] == [None, None, None]  # round 0 and the rounds before the window fills have no score
    assert scores[3:] == pytest.approx([0.6, 0.7, 0.8])
    assert run.history[3]["accuracy"] == 0.7  # the run itself is untouched
    b = band([smoothed])  # the curve starts where the window fills, at the bytes spent by then (rounds 0-3)
    assert b["round"] == [3, 4, 5] and b["mb"][0] == pytest.approx(cumulative_bytes(run.history)[3] / 1e6)


def test_colours_tell_variants_apart_and_dtypes_share_one():
    accs = [0.6, 0.7]

    def run(name: str, dtype: str, **config) -> RunResult:
        return RunResult(name, _summary("pafi", dtype, 1, 1, 1, accs), _history(accs, 1, 1),
                         config={"method": "pafi", "value-dtype": dtype, "seed": 1, **config})

    runs = [run("pafi-f32", "float32", **{"mask-density": 0.005}), run("pafi-i8", "int8", **{"mask-density": 0.005}),
            run("pafi-d2", "float32", **{"mask-density": 0.02}), run("pafi-iid", "float32", partitioner="iid")]
    style = _style(runs)
    assert style["pafi-f32"]["color"] == style["pafi-i8"]["color"]  # only the dtype differs: one colour, two dashes
    assert style["pafi-f32"]["linestyle"] != style["pafi-i8"]["linestyle"]
    assert len({style[n]["color"] for n in ("pafi-f32", "pafi-d2", "pafi-iid")}) == 3
    assert style["pafi-d2"]["label"] == "pafi · float32 (pafi-d2)"  # the legend names the group where method · dtype is shared


def test_missing_run_files_raise_named_error(tmp_path):
    with pytest.raises(ReportError, match="rerun the benchmark"):
        load_run(tmp_path)
