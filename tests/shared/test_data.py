"""Data: local TSV (SST-2, AG News), deterministic flwr-datasets partitions, clear errors."""

from __future__ import annotations

import pytest
import torch

from shared.data import DataLoadError, batch_indices, encode, load_splits, partition


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


def test_grouped_passes_hold_every_row_once_and_are_seeded():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (1000,), generator=gen)
    batches = batch_indices(1000, 8, 2 * 125, seed=5, lengths=lengths)  # two passes of 125 batches
    for one_pass in (batches[:125], batches[125:]):
        rows = torch.cat(one_pass)
        assert sorted(rows.tolist()) == list(range(1000))
    assert [b.tolist() for b in batches] == [b.tolist() for b in batch_indices(1000, 8, 250, 5, lengths)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in batch_indices(1000, 8, 250, 6, lengths)]
    assert [b.tolist() for b in batches[:125]] != [b.tolist() for b in batches[125:]]  # a new draw per pass


def test_grouped_pass_keeps_a_ragged_tail_and_walks_on():
    lengths = torch.arange(21)
    batches = batch_indices(21, 4, 12, seed=0, lengths=lengths)  # 6 batches per pass (5 x 4 + 1)
    assert len(batches) == 12 and sorted(len(b) for b in batches[:6]) == [1, 4, 4, 4, 4, 4]
    assert sorted(torch.cat(batches[6:]).tolist()) == list(range(21))


def test_grouping_shrinks_sst2_batch_widths(sst2_dir):
    """On 8,000 real SST-2 sentences at batch 32: random batches are mostly padding, grouped ones are not."""
    from shared.model import load_base_model

    train = load_splits("sst2", str(sst2_dir))["train"].shuffle(seed=0).select(range(8000))
    data = encode(train, load_base_model("", 2, seed=0).tokenizer, 64)
    lengths = data.lengths

    def real_share(batches):
        return sum(int(lengths[b].sum()) for b in batches) / sum(len(b) * int(lengths[b].max()) for b in batches)

    steps = 8000 // 32
    plain = real_share(batch_indices(len(data), 32, steps, seed=1))
    grouped = real_share(batch_indices(len(data), 32, steps, seed=1, lengths=lengths))
    assert plain < 0.45 and grouped >= 0.9, (plain, grouped)


def test_length_sorted_evaluation_equals_row_order(tiny_cfg):
    """Same examples, per-example loss: the sorted batches give the unsorted accuracy and loss."""
    from shared.model import load_base_model
    from shared.tasks import get_task
    from shared.training import evaluate

    base = load_base_model(tiny_cfg.model, 2, seed=0)
    test = load_splits(tiny_cfg.dataset, tiny_cfg.data_dir)["test"]
    data = encode(test, base.tokenizer, 32, limit=100)
    assert sorted(torch.cat(data.eval_batches(16)).tolist()) == list(range(100))
    ev = evaluate(base.model, data, get_task("sst2"), batch_size=16)
    loss, acc = ev.loss, ev.metrics["accuracy"]
    base.model.eval()
    with torch.no_grad():
        out = base.model(**data.batch(torch.arange(100)))  # one unsorted batch
    assert acc == int((out.logits.argmax(-1) == data.labels).sum()) / 100
    assert loss == pytest.approx(float(out.loss), abs=1e-5)
