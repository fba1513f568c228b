"""dataset='custom': the user's own data (a CSV/TSV/JSON(L) folder, or the Hub through ``datasets``) described by
run-config keys — read into the task contract's columns, one federated round through the real entry point, and
every bad input refused at parse in one line that names the file or column."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from shared.data import data_fingerprint, load_splits, run_splits
from shared.settings import ConfigError, parse_run_config
from shared.tasks import task_of

PAIRS = [("a man plays a guitar", "someone makes music", "entailment"),
         ("the cat sleeps, quietly", "a dog barks", "not_entailment"),
         ("it rains", "the street is wet", "entailment"),
         ("she reads a book", "she is swimming", "not_entailment")]


def _csv(rows, header=("premise", "hypothesis", "gold", "id")) -> str:
    out = [",".join(header)]
    for i, (a, b, label) in enumerate(rows):
        out.append(",".join(f'"{v}"' if "," in v else v for v in (a, b, label, str(i))))
    return "\n".join(out) + "\n"


def _pair_folder(root: Path, train_rows: int = 8) -> Path:
    folder = root / "pairs"
    folder.mkdir()
    (folder / "train.csv").write_text(_csv((PAIRS * train_rows)[:train_rows]))
    (folder / "test.csv").write_text(_csv(PAIRS))
    return folder


def _pair_config(folder: Path, **more) -> dict:
    return {"dataset": "custom", "data-dir": str(folder), "text-columns": "premise,hypothesis", "label-column": "gold",
            **more}


def test_a_csv_folder_of_sentence_pairs_with_string_labels(tmp_path):
    folder = _pair_folder(tmp_path)
    (folder / "validation.csv").write_text(_csv(PAIRS[:2]))
    cfg = parse_run_config(_pair_config(folder, **{"task-metrics": "f1,accuracy"}))
    task = task_of(cfg)
    assert re.fullmatch(r"custom-[0-9a-f]{8}", task.name)
    assert task.label_names == ("entailment", "not_entailment") and task.pair and task.kind == "classification"
    assert task.metrics == ("f1", "accuracy") and task.headline == "f1"
    splits = load_splits(task.name, cfg.data_dir)
    assert set(splits) == {"train", "validation", "test"}
    test = splits["test"]
    assert test.column_names == ["text", "text_pair", "label"]  # 'id' dropped
    assert test["text"][1] == "the cat sleeps, quietly" and list(test["label"]) == [0, 1, 0, 1]
    assert task_of(parse_run_config(_pair_config(folder, **{"task-metrics": "f1,accuracy"}))) is task  # idempotent
    assert run_splits(cfg)["train"].num_rows == 8

    swapped = task_of(parse_run_config(_pair_config(folder, **{"label-names": "not_entailment,entailment"})))
    assert swapped.name != task.name and list(load_splits(swapped.name, cfg.data_dir)["test"]["label"]) == [1, 0, 1, 0]


def test_a_jsonl_regression_reads_float_targets(tmp_path):
    rows = [{"s1": f"sentence {i}", "s2": f"other {i}", "score": [0, 1.5, "2.25", 4][i % 4], "junk": None}
            for i in range(8)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "test.json").write_text(json.dumps(rows[:3]))  # a JSON array
    cfg = parse_run_config({"dataset": "custom", "data-dir": str(tmp_path), "text-columns": "s1, s2",
                            "label-column": "score", "task-type": "regression"})
    task = task_of(cfg)
    assert task.kind == "regression" and task.num_labels == 1 and task.problem_type == "regression"
    assert task.metrics == ("spearman", "pearson") and task.headline == "spearman" and task.label_names == ()
    splits = load_splits(task.name, cfg.data_dir)
    assert splits["train"].features["label"].dtype == "float32"
    assert splits["test"]["label"][:] == [0.0, 1.5, 2.25] and splits["test"]["text_pair"][2] == "other 2"


def test_a_tsv_single_text_task_with_integer_labels(tmp_path):
    train = ["sentence\tlabel"] + [f'a "quoted" text {i}\t{i % 3}' for i in range(9)]
    (tmp_path / "train.tsv").write_text("\n".join(train) + "\n")
    (tmp_path / "test.tsv").write_text("sentence\tlabel\n007\t2\n")
    cfg = parse_run_config({"dataset": "custom", "data-dir": str(tmp_path), "text-columns": "sentence",
                            "task-metrics": "accuracy,matthews"})
    task = task_of(cfg)
    assert task.label_names == ("0", "1", "2") and not task.pair and task.headline == "accuracy"
    splits = load_splits(task.name, cfg.data_dir)
    assert splits["train"]["text"][1] == 'a "quoted" text 1'  # TSV: quotes are text
    assert splits["test"].to_dict() == {"text": ["007"], "label": [2]}  # CSV/TSV values stay text


def _hub(train_labels, test_labels, names=None) -> DatasetDict:
    """A DatasetDict shaped as the Hub serves one: its own column names, an extra column, a labelled validation
    split and (where ``test_labels`` is None) an unlabelled test split (-1, the Hub's convention)."""
    label = ClassLabel(names=names) if names else Value("string" if isinstance(train_labels[0], str) else "int64")
    feats = Features({"sentence": Value("string"), "label": label, "idx": Value("int64")})

    def split(labels):
        return Dataset.from_dict({"sentence": [f"s{i}" for i in range(len(labels))], "label": labels,
                                  "idx": list(range(len(labels)))}, features=feats)
    out = {"train": split(train_labels), "validation": split(train_labels[:3])}
    if names:
        out["test"] = split([-1, -1])
    return DatasetDict(out)


@pytest.fixture
def offline_hub(monkeypatch):
    """The Hub path with no network: HF offline mode, and ``load_dataset`` answering with what ``served`` holds."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    served: dict = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: served[args])
    return served


def test_the_hub_path_reads_classlabel_names_and_skips_an_unlabelled_test_split(offline_hub):
    offline_hub[("someone/reviews", "en")] = _hub([0, 1, 1, 0, 1, 0], None, names=["bad", "good"])
    cfg = parse_run_config({"dataset": "custom", "hub-dataset": "someone/reviews", "hub-config": "en",
                            "text-columns": "sentence"})
    task = task_of(cfg)
    assert task.label_names == ("bad", "good") and task.hub.splits == {"train": "train", "test": "validation"}
    splits = load_splits(task.name, "")
    assert set(splits) == {"train", "test"} and splits["test"].column_names == ["text", "label"]
    assert splits["test"]["label"][:] == [0, 1, 1]


def test_the_hub_path_through_load_dataset_on_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = _pair_folder(tmp_path)
    (folder / "test.csv").rename(folder / "validation.csv")  # load_dataset names splits by file
    cfg = parse_run_config({"dataset": "custom", "hub-dataset": str(folder), "text-columns": "premise,hypothesis",
                            "label-column": "gold"})
    task = task_of(cfg)
    splits = load_splits(task.name, "")
    assert task.label_names == ("entailment", "not_entailment") and task.hub.splits["test"] == "validation"
    assert splits["test"].column_names == ["text", "text_pair", "label"] and splits["test"]["label"][:] == [0, 1, 0, 1]


def test_one_federated_round_on_custom_data_and_the_merged_model_loads(tiny_model_dir, tmp_path):
    from client.client_app import app as client_app
    from flwr.app import Context, RecordDict
    from server.server_app import main
    from shared.settings import declared_defaults
    from tests.support.local_grid import LocalGrid
    from transformers import AutoModelForSequenceClassification

    folder = _pair_folder(tmp_path, train_rows=24)
    out = tmp_path / "run"
    rc = {**declared_defaults(), **_pair_config(folder, **{"task-metrics": "f1,accuracy"}),
          "model": str(tiny_model_dir), "mask-density": 0.05, "local-steps": 1, "batch-size": 4, "max-length": 32,
          "max-eval-examples": 16, "num-server-rounds": 1, "fraction-train": 1.0, "min-available-nodes": 2,
          "output-dir": str(out), "update-bound": "none", "final-eval": "slice",
          "trust-weighting": "none"}  # one step of 4 rows: directions are noise, FLTrust may weigh them all 0
    main(LocalGrid(client_app, rc, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    last = json.loads((out / "history.json").read_text())[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert last["replied"] == 2 and last["aggregated"] and set(last["metrics"]) == {"f1", "accuracy"}
    assert summary["headline_metric"] == "f1" and summary["final_score"] == last["score"]
    merged = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert merged.config.num_labels == 2 and merged.config.problem_type == "single_label_classification"


def _bad_cases(root: Path, offline_hub: dict) -> dict[str, tuple[dict, str]]:
    """Case -> (run config, what its one line must say)."""
    pairs = _pair_folder(root)
    one = root / "one"
    one.mkdir()
    (one / "train.csv").write_text(_csv(PAIRS))
    both = root / "both"
    both.mkdir()
    for name in ("train.csv", "test.csv"):
        (both / name).write_text(_csv(PAIRS))
    (both / "train.json").write_text("[]")
    unknown = root / "unknown"
    unknown.mkdir()
    (unknown / "train.csv").write_text(_csv(PAIRS))
    (unknown / "test.csv").write_text(_csv(PAIRS[:2] + [("x", "y", "maybe")]))
    three = root / "three"
    three.mkdir()
    for name in ("train.csv", "test.csv"):
        (three / name).write_text(_csv(PAIRS + [("x", "y", "neutral")]))
    indexed = root / "indexed"
    indexed.mkdir()
    (indexed / "train.tsv").write_text("text\tlabel\na\t0\nb\t1\n")
    (indexed / "test.tsv").write_text("text\tlabel\na\t0\nb\t5\n")
    scores = root / "scores"
    scores.mkdir()
    (scores / "train.jsonl").write_text('{"text": "a", "score": 1.0}\n{"text": "b", "score": "high"}\n')
    (scores / "test.jsonl").write_text('{"text": "a", "score": 1.0}\n')
    offline_hub[("someone/only-train",)] = DatasetDict({"train": Dataset.from_dict({"text": ["a"], "label": [0]})})
    reg = {"data-dir": str(scores), "label-column": "score", "task-type": "regression"}
    t = str(pairs / "train.csv")
    return {
        "no data": ({}, "dataset='custom' needs its data: pass data-dir=<a folder with train and test files"),
        "data-dir and hub": ({"data-dir": str(pairs), "hub-dataset": "x/y"}, "reads data-dir or hub-dataset, not both"),
        "no folder": ({"data-dir": str(root / "nowhere")}, "nowhere is not a folder; pass the folder"),
        "no test file": ({"data-dir": str(one)}, f"data-dir {one} has no test file: put test.csv, test.tsv, test.json "
                                                 f"or test.jsonl there (it holds ['train.csv'])"),
        "two formats": ({"data-dir": str(both)}, "holds train.csv and train.json: keep one file per split"),
        "missing text column": (_pair_config(pairs, **{"text-columns": "premise,sentence"}),
                                f"{t}: no column 'sentence' (text-columns); its columns are ['premise', 'hypothesis',"
                                f" 'gold', 'id']; pass text-columns=<one or two of them, comma-separated>"),
        "missing label column": (_pair_config(pairs, **{"label-column": "label"}),
                                 f"{t}: no column 'label' (label-column); its columns are ['premise', 'hypothesis', "
                                 f"'gold', 'id']; pass label-column=<one of them>"),
        "three text columns": (_pair_config(pairs, **{"text-columns": "premise,hypothesis,id"}),
                               "text-columns='premise,hypothesis,id': pass one column name (a single text) or two"),
        "label unknown to train": (_pair_config(unknown),
                                   f"{unknown / 'test.csv'}, row 3: label 'maybe' is neither an index 0..1 nor one of "
                                   f"the classes ['entailment', 'not_entailment'] (the distinct labels of train); "
                                   f"pass label-names="),
        "index out of range": ({"data-dir": str(indexed)},
                               f"{indexed / 'test.tsv'}, row 2: label '5' is neither an index 0..1 nor one of"),
        "label-names misses a label": (_pair_config(three, **{"label-names": "entailment,not_entailment"}),
                                       f"{three / 'train.csv'}, row 5: label 'neutral' is neither an index 0..1 nor "
                                       f"one of the classes ['entailment', 'not_entailment'] (label-names); add it to "
                                       f"label-names or fix the row"),
        "split missing on the Hub": ({"hub-dataset": "someone/only-train"},
                                     "hub-dataset 'someone/only-train' has no labelled test (or validation) split (it has "
                                     "['train'])"),
        "regression target not a number": (reg, f"{scores / 'train.jsonl'}, row 2: target 'high' is not a number; a "
                                                f"regression (task-type=regression) needs a numeric label column"),
        "unknown metric": (_pair_config(pairs, **{"task-metrics": "accuracy,bleu"}),
                           "task-metrics: unknown metric(s) ['bleu']; known: ['accuracy', 'f1', 'matthews', "
                           "'pearson', 'spearman']"),
        "f1 on a regression": ({**reg, "task-metrics": "f1"},
                               "task-metrics: ['f1'] score a classification, and task-type=regression; use pearson or"
                               " spearman"),
        "pearson on a classification": (_pair_config(pairs, **{"task-metrics": "accuracy,pearson"}),
                                        "task-metrics: ['pearson'] score a regression, and task-type=classification; "
                                        "use accuracy, f1 or matthews"),
        "f1 on three classes": (_pair_config(three, **{"task-metrics": "f1"}),
                                "task-metrics: f1 is the binary F1 of class 1 and the data has 3 classes"),
    }


CASES = ["no data", "data-dir and hub", "no folder", "no test file", "two formats", "missing text column",
         "missing label column", "three text columns", "label unknown to train", "index out of range",
         "label-names misses a label", "split missing on the Hub", "regression target not a number",
         "unknown metric", "f1 on a regression", "pearson on a classification", "f1 on three classes"]


@pytest.mark.parametrize("case", CASES)
def test_every_bad_input_is_refused_at_parse_in_one_line(case, tmp_path, offline_hub):
    overrides, needle = _bad_cases(tmp_path, offline_hub)[case]
    with pytest.raises(ConfigError) as err:
        parse_run_config({"dataset": "custom", **overrides})
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_the_launcher_names_a_bad_custom_dataset_before_any_superlink_starts(tmp_path):
    from simulations.engines.lib.superlink import check_data

    folder = _pair_folder(tmp_path)
    problem = check_data(_pair_config(folder, **{"text-columns": "sentence"}))
    assert problem and "train.csv: no column 'sentence' (text-columns)" in problem and "\n" not in problem
    assert check_data(_pair_config(folder)) is None


def test_the_fingerprint_covers_custom_files_and_tsv_folders_hash_as_before(tmp_path):
    import hashlib

    folder = _pair_folder(tmp_path)
    before = data_fingerprint(str(folder))
    assert before and not before.startswith("missing:")
    (folder / "train.csv").write_text(_csv(PAIRS[::-1]))
    assert data_fingerprint(str(folder)) != before  # a resumed run sees the changed data
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    for name, text in (("train.tsv", "a\t0\n"), ("test.tsv", "b\t1\n")):
        (tsv / name).write_text(text)
    (tsv / "notes.json").write_text("{}")  # not a split file: never counted
    h = hashlib.sha256()
    for name in ("train.tsv", "test.tsv"):  # the formula the committed runs of record were stamped with
        h.update(f"|{name}|".encode())
        h.update((tsv / name).read_bytes())
    assert data_fingerprint(str(tsv)) == h.hexdigest()


def test_a_changed_file_is_read_and_checked_again(tmp_path):
    folder = _pair_folder(tmp_path)
    assert task_of(parse_run_config(_pair_config(folder)))
    (folder / "test.csv").write_text(_csv(PAIRS + [("x", "y", "maybe"), ("x", "y", "maybe")]))
    with pytest.raises(ConfigError, match=r"test.csv, row 5: label 'maybe'"):
        parse_run_config(_pair_config(folder))
    task = task_of(parse_run_config(_pair_config(folder, **{"label-names": "entailment,not_entailment,maybe"})))
    assert list(load_splits(task.name, str(folder))["test"]["label"][-2:]) == [2, 2]
