"""Per-process caches stay bounded and partitioning scales to many clients."""

from __future__ import annotations

import statistics

import pytest

from shared import runtime
from shared.data import load_splits, partition
from shared.runtime import client_partition, get_runtime


def test_partition_cache_is_bounded_in_bytes_and_keeps_the_most_recent(tiny_cfg, monkeypatch):
    tiny_cfg = tiny_cfg.replace(partitioner="iid")  # equal sizes, so the byte budget is predictable
    rt = get_runtime(tiny_cfg)
    runtime._PARTITIONS.clear()
    n = 12
    one = runtime._encoded_bytes(client_partition(tiny_cfg, rt.base.tokenizer, 0, n))
    monkeypatch.setattr(runtime, "PARTITION_CACHE_BYTES", int(4.5 * one))  # room for about four
    for pid in range(n):
        client_partition(tiny_cfg, rt.base.tokenizer, pid, n)
    kept = sum(map(runtime._encoded_bytes, runtime._PARTITIONS.values()))
    assert kept <= runtime.PARTITION_CACHE_BYTES and 2 <= len(runtime._PARTITIONS) < n
    assert max(key[-2] for key in runtime._PARTITIONS) == n - 1  # newest kept, oldest dropped
    again = client_partition(tiny_cfg, rt.base.tokenizer, n - 1, n)
    assert again is client_partition(tiny_cfg, rt.base.tokenizer, n - 1, n)  # a hit, not a rebuild


def test_runtime_is_built_once_per_configuration(tiny_cfg):
    assert get_runtime(tiny_cfg) is get_runtime(tiny_cfg)


@pytest.mark.parametrize("num_partitions", [1000])
def test_dirichlet_partitioning_works_for_many_clients(sst2_dir, num_partitions):
    train = load_splits("sst2", str(sst2_dir))["train"]
    sizes = [len(partition(train, num_partitions, pid, "dirichlet", 0.5, 42)) for pid in (0, 1, 499, 999)]
    assert min(sizes) > 0
    # Still label-skewed (Dirichlet(0.5) mixes): the positive share varies widely across clients.
    shares = []
    for pid in range(20):
        labels = partition(train, num_partitions, pid, "dirichlet", 0.5, 42)["label"]
        shares.append(sum(labels) / len(labels))
    assert statistics.pstdev(shares) > 0.15
