"""Wire truth on the tiny model: Deployment Engine (SuperLink + 2 SuperNodes behind the counting proxy)."""

from __future__ import annotations

import pytest

from simulations.performance.wire_truth import measure

pytestmark = pytest.mark.integration


def test_reported_bytes_cross_the_socket(tmp_path, tiny_model_dir):
    result = measure({"model": str(tiny_model_dir), "mask-density": 0.05, "num-server-rounds": 2,
                      "value-dtype": "float16"}, tmp_path / "wire", num_supernodes=2, timeout=300)
    rounds = [r for r in result["rounds"] if r["round"] >= 1]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        # Every reported byte crosses the socket (plus HTTP/protobuf framing, heartbeats, polling).
        assert r["tcp_up"] >= r["reported_up"] > 0 and r["tcp_down"] >= r["reported_down"] > 0
    assert result["total"]["overhead_pct"] is not None and result["total"]["overhead_pct"] >= 0
    assert (tmp_path / "wire" / "wire_truth.md").read_text().count("\n| ") >= 3
