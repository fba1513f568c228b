"""round_mix: each round's sampled label mix replayed from a run's config, against the round's accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from server.strategy import seeded_sample
from simulations.benchmark.round_mix import correlation, label_table, main, replay, replay_leaning, round_skew, summarize


def test_the_skew_is_the_weighted_label_mix_distance_from_the_data():
    table = label_table([[0] * 90 + [1] * 10, [0] * 10 + [1] * 90], 2)  # data: 50/50
    assert table.tolist() == [[90, 10], [10, 90]]
    assert round_skew(table, [0], [100]) == pytest.approx(0.4)  # 90 % class 0 against 50 %
    assert round_skew(table, [0, 1], [1, 1]) == pytest.approx(0.0)
    assert round_skew(table, [0, 1], [3, 1]) == pytest.approx(0.2)  # (0.75·0.9 + 0.25·0.1) − 0.5


def test_replay_draws_the_rounds_the_server_draws():
    """The strategy's own sampling (partition-id order, one node per partition) and the replay agree round by round."""
    from tests.server.test_hardening import _strategy

    s = _strategy(10, fraction_train=0.5, seed=43)
    s.partitions = {900 + 7 * i: i for i in range(10)}  # node ids that do not sort like the partitions
    for rnd in (1, 2, 57, 140):
        assert [s.partitions[n] for n in s.sample(rnd)] == sorted(seeded_sample(list(range(10)), 0.5, 43, rnd))
    table = label_table([[0] * (10 * (i + 1)) + [1] * (5 * i) for i in range(10)], 2)
    skews = replay(table, 0.5, 43, 3)
    for rnd, got in zip((1, 2, 3), skews):
        picked = sorted(seeded_sample(list(range(10)), 0.5, 43, rnd))
        assert got == pytest.approx(round_skew(table, picked, [table[p].sum() for p in picked]))
    uniform = replay(table, 0.5, 43, 3, weighting="uniform")
    picked = sorted(seeded_sample(list(range(10)), 0.5, 43, 1))
    assert uniform[0] == pytest.approx(round_skew(table, picked, [1.0] * 5)) and uniform[0] != skews[0]


def test_summary_splits_skewed_from_balanced_rounds_after_the_start():
    skews = [0.5] * 3 + [0.1, 0.3, 0.1, 0.3, 0.25, 0.05]
    accs = [0.5] * 3 + [0.86, 0.74, 0.88, 0.72, 0.76, 0.90]
    s = summarize(skews, accs, skew=0.2, skip=3, upto=8)  # rounds 4..8: round 9 is in the decay
    assert s["rounds"] == (4, 8) and s["skewed"] == 3 and s["balanced"] == 2
    assert s["acc_skewed"] == pytest.approx((0.74 + 0.72 + 0.76) / 3) and s["acc_balanced"] == pytest.approx(0.87)
    assert s["r"] == pytest.approx(correlation(skews[3:8], accs[3:8])) and s["r"] < -0.95
    assert summarize(skews[:2], accs[:2], skip=3)["rounds"] is None  # a run still in its start: nothing to split
    assert correlation([1, 1, 1], [1, 2, 3]) is None and correlation([1, 2], [2, 1]) is None
    leaning = [0] * 3 + [1, 1, 0, 0, 1, 1]  # rounds 5 and 8 lean to class 1, round 7 to class 0
    assert summarize(skews, accs, 0.2, 3, 8, leaning)["by_class"] == {
        0: (1, pytest.approx(0.72)), 1: (2, pytest.approx((0.74 + 0.76) / 2))}


def test_a_round_leans_to_the_class_its_clients_over_represent():
    table = label_table([[0] * 90 + [1] * 10, [0] * 10 + [1] * 90, [0] * 50 + [1] * 50, [0] * 50 + [1] * 50], 2)
    leaning = replay_leaning(table, 0.25, 7, 20)  # one client a round
    skews = replay(table, 0.25, 7, 20)
    for rnd, (lean, skew) in enumerate(zip(leaning, skews), 1):
        (pid,) = seeded_sample(list(range(4)), 0.25, 7, rnd)
        assert skew == pytest.approx({0: 0.4, 1: 0.4}.get(pid, 0.0))
        if pid in (0, 1):
            assert lean == pid


def _stored_run(root: Path, sst2_dir: Path, name: str, seed: int, accs: list[float]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "run_config.json").write_text(json.dumps({
        "data-dir": str(sst2_dir), "dataset": "sst2", "num-server-rounds": len(accs), "fraction-train": 0.5,
        "partitioner": "dirichlet", "dirichlet-alpha": 0.5, "method": "pafi", "seed": seed,
        "output-dir": "/elsewhere/" + name}))
    history = [{"round": 0, "accuracy": 0.5, "sampled": 10}] + [{"round": i, "accuracy": a}
                                                               for i, a in enumerate(accs, 1)]
    (folder / "history.json").write_text(json.dumps(history))
    return folder


def test_a_stored_run_on_real_sst2_is_replayed(tmp_path, sst2_dir, capsys):
    """A history whose accuracy falls exactly as its rounds' label mix skews reads r = -1.00, from the real
    partition of SST-2 that the seed gives (the same for every method run with it)."""
    from shared.data import load_splits, partition

    train = load_splits("sst2", str(sst2_dir))["train"]
    table = label_table([partition(train, 10, i, "dirichlet", 0.5, 43)["label"] for i in range(10)], 2)
    assert table.sum() == len(train)
    skews = replay(table, 0.5, 43, 30)
    _stored_run(tmp_path, sst2_dir, "pafi-s43", 43, [0.9 - s for s in skews])
    _stored_run(tmp_path, sst2_dir, "other-s43", 43, [0.8] * 30)
    main([str(tmp_path), "--only", "pafi-*"])
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| pafi-s43 |")][0].split(" | ")
    skewed = int(np.sum(np.array(skews[10:]) > 0.2))
    assert row[1:4] == ["43", "11-30", str(skewed)] and row[-2] == "-1.00"
    assert row[-1].startswith(("negative", "positive"))  # the skewed rounds, by the class they lean to
    assert "other-s43" not in out


def test_bad_input_stops_in_one_line(tmp_path, sst2_dir):
    with pytest.raises(SystemExit, match="is not a folder of runs"):
        main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="no stored run .* matches --only"):
        main([str(tmp_path), "--only", "pafi-*"])
    with pytest.raises(SystemExit, match="--skew must be in"):
        main([str(tmp_path), "--skew", "1.5"])
    _stored_run(tmp_path, sst2_dir, "pafi-s1", 1, [0.8] * 12)
    with pytest.raises(SystemExit, match="round_mix: pafi-s1: .*"):
        main([str(tmp_path), "--data-dir", str(tmp_path / "no-data")])
