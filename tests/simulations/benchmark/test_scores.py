"""The headline score through the whole report, on fabricated run folders: an old run (accuracy only), new runs
whose headline is Matthews correlation or Spearman (no accuracy at all), a preset of two tasks (reported and drawn
task by task), and the preset keys that go with it (target-score, variant)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from simulations.benchmark.lib import plots
from simulations.benchmark.lib.matrix import PresetError, build_runs, load_preset
from simulations.benchmark.lib.report import load_run, reach_target, write_report
from simulations.benchmark.lib.scores import final_score, headline, score_of, target_for

N = 22_713_216


def _old(round_: int, acc: float, up: int) -> dict:
    return {"round": round_, "accuracy": acc, "loss": 0.5, "bytes_up": up, "bytes_down": up}


def _new(round_: int, metric: str, value: float, up: int, extra: dict | None = None) -> dict:
    """A record of the new server: every metric and the headline's value as ``score`` (accuracy only if in extra)."""
    metrics = {metric: value, **(extra or {})}
    rec = {"round": round_, "metrics": metrics, "score": value, "loss": 0.5, "bytes_up": up, "bytes_down": up}
    if "accuracy" in metrics:
        rec["accuracy"] = metrics["accuracy"]
    return rec


def _write(root: Path, name: str, method: str, task: str, history: list[dict], metric: str | None = None,
           config: dict | None = None) -> Path:
    """A run folder; ``metric`` None: an old summary (final_accuracy only)."""
    up = history[-1]["bytes_up"]
    summary = {"method": method, "value_dtype": "float32", "num_params": N, "num_trainable": 1000 if method != "full"
               else N, "mask_density": 0.005, "bytes_up_per_client_round": up, "bytes_down_per_client_round": up,
               "dense_bytes_per_client_round": 4 * N, "rounds": len(history) - 1, "dataset": task,
               "seconds_per_round": 1.0}
    last = history[-1]
    if metric is None:
        summary["final_accuracy"] = last["accuracy"]
    else:
        summary.update(metrics=dict(last["metrics"]), headline_metric=metric, final_score=last["score"])
        if "accuracy" in last["metrics"]:
            summary["final_accuracy"] = last["metrics"]["accuracy"]
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "history.json").write_text(json.dumps(history))
    if config is not None:
        (run_dir / "run_config.json").write_text(json.dumps(config))
    return run_dir


def _sst2(root: Path, method: str, accs: list[float], up: int, **kw):
    return load_run(_write(root, f"{method}-sst2", method, "sst2", [_old(i, a, up) for i, a in enumerate(accs)]), **kw)


def _cola(root: Path, method: str, mccs: list[float], up: int, **kw):
    hist = [_new(i, "matthews", m, up, {"accuracy": 0.6 + m / 4}) for i, m in enumerate(mccs)]
    return load_run(_write(root, f"{method}-cola", method, "cola", hist, "matthews"), **kw)


@pytest.fixture()
def figures(monkeypatch) -> list:
    """The figures the plots make, kept open to read their labels; no PNG is rendered (fast)."""
    kept: list = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    monkeypatch.setattr(plots.plt.Figure, "savefig", lambda self, *a, **k: None)
    return kept


def _read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_accessor_falls_back_to_accuracy_for_old_outputs_only():
    assert (headline({"final_accuracy": 0.8}), final_score({"final_accuracy": 0.8})) == ("accuracy", 0.8)
    new = {"metrics": {"spearman": 0.7, "pearson": 0.72}, "headline_metric": "spearman", "final_score": 0.7}
    assert (headline(new), final_score(new)) == ("spearman", 0.7)
    assert final_score({"headline_metric": "f1", "metrics": {"f1": 0.9}, "final_accuracy": 0.8}) == 0.9
    assert score_of({"round": 3, "accuracy": 0.8}) == 0.8
    assert score_of({"metrics": {"matthews": 0.4, "accuracy": 0.8}, "score": 0.4, "accuracy": 0.8}) == 0.4
    # a record with metrics but no score: its headline's value, never its accuracy
    assert score_of({"metrics": {"f1": 0.9}, "accuracy": 0.8}, "f1") == 0.9
    assert score_of({"metrics": {"f1": 0.9}, "accuracy": 0.8}) is None
    assert target_for(0.8, "rte") == 0.8 and target_for({"cola": 0.4}, "rte") is None
    assert target_for({"cola": 0.4}, "cola") == 0.4


def test_old_format_run_reads_as_accuracy(tmp_path):
    run = _sst2(tmp_path, "pafi", [0.5, 0.7, 0.82, 0.84], 1000)
    assert (run.task, run.metric) == ("sst2", "accuracy")
    rows = write_report(tmp_path / "out", [run], 0.8)
    assert rows[0]["final_score"] == 0.84 and rows[0]["best_score"] == 0.84 and rows[0]["metric"] == "accuracy"
    assert (rows[0]["round_to_target"], rows[0]["target_score"]) == (2, 0.8)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| final acc % | last-10 acc % | Δ acc vs full (pts) |" in md and "Target accuracy: 80.00 %" in md
    rounds = _read_csv(tmp_path / "out" / "rounds.csv")
    assert [r["score"] for r in rounds] == ["0.5", "0.7", "0.82", "0.84"] and rounds[0]["metric"] == "accuracy"


def test_matthews_headline_is_reported_by_name_not_accuracy(tmp_path):
    pafi = _cola(tmp_path, "pafi", [0.0, 0.2, 0.35, 0.41], 1000)
    full = _cola(tmp_path, "full", [0.0, 0.3, 0.4, 0.45], 90_000_000)
    rows = {r["name"]: r for r in write_report(tmp_path / "out", [full, pafi], 0.3)}
    assert rows["pafi-cola"]["final_score"] == 0.41  # not the records' accuracy (0.70)
    assert rows["pafi-cola"]["score_vs_reference"] == pytest.approx(-0.04)
    assert rows["pafi-cola"]["round_to_target"] == 2 and rows["full-cola"]["round_to_target"] == 1
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| final MCC ×100 | last-10 MCC ×100 | Δ MCC vs full (pts) |" in md
    assert "Target Matthews correlation: 30.00 (×100)" in md
    assert "| final Matthews correlation vs full | pafi-cola | -4.00 pts | ≥ -1.0 pts | NO |" in md
    assert "acc %" not in md


def test_regression_task_without_accuracy_anywhere(tmp_path, figures):
    hist = [_new(i, "spearman", s, 1000, {"pearson": s + 0.01}) for i, s in enumerate([0.1, 0.5, 0.6, 0.7])]
    assert all("accuracy" not in h for h in hist)
    run = load_run(_write(tmp_path, "pafi-stsb", "pafi", "stsb", hist, "spearman"))
    assert reach_target(run.history, 0.55, run.metric) == (2, 2 * 1000 * 3)
    rows = write_report(tmp_path / "out", [run], 0.55)
    assert rows[0]["final_score"] == 0.7 and rows[0]["metric"] == "spearman" and rows[0]["task"] == "stsb"
    groups = _read_csv(tmp_path / "out" / "groups.csv")
    assert groups[0]["final_score"] == "0.7" and groups[0]["metric"] == "spearman"
    paths = plots.write_plots(tmp_path / "out", [run], 0.55)
    assert [p.name for p in paths] == ["spearman_vs_mb.png", "spearman_vs_round.png", "spearman_vs_round_last10.png",
                                       "bytes_per_client_round.png"]
    assert figures[0].axes[0].get_ylabel() == "server-side Spearman correlation (×100)"
    assert figures[0].axes[0].get_title().startswith("Spearman correlation vs megabytes")


def test_two_tasks_are_reported_and_drawn_task_by_task(tmp_path, figures):
    runs = [_sst2(tmp_path, "pafi", [0.5, 0.8, 0.85], 1000), _sst2(tmp_path, "full", [0.5, 0.84, 0.86], 90_000_000),
            _cola(tmp_path, "pafi", [0.0, 0.3, 0.40], 2000), _cola(tmp_path, "full", [0.0, 0.35, 0.42], 80_000_000)]
    rows = {r["name"]: r for r in write_report(tmp_path / "out", runs, {"sst2": 0.8, "cola": 0.3})}
    # each task against its own full run and target: never one metric's figure against another's
    assert rows["pafi-cola"]["reduction_reference"] == "full-cola (measured)"
    assert rows["pafi-cola"]["reduction_up"] == pytest.approx(80_000_000 / 2000)
    assert rows["pafi-sst2"]["score_vs_reference"] == pytest.approx(-0.01)
    assert rows["pafi-cola"]["score_vs_reference"] == pytest.approx(-0.02)
    assert (rows["pafi-sst2"]["target_score"], rows["pafi-cola"]["target_score"]) == (0.8, 0.3)
    groups = _read_csv(tmp_path / "out" / "groups.csv")
    assert [(g["name"], g["task"], g["metric"]) for g in groups] == [
        ("pafi-sst2", "sst2", "accuracy"), ("full-sst2", "sst2", "accuracy"),
        ("pafi-cola", "cola", "matthews"), ("full-cola", "cola", "matthews")]
    md = (tmp_path / "out" / "results.md").read_text()
    sst2, cola = md.split("## Task `sst2`: accuracy")[1].split("## Task `cola`: Matthews correlation")
    assert "final acc %" in sst2 and "MCC" not in sst2 and "final MCC ×100" in cola and "acc %" not in cola
    checks = json.loads((tmp_path / "out" / "results.json").read_text())["targets"]
    assert {(c["task"], c["target"]) for c in checks} >= {("sst2", "final accuracy vs full"),
                                                          ("cola", "final Matthews correlation vs full")}
    paths = plots.write_plots(tmp_path / "out", runs, {"sst2": 0.8, "cola": 0.3})
    assert paths[0].name == "score_vs_mb.png"
    panels = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["sst2 · accuracy", "cola · Matthews correlation"]
    assert [ax.get_ylabel() for ax in panels] == ["server-side accuracy (%)",
                                                  "server-side Matthews correlation (×100)"]
    assert len(panels[1].get_lines()) == 3  # pafi, full and the target line: no sst2 curve in the cola panel


def test_long_runs_draw_the_trailing_mean_bold_over_the_raw_rounds(tmp_path, figures):
    accs = [0.5 + 0.01 * i for i in range(25)]
    runs = [_sst2(tmp_path, "pafi", accs, 1000), _sst2(tmp_path, "full", accs, 9000)]
    plots.plot_score_vs_round(runs, tmp_path / "r.png", None)
    lines = figures[0].axes[0].get_lines()
    faint = [ln for ln in lines if ln.get_alpha() is not None]
    bold = [ln for ln in lines if ln.get_linewidth() == 2.0]
    assert len(faint) == len(bold) == 2
    assert list(faint[0].get_xdata()) == list(range(25))  # every round, faint
    assert list(bold[0].get_xdata()) == list(range(plots.SMOOTH_ROUNDS, 25))  # from the round the window fills
    assert bold[0].get_ydata()[0] == pytest.approx(100 * sum(accs[1:plots.SMOOTH_ROUNDS + 1]) / plots.SMOOTH_ROUNDS)


def test_variants_go_in_a_figure_of_their_own_beside_their_methods_main_rows(tmp_path, figures):
    runs = [_sst2(tmp_path, "pafi", [0.5, 0.8], 1000), _sst2(tmp_path, "lora", [0.5, 0.7], 3000),
            load_run(_write(tmp_path, "pafi-iid", "pafi", "sst2", [_old(0, 0.5, 1000), _old(1, 0.9, 1000)]),
                     variant=True)]
    sets = dict(plots.figure_sets(runs))
    assert [r.name for r in sets[""]] == ["pafi-sst2", "lora-sst2"]
    assert [r.name for r in sets["_variants"]] == ["pafi-sst2", "pafi-iid"]
    names = [p.name for p in plots.write_plots(tmp_path, runs, 0.8)]
    assert "accuracy_vs_mb_variants.png" in names and "accuracy_vs_round_variants.png" in names
    assert plots.figure_sets(runs[:2]) == [("", runs[:2])]  # no variants: one figure, as before


def test_preset_keys_target_score_and_variant(tmp_path):
    runs = build_runs({"matrix": {"method": ["pafi"]},
                       "runs": [{"name": "pafi-iid", "method": "pafi", "partitioner": "iid", "variant": True,
                                 "seeds": [1]}]}, {})
    assert [(r.name, r.variant) for r in runs] == [("pafi", False), ("pafi-iid-s1", True)]
    assert "variant" not in runs[1].run_config  # a plotting mark, not a setting: stored runs stay valid
    with pytest.raises(PresetError, match="true or false"):
        build_runs({"runs": [{"method": "pafi", "variant": "yes"}]}, {})
    base = '[matrix]\nmethod = ["pafi"]\n'
    for head, want in (("target-score = 0.7", 0.7), ("target-accuracy = 0.8", 0.8),
                       ("target-score = {cola = 0.4, rte = 0.6}", {"cola": 0.4, "rte": 0.6})):
        (tmp_path / "p.toml").write_text(head + "\n" + base)
        assert load_preset(str(tmp_path / "p.toml")).target_score == want
    (tmp_path / "p.toml").write_text("target-score = 0.7\ntarget-accuracy = 0.8\n" + base)
    with pytest.raises(PresetError, match="differ"):
        load_preset(str(tmp_path / "p.toml"))


def test_paper_preset_marks_its_controls_and_diagnostics_as_variants():
    preset = load_preset("paper")
    variants = {s.group for s in preset.runs if s.variant}
    assert variants == {"pafi-iid", "full-iid", "pafi-d2", "pafi-lr5e3", "pafi-bal", "pafi-avgm"}
    assert all("variant" not in s.run_config for s in preset.runs)


def test_the_progress_line_reads_the_latest_score(tmp_path):
    from simulations.benchmark.lib.run_store import history_rounds

    hist = [_new(0, "f1", 0.5, 10), _new(1, "f1", 0.81, 10)]
    run_dir = _write(tmp_path, "pafi-mrpc", "pafi", "mrpc", hist, "f1")
    assert history_rounds(run_dir) == (1, 0.81)


def test_a_lower_is_better_headline_ranks_and_reaches_from_below():
    from simulations.benchmark.lib.runs import reach_target
    from simulations.benchmark.lib.scores import best_of, reaches

    assert best_of("perplexity", [30.0, 12.0, 20.0]) == 12.0 and best_of("bleu", [0.3, 0.5, 0.4]) == 0.5
    assert reaches("perplexity", 9.0, 10.0) and not reaches("perplexity", 11.0, 10.0) and reaches("bleu", 0.5, 0.4)
    history = [{"round": r, "score": s, "bytes_up": 1, "bytes_down": 1} for r, s in enumerate([90.0, 40.0, 9.0, 8.0])]
    assert reach_target(history, 10.0, "perplexity")[0] == 2
