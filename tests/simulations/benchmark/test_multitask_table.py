"""The multi-task table from fabricated run stores: per-task metrics against the single-task federations, the
average, bytes and storage, the transfer rows and the targets."""

from __future__ import annotations

import json

from simulations.benchmark import multitask_table


def _run(store, name, summary, scores, mb):
    folder = store / "runs" / name
    folder.mkdir(parents=True)
    history = [{"round": r, "score": s, "bytes_up": mb * 1e6 / 2 / len(scores), "bytes_down": mb * 1e6 / 2 / len(scores)}
               for r, s in enumerate(scores)]
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "summary.json").write_text(json.dumps({"final_score": scores[-1], **summary}))


def test_the_table_sets_the_multitask_federation_against_one_per_task(tmp_path):
    multi = {"tasks": {"rte": {"headline_metric": "accuracy"}, "cola": {"headline_metric": "matthews"}},
             "metrics": {"rte": {"accuracy": 0.60}, "cola": {"matthews": 0.30}},
             "storage_bytes": {"multitask": 4_000, "one_per_task": 7_000}}
    _run(tmp_path, "pafi-multitask-s42", multi, [0.3, 0.45], 10.0)
    _run(tmp_path, "pafi-rte-s42", {"headline_metric": "accuracy", "num_trainable": 900}, [0.5, 0.55], 4.0)
    _run(tmp_path, "pafi-cola-s42", {"headline_metric": "matthews", "num_trainable": 900}, [0.1, 0.34], 7.0)
    _run(tmp_path, "pafi-rte-head-shared-s42", {}, [0.5, 0.58], 1.0)
    _run(tmp_path, "pafi-rte-head-base-s42", {}, [0.5, 0.53], 1.0)
    assert multitask_table.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "multitask_table.md").read_text()
    assert "| RTE | accuracy | 55.0 | 60.0 | +5.0 |" in text
    assert "| CoLA | matthews | 34.0 | 30.0 | -4.0 |" in text
    assert "| **average** | | 44.5 | 45.0 | +0.50 |" in text
    assert "| total MB (up + down, every message) | 11.0 | 10.0 |" in text
    assert "| stored (float32 values + heads) | 7,200 B | 4,000 B |" in text
    assert "| head | 58.0 | 53.0 | +5.0 |" in text and "| values + head | – | – | – |" in text
    assert "+0.50 pts (target within 0.5): met" in text and "RTE in the multi-task federation vs alone: +5.0" in text
    assert "head, from the shared values vs the base: +5.0 pts (target > 0): met" in text
