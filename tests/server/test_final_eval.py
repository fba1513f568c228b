"""``final-eval = "full"``: the rounds score a slice, the summary's final figures the whole held-out split."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, RecordDict

from shared.runtime import test_split as held_out_split
from shared.settings import declared_defaults, parse_run_config
from shared.tasks import task_of
from shared.training import evaluate

pytestmark = pytest.mark.integration  # two short runs of the real apps in-process (~40 s CPU)


def _run(cfg: dict, nodes: int = 2) -> None:
    from client.client_app import app as client_app
    from server.server_app import main
    from tests.support.local_grid import LocalGrid

    main(LocalGrid(client_app, cfg, nodes, error_replies=True),
         Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))


def test_the_final_state_is_scored_on_the_whole_split_and_the_rounds_on_their_slice(tmp_path, tiny_model_dir,
                                                                                    sst2_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05, "local-steps": 3,
            "batch-size": 8, "max-length": 32, "max-eval-examples": 16, "seed": 3, "num-server-rounds": 1,
            "fraction-train": 1.0, "min-available-nodes": 2, "lr": 0.05}
    _run({**base, "output-dir": str(tmp_path / "slice"), "final-eval": "slice"})
    _run({**base, "output-dir": str(tmp_path / "full"), "final-eval": "full"})
    sliced, full = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("slice", "full"))
    history = json.loads((tmp_path / "full" / "history.json").read_text())
    assert sliced["final_eval"] == "slice" and sliced["final_score"] == history[-1]["score"]
    assert full["final_eval"] == "full" and full["final_score_slice"] == history[-1]["score"]
    cfg = parse_run_config({**declared_defaults(), **base, "max-eval-examples": 0})
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full" / "model")
    whole = held_out_split(cfg, AutoTokenizer.from_pretrained(tmp_path / "full" / "model"))
    assert len(whole) == 872  # SST-2's dev set, all of it
    want = evaluate(merged, whole, task_of(cfg)).metrics["accuracy"]
    assert full["final_accuracy"] == pytest.approx(want, abs=1e-9) and full["final_score"] == full["final_accuracy"]
    assert full["metrics"]["accuracy"] == full["final_accuracy"]
