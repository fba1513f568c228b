"""The GLUE table from fabricated run stores: one column per task with its metric, mean ± std over seeds, MNLI's
matched/mismatched, the average only over complete rows, MB to 95 % of full's final score, and the targets."""

from __future__ import annotations

import json

from simulations.benchmark import glue_table


def _run(store, name, method, task, metric, scores, up, extra=None):
    folder = store / "runs" / name
    folder.mkdir(parents=True)
    history = [{"round": r, "score": s, "metrics": {metric: s}, "bytes_up": up * 5, "bytes_down": up * 5}
               for r, s in enumerate(scores)]
    summary = {"method": method, "dataset": task, "headline_metric": metric, "final_score": scores[-1],
               "metrics": {metric: scores[-1], **(extra or {})}, "bytes_up_per_client_round": up,
               "bytes_down_per_client_round": up}
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "summary.json").write_text(json.dumps(summary))


def test_the_table_prints_each_task_with_its_metric_and_the_targets(tmp_path):
    fed, central = tmp_path / "glue", tmp_path / "central"
    _run(fed, "pafi-cola-s42", "pafi", "cola", "matthews", [0.0, 0.30, 0.40], 200_000)
    _run(fed, "pafi-cola-s43", "pafi", "cola", "matthews", [0.0, 0.35, 0.50], 200_000)
    _run(fed, "full-cola-s42", "full", "cola", "matthews", [0.0, 0.40, 0.46], 90_000_000)
    _run(fed, "pafi-mnli-s42", "pafi", "mnli", "accuracy", [0.3, 0.70], 200_000, {"accuracy_mismatched": 0.72})
    _run(fed, "full-mnli-s42", "full", "mnli", "accuracy", [0.3, 0.705], 90_000_000, {"accuracy_mismatched": 0.70})
    _run(fed, "lora-cola-s42", "lora", "cola", "matthews", [0.0, 0.2, 0.3], 300_000)
    _run(central, "pafi-cola-central-s42", "pafi", "cola", "matthews", [0.0, 0.55], 200_000)
    assert glue_table.main(["--results", str(fed), "--central", str(central), "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "| method | CoLA (MCC) | MNLI-m/mm (acc) | avg |" in text
    assert "| pafi | 45.0 ± 7.1 | 70.0 / 72.0 | 57.5 |" in text  # MCC mean over 2 seeds; MNLI matched / mismatched
    assert "| lora | 30.0 | – | 30.0* |" in text  # a row missing a task: its average is marked, not compared
    assert "| pafi (central) | 55.0 | – | 55.0* |" in text
    assert "pafi's GLUE average vs full's: -0.75 pts (target ≥ −1.0): met" in text
    assert "450x at the least (target ≥ 400x): met" in text
    # MB to 95 % of full's final MCC (0.437): pafi s42 never reaches it, s43 at round 2 (3 rounds x 2 MB); MNLI at round 1
    assert "| pafi | 6.0 (1/2) | 4.0 |" in text
