"""Wire-truth arithmetic: counter snapshots -> per-round TCP bytes and overhead (pure functions)."""

from __future__ import annotations

import pytest

from simulations.performance.wire_truth import markdown, per_round, summarize


def _marks() -> list[dict]:
    # Cumulative proxy counters read when each history record appeared.
    return [{"round": 0, "reported_up": 1_000, "reported_down": 800, "tcp_up": None,
             "tcp_up_total": 50_000, "tcp_down_total": 400_000},  # registration + FAB in round 0
            {"round": 1, "reported_up": 100_000, "reported_down": 90_000,
             "tcp_up_total": 152_000, "tcp_down_total": 493_600},
            {"round": 2, "reported_up": 100_000, "reported_down": 90_000,
             "tcp_up_total": 254_000, "tcp_down_total": 587_200}]


def test_per_round_differences_and_overheads():
    rows = per_round(_marks())
    assert [(r["tcp_up"], r["tcp_down"]) for r in rows] == [(50_000, 400_000), (102_000, 93_600), (102_000, 93_600)]
    assert rows[1]["overhead_up_pct"] == pytest.approx(2.0)
    assert rows[1]["overhead_down_pct"] == pytest.approx(4.0)
    assert rows[1]["overhead_pct"] == pytest.approx(100 * (195_600 - 190_000) / 190_000)


def test_summary_excludes_round_zero():
    total = summarize(per_round(_marks()))
    assert total["rounds"] == 2 and total["tcp_up"] == 204_000 and total["reported_down"] == 180_000
    assert total["overhead_up_pct"] == pytest.approx(2.0) and total["overhead_down_pct"] == pytest.approx(4.0)
    md = markdown({"config": {"method": "pafi", "value-dtype": "float16", "mask-density": 0.005},
                   "num_supernodes": 2, "rounds": per_round(_marks()), "total": total})
    assert "framing overhead +2.95 %" in md and "| 0 (handshake, registration, FAB) |" in md
