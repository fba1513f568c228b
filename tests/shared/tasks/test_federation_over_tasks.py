"""Federation over any task: a validation split carved from train under the seed (never trained on), Dirichlet
partitions of a regression over bins of its target, and the launcher's data check before any process starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.data import label_bins, partition, run_splits
from shared.settings import parse_run_config

GLUE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "glue"


def _cfg(**over):
    return parse_run_config({"dataset": "rte", "data-dir": str(GLUE / "RTE"), **over})


def test_validation_is_carved_from_train_under_the_seed_and_leaves_train():
    full = run_splits(_cfg())
    carved = run_splits(_cfg(**{"eval-split": "validation"}))
    n = len(full["train"])
    assert "validation" not in full and len(carved["validation"]) == round(0.1 * n)
    assert len(carved["train"]) + len(carved["validation"]) == n
    rows = lambda ds: set(zip(ds["text"], ds["text_pair"]))  # noqa: E731
    assert rows(carved["train"]).isdisjoint(rows(carved["validation"]))  # no client trains on what is scored
    assert carved["test"]["text"] == full["test"]["text"]  # test untouched
    again = run_splits(_cfg(**{"eval-split": "validation"}))
    other = run_splits(_cfg(**{"eval-split": "validation", "seed": 43}))
    assert again["validation"]["text"] == carved["validation"]["text"]
    assert other["validation"]["text"] != carved["validation"]["text"]
    share = run_splits(_cfg(**{"eval-split": "validation", "validation-fraction": 0.2}))
    assert len(share["validation"]) == round(0.2 * n)


def test_a_folder_with_its_own_validation_split_keeps_it(sst2_dir):
    cfg = parse_run_config({"data-dir": str(sst2_dir), "eval-split": "validation"})
    splits = run_splits(cfg)
    own = (sst2_dir / "validation.tsv").read_text().count("\n")
    assert abs(len(splits["validation"]) - own) <= 1  # the file's rows (header or not), not a carved share


def test_dirichlet_partitions_of_a_regression_skew_bins_of_the_target_and_keep_the_scores():
    train = run_splits(parse_run_config({"dataset": "stsb", "data-dir": str(GLUE / "STS-B")}))["train"]
    bins = label_bins(train["label"])
    assert sorted(np.bincount(bins).tolist()) and len(np.unique(bins)) == 5  # quintiles
    parts = [partition(train, 5, i, "dirichlet", 0.3, 42) for i in range(5)]
    assert sum(len(p) for p in parts) == len(train)
    assert all(p.column_names == train.column_names for p in parts)  # the bin column never leaves
    assert all(str(p.features["label"].dtype).startswith("float") for p in parts)
    edges = np.unique(np.quantile(np.asarray(train["label"]), [0.2, 0.4, 0.6, 0.8]))  # train's quintiles
    mixes = np.array([np.bincount(np.searchsorted(edges, np.asarray(p["label"]), side="right"), minlength=5) / len(p)
                      for p in parts])
    assert mixes.max() > 0.4  # skewed: some client holds mostly one range of similarity (IID would be ~0.2)


def test_the_launchers_data_check_names_a_bad_dataset_in_one_line(tmp_path):
    from simulations.engines.lib.superlink import check_data

    assert check_data({"dataset": "rte", "data-dir": str(GLUE / "RTE")}) is None
    why = check_data({"dataset": "rte", "data-dir": str(tmp_path)})
    assert why and "\n" not in why and str(tmp_path) in why
