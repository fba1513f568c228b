"""Every registered task through the same checks (the task contract): its official local layout on the real files
of ../shared/data, the Hub path through ``datasets`` on a local DatasetDict, pair encoding and truncation, every
metric against the library on fabricated predictions, and (classification) one federated round with pafi."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from shared.data import encode, hub_splits, load_splits
from shared.tasks import TaskError, get_task, read_local, tasks

FOLDERS = {"cola": "glue/CoLA", "sst2": "sst2", "mrpc": "glue/MRPC", "stsb": "glue/STS-B", "qqp": "glue/QQP",
           "mnli": "glue/MNLI", "qnli": "glue/QNLI", "rte": "glue/RTE", "agnews": "agnews"}
GLUE_ROWS = {"cola": (8_551, 1_043), "mrpc": (3_668, 408), "stsb": (5_749, 1_500), "rte": (2_490, 277)}
NAMES = sorted(n for n, t in tasks().items() if t.kind != "causal-lm")  # causal-LM tasks: test_causal_lm.py


def _folder(name: str) -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / FOLDERS[name]


def test_every_registered_task_has_a_folder_here():
    assert set(NAMES) == set(FOLDERS)  # a new task gets its data folder in this test


@pytest.mark.parametrize("name", NAMES)
def test_the_official_layout_reads_with_the_tasks_columns_and_labels(name):
    task = get_task(name)
    splits = read_local(task, _folder(name))
    assert {"train", *task.held_out} <= set(splits)
    for split in splits.values():
        assert split.column_names == [*task.text_columns, "label"] and len(split) > 0
        labels = np.asarray(split["label"])
        if task.kind == "classification":
            assert labels.dtype.kind == "i" and labels.min() >= 0 and labels.max() < task.num_labels
        else:
            assert labels.dtype.kind == "f" and 0.0 <= labels.min() and labels.max() <= 5.0
    if name in GLUE_ROWS:  # the complete GLUE files: GLUE's own row counts
        assert (len(splits["train"]), len(splits["test"])) == GLUE_ROWS[name]


@pytest.mark.parametrize("name", NAMES)
def test_the_hub_path_gives_the_same_rows_from_the_hubs_split_and_column_names(name):
    """A DatasetDict shaped as the Hub serves the task (its split names, its column names, extra columns) reads
    through the same code as ``load_dataset`` would, into the very rows of the local folder."""
    task = get_task(name)
    local = {k: v.select(range(min(20, len(v)))) for k, v in read_local(task, _folder(name)).items()}
    theirs = DatasetDict({task.hub.splits[ours]: Dataset.from_dict(
        {**{task.hub.columns[c]: split[c] for c in (*task.text_columns, "label")}, "idx": list(range(len(split)))})
        for ours, split in local.items() if ours in task.hub.splits})
    got = hub_splits(task, theirs)
    for ours in got:
        assert got[ours].column_names == [*task.text_columns, "label"] and got[ours].to_dict() == local[ours].to_dict()


def test_pair_encoding_keeps_both_sides_when_it_truncates(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ds = Dataset.from_dict({"text": ["short premise .", " ".join(["long"] * 200)],
                            "text_pair": [" ".join(["hypothesis"] * 200), "tiny ."], "label": [0, 1]})
    enc = encode(ds, tok, max_length=32)
    for row in enc.input_ids:
        sep = (row == tok.sep_token_id).nonzero().flatten().tolist()
        assert len(sep) == 2 and sep[0] > 1 and sep[1] > sep[0] + 1  # [CLS] a [SEP] b [SEP]: both sides kept
    assert enc.input_ids.shape == (2, 32) and enc.labels.dtype == torch.long
    for row, seg, mask in zip(enc.input_ids, enc.token_type_ids, enc.attention_mask):  # BERT's segments: a 0, b 1
        first_sep = int((row == tok.sep_token_id).nonzero()[0])
        assert seg[:first_sep + 1].eq(0).all() and seg[first_sep + 1:int(mask.sum())].eq(1).all()
    assert "token_type_ids" in enc.batch(torch.arange(2))  # the model sees them
    single = encode(Dataset.from_dict({"text": ["one text"], "label": [0]}), tok, 32)
    assert single.token_type_ids is None and "token_type_ids" not in single.batch(torch.arange(1))
    regression = encode(Dataset.from_dict({**ds.to_dict(), "label": [0.5, 4.0]}), tok, 32)
    assert regression.labels.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_equals_the_librarys_on_fabricated_predictions(name):
    task = get_task(name)
    rng = np.random.default_rng(7)
    labels = rng.integers(0, task.num_labels, 200) if task.kind == "classification" else rng.uniform(0, 5, 200)
    logits = rng.normal(size=(200, task.num_labels))
    if task.kind == "regression":
        logits[:, 0] = labels + rng.normal(0, 1, 200)
    pred = logits.argmax(1) if task.kind == "classification" else logits[:, 0]
    ref = {"accuracy": lambda: accuracy_score(labels, pred), "f1": lambda: f1_score(labels, pred),
           "matthews": lambda: matthews_corrcoef(labels, pred), "pearson": lambda: pearsonr(pred, labels)[0],
           "spearman": lambda: spearmanr(pred, labels)[0]}
    got = task.score(logits, labels)
    assert set(got) == set(task.metrics) and task.headline in got
    for metric, value in got.items():
        assert value == pytest.approx(float(ref[metric]()), abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_one_federated_round_with_pafi_and_the_merged_model_predicts_in_plain_transformers(name, tiny_model_dir,
                                                                                         tmp_path):
    from client.client_app import app as client_app
    from flwr.app import Context, RecordDict
    from server.server_app import main
    from shared.settings import declared_defaults
    from tests.support.local_grid import LocalGrid
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = get_task(name)
    rc = {**declared_defaults(), "model": str(tiny_model_dir), "dataset": name, "data-dir": str(_folder(name)),
          "mask-density": 0.05, "local-steps": 1, "batch-size": 4, "max-length": 32, "max-eval-examples": 16,
          "num-server-rounds": 1, "fraction-train": 1.0, "min-available-nodes": 2, "output-dir": str(tmp_path),
          "update-bound": "none", "trust-weighting": "none", "final-eval": "slice"}  # one step of 4 rows: FLTrust may weigh every reply 0
    main(LocalGrid(client_app, rc, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    history = json.loads((tmp_path / "history.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    last = history[-1]
    assert last["replied"] == 2 and last["aggregated"]
    assert set(last["metrics"]) == set(task.metrics) and last["score"] == last["metrics"][task.headline]
    assert ("accuracy" in last) == ("accuracy" in task.metrics)  # kept where the task has it, absent elsewhere
    assert summary["headline_metric"] == task.headline and summary["final_score"] == last["score"]
    further = {f"{m}_{s.removeprefix('test_')}" for s in task.held_out[1:] for m in task.metrics}  # MNLI mismatched
    assert set(summary["metrics"]) == set(task.metrics) | further
    assert {k: summary["metrics"][k] for k in task.metrics} == last["metrics"]
    assert ("final_accuracy" in summary) == ("accuracy" in task.metrics)

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")  # plain transformers
    assert merged.config.num_labels == task.num_labels and merged.config.problem_type == task.problem_type
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    rows = load_splits(name, str(_folder(name)))["test"].select(range(4))
    pairs = list(rows["text_pair"]) if task.pair else None
    enc = tok(list(rows["text"]), pairs, truncation=True, max_length=32, padding=True, return_tensors="pt")
    labels = torch.tensor(list(rows["label"]), dtype=torch.float32 if task.kind == "regression" else torch.long)
    out = merged(**enc, labels=labels)  # the loss of the task's kind: MSE on (n, 1) or cross-entropy on (n, C)
    assert out.logits.shape == (4, task.num_labels) and torch.isfinite(out.loss)
    assert set(task.score(out.logits.detach().numpy(), list(rows["label"]))) == set(task.metrics)


@pytest.mark.parametrize("bad,needle", [
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"dataset": "stsb", "local-loss": "balanced"}, "is a regression without classes; use local-loss='ce'"),
])
def test_a_dataset_that_cannot_run_is_refused_in_one_line(bad, needle):
    from shared.settings import ConfigError, parse_run_config

    with pytest.raises(ConfigError) as err:
        parse_run_config(bad)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_files_name_the_file_line_or_column(tmp_path):
    rte = get_task("rte")
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    (tmp_path / "dev.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(TaskError, match=r"train.tsv:2: label 'maybe' is neither one of \['entailment'"):
        read_local(rte, tmp_path)
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(TaskError, match=r"dev.tsv: no column 'sentence2'"):
        read_local(rte, tmp_path)
    (tmp_path / "dev.tsv").unlink()
    with pytest.raises(TaskError, match="lacks dev.tsv"):
        read_local(rte, tmp_path)
    stsb = get_task("stsb")
    (tmp_path / "train.tsv").write_text("sentence1\tsentence2\tscore\na\tb\thigh\n")
    (tmp_path / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1.0\n")
    with pytest.raises(TaskError, match="score 'high' is not a number"):
        read_local(stsb, tmp_path)
    load_splits.cache_clear()
