"""Data: local TSV (SST-2, AG News), deterministic flwr-datasets partitions, clear errors."""

from __future__ import annotations

import pytest

from shared.data import DataLoadError, batch_indices, load_splits, partition


def test_sst2_local_tsv(sst2_dir):
    sp = load_splits("sst2", str(sst2_dir))
    assert len(sp["train"]) == 60_614 and len(sp["test"]) == 872
    assert set(sp["test"]["label"]) == {0, 1}


def test_agnews_local_tsv_maps_class_names(agnews_dir):
    sp = load_splits("agnews", str(agnews_dir))
    assert len(sp["test"]) == 7_600 and set(sp["train"]["label"]) == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_partitions_are_deterministic_and_disjoint(sst2_dir, kind):
    train = load_splits("sst2", str(sst2_dir))["train"]
    parts = [partition(train, 5, i, kind, 0.5, seed=3) for i in range(5)]
    again = partition(train, 5, 2, kind, 0.5, seed=3)
    assert parts[2]["text"] == again["text"]
    assert sum(len(p) for p in parts) == len(train)
    if kind == "dirichlet":  # label skew: partitions differ in their positive share
        shares = [sum(p["label"]) / len(p) for p in parts]
        assert max(shares) - min(shares) > 0.1


def test_errors_say_what_to_pass(tmp_path, monkeypatch):
    with pytest.raises(DataLoadError, match="train.tsv"):
        load_splits("sst2", str(tmp_path))
    with pytest.raises(DataLoadError, match="unknown dataset"):
        load_splits("mnist", "")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    load_splits.cache_clear()
    with pytest.raises(DataLoadError, match="data-dir"):
        load_splits("sst2", "")


def test_batches_are_seeded():
    assert [b.tolist() for b in batch_indices(10, 4, 5, seed=1)] == [b.tolist() for b in batch_indices(10, 4, 5, 1)]
    assert [b.tolist() for b in batch_indices(10, 4, 5, 1)] != [b.tolist() for b in batch_indices(10, 4, 5, 2)]
