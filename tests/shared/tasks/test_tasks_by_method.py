"""A pair task (RTE) and the regression task (STS-B) through every registered method: one real federation
in-process each (the real ServerApp ``main`` and ClientApp handlers on a tiny BERT and the real GLUE files), whose
records carry the task's metrics and whose merged model predicts with the task's head. Every method serves every
task (a method chooses what trains in the encoder; the task sets the head and the loss), so none is refused here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shared.methods import methods
from shared.tasks import get_task

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "glue"
CASES = [(m, t) for t in ("rte", "stsb") for m in methods()]


@pytest.mark.parametrize("method,task_name", CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_every_method_trains_a_pair_task_and_a_regression(method, task_name, tiny_model_dir, tmp_path):
    from client.client_app import app as client_app
    from flwr.app import Context, RecordDict
    from server.server_app import main
    from shared.settings import declared_defaults
    from tests.support.local_grid import LocalGrid
    from transformers import AutoModelForSequenceClassification

    task = get_task(task_name)
    folder = {"rte": "RTE", "stsb": "STS-B"}[task_name]
    rc = {**declared_defaults(), "method": method, "model": str(tiny_model_dir), "dataset": task_name,
          "data-dir": str(DATA / folder), "mask-density": 0.05, "local-steps": 1, "batch-size": 4, "max-length": 32,
          "max-eval-examples": 16, "num-server-rounds": 1, "fraction-train": 1.0, "min-available-nodes": 2,
          "output-dir": str(tmp_path), "sam-batches": 1, "dsee-prune-heads": 1}
    main(LocalGrid(client_app, rc, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    last = json.loads((tmp_path / "history.json").read_text())[-1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert last["replied"] == 2 and last["aggregated"] and math.isfinite(last["loss"])
    assert set(last["metrics"]) == set(task.metrics) and summary["headline_metric"] == task.headline
    assert all(math.isfinite(v) for v in summary["metrics"].values())
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert (merged.config.num_labels, merged.config.problem_type) == (task.num_labels, task.problem_type)
