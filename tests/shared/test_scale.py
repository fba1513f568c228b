"""What must not grow with the federation's size: partitioning, the handshake's row count, config parsing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from shared.data import EqualDirichletPartitioner, load_splits, partition, partition_size


@pytest.fixture(scope="module")
def train(sst2_dir):
    return load_splits("sst2", str(sst2_dir))["train"]


def test_equal_dirichlet_uses_every_row_once_in_near_equal_label_skewed_shares(train):
    p = EqualDirichletPartitioner(train, 10_000, alpha=0.5, seed=3)
    sizes = np.array([p.partition_size(i) for i in range(10_000)])
    assert sizes.sum() == len(train) and sizes.min() >= 1
    assert sizes.max() - sizes.min() <= 3  # equal within the rounding of 2 classes
    rows = np.concatenate([p._indices[i] for i in range(10_000)])
    assert len(np.unique(rows)) == len(train)
    labels = np.asarray(train["label"])
    wide = EqualDirichletPartitioner(train, 1000, alpha=0.5, seed=3)  # ~60 rows each
    pos = np.array([labels[wide._indices[i]].mean() for i in range(1000)])
    assert pos.std() > 0.2  # Dirichlet(0.5) label mixes; iid shares of 60 rows would spread ~0.06
    again = EqualDirichletPartitioner(train, 10_000, alpha=0.5, seed=3)
    assert all(np.array_equal(p._indices[i], again._indices[i]) for i in (0, 17, 9_999))


def test_ten_thousand_dirichlet_partitions_are_cheap(train):
    t0 = time.process_time()
    sizes = [partition_size(train, 10_000, i, "dirichlet", 0.5, 42) for i in range(0, 10_000, 97)]
    assert min(sizes) >= 1
    # flwr-datasets' Dirichlet attempts + InnerDirichletPartitioner took ~150 s here; this is O(P·C)
    assert time.process_time() - t0 < 30


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partition_size_counts_what_partition_returns(train, partitioner):
    for n, pid in ((10, 3), (1000, 999)):
        assert partition_size(train, n, pid, partitioner, 0.5, 1) == len(partition(train, n, pid, partitioner, 0.5, 1))


def test_partition_size_refuses_bad_ids_like_partition(train):
    from shared.data import DataLoadError

    with pytest.raises(DataLoadError, match="partition-id"):
        partition_size(train, 10, 10, "iid", 0.5, 1)


def _context(cfg, pid, n):
    return Context(run_id=1, node_id=100 + pid, state=RecordDict(), run_config=dict(cfg),
                   node_config={"partition-id": pid, "num-partitions": n})


def test_the_handshake_counts_rows_without_tokenizing_and_parses_the_config_once(tiny_model_dir, sst2_dir,
                                                                                   monkeypatch):
    import client.client_app as ca
    import shared.runtime as rt_mod
    from tests.support.local_grid import LocalGrid  # noqa: F401 (sets the task identity Messages need)
    from wire.protocol import HANDSHAKE
    from wire.records import message_parts, to_recorddict

    cfg = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05, "max-length": 32}
    LocalGrid(ca.app, cfg, 1)  # task identity for building Messages
    ca._PARSED.clear()
    parsed = []
    real_parse = ca.parse_run_config
    monkeypatch.setattr(ca, "parse_run_config", lambda rc: (parsed.append(1), real_parse(rc))[1])
    first = ca._node(_context(cfg, 0, 1000)).rt  # builds the runtime (tokenizer and all) once
    monkeypatch.setattr(rt_mod, "encode", lambda *a, **k: pytest.fail("the handshake tokenized a partition"))
    sizes = []
    for pid in range(0, 1000, 50):
        msg = Message(to_recorddict({}, {"fingerprint": first.tuner.fingerprint}), 1001, HANDSHAKE)
        msg.metadata.__dict__["_message_id"] = f"m{pid}"
        reply = ca.query(msg, _context(cfg, pid, 1000))
        sizes.append(message_parts(reply)[1]["num-examples"])
    assert len(parsed) == 1  # one parse for every message of the run
    train = load_splits("sst2", str(sst2_dir))["train"]
    assert sizes == [len(partition(train, 1000, pid, "dirichlet", 0.5, 42)) for pid in range(0, 1000, 50)]
