"""The report's gaps paired seed by seed: per-seed gaps, their confidence interval, and how the target checks
quote them (accuracy, ordering, bytes, plateau)."""

from __future__ import annotations

import json
import math

import pytest

from simulations.benchmark.lib.report import write_report
from simulations.benchmark.lib.seeds import group_rows, paired
from simulations.benchmark.lib.targets import check_targets
from tests.simulations.benchmark.test_seeds import _run


def test_a_check_over_groups_made_on_different_seeds_names_them():
    """pafi on seeds 42 and 43 against random and magnitude on 42 alone: seed 43 is harder for every method, so the
    means differ by the seeds as much as by the masks; each check that compares such groups names their seeds."""
    pafi = [_run("pafi", 42, [0.86] * 12), _run("pafi", 43, [0.82] * 12)]
    full = [_run("full", 42, [0.88] * 12), _run("full", 43, [0.86] * 12)]
    rand, mag = [_run("random", 42, [0.87] * 12)], [_run("magnitude", 42, [0.85] * 12)]
    checks = {c["target"]: c for c in check_targets(group_rows(pafi + full + rand + mag, full[0], None))}
    assert checks["final accuracy vs full"]["measured"] == (  # same seeds: the gap paired seed by seed too
        "-3.00 pts (pafi 84.00 ± 2.83 (2 seeds)); paired over seeds 42/43: -3.00 ± 1.41 (95 % CI -15.71 … +9.71),"
        " 0/2 seeds within 1.0, the CI holds -1.0: not separated")
    assert checks["mask ordering (final accuracy)"]["measured"] == (  # the measured relation, not the required one
        "pafi 84.00 ± 2.83 (2 seeds) < random 87.00 > magnitude 85.00"
        " [seeds differ: pafi-float32 42/43, random-float32 42, magnitude-float32 42]")
    rand.append(_run("random", 43, [0.83] * 12))
    mag.append(_run("magnitude", 43, [0.81] * 12))
    checks = check_targets(group_rows(pafi + full + rand + mag, full[0], None))
    assert checks and not [c for c in checks if "seeds differ" in c["measured"]]


def test_gaps_are_paired_seed_by_seed_on_the_seeds_both_groups_ran():
    """Seed 43 is harder for both methods: unpaired, pafi's and full's spreads (± 2.8 pts) swamp a gap that is the
    same 1-3 pts on every seed; paired, the partition cancels and the gap's own spread is left."""
    pafi = [_run("pafi", 42, [0.80] * 9 + [0.86]), _run("pafi", 43, [0.78] * 9 + [0.82]),
            _run("pafi", 44, [0.80] * 9 + [0.84])]
    full = [_run("full", 42, [0.80] * 9 + [0.88]), _run("full", 43, [0.80] * 9 + [0.85])]
    rows = {r["name"]: r for r in group_rows(pafi + full, full[0], None)}
    p = paired(rows["pafi-float32"], rows["full-float32"])
    assert p["seeds"] == [42, 43] and p["gaps"] == pytest.approx([-0.02, -0.03])  # seed 44: full has none
    assert p["mean"] == pytest.approx(-0.025) and p["std"] == pytest.approx(math.sqrt(2) * 0.005)
    half = 12.706 * p["std"] / math.sqrt(2)  # Student's t, 1 degree of freedom
    assert p["ci95"] == pytest.approx((-0.025 - half, -0.025 + half)) and p["ahead"] == 0
    tail = paired(rows["pafi-float32"], rows["full-float32"], "tail")  # mean of the 10 rounds
    assert tail["gaps"] == pytest.approx([(0.86 - 0.88) / 10, 0.9 * (0.78 - 0.80) + (0.82 - 0.85) / 10])
    one = paired(rows["pafi-float32"], group_rows([full[0]], full[0], None)[0])
    assert one["seeds"] == [42] and one["ci95"] is None
    other = group_rows([_run("full", 7, [0.9] * 10)], None, None)[0]
    assert paired(rows["pafi-float32"], other) is None  # no seed in common: nothing to pair


def test_the_report_has_a_paired_table_for_the_comparisons_that_share_seeds(tmp_path):
    runs = ([_run("pafi", s, [0.8] * 9 + [a]) for s, a in ((1, 0.84), (2, 0.80), (3, 0.86))]
            + [_run("full", s, [0.8] * 9 + [a]) for s, a in ((1, 0.86), (2, 0.83), (3, 0.87))]
            + [_run("random", s, [0.8] * 9 + [a]) for s, a in ((1, 0.85), (2, 0.78))]
            + [_run("magnitude", 1, [0.8] * 9 + [0.83])]
            + [_run("pafi", 1, [0.85] * 10, partitioner="iid", group="pafi-iid")])
    write_report(tmp_path, runs, target=0.84)
    md = (tmp_path / "results.md").read_text()
    table = md.split("## Paired over seeds")[1].split("## Every run")[0]
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if " − " in line}
    # pafi − full: gaps -2, -3, -1 → mean -2.00, std 1.00, half-width 4.303 × 1 / √3 = 2.48
    assert lines["pafi-float32 − full-float32"].startswith(
        "| pafi-float32 − full-float32 | 1/2/3 | -2.00 / -3.00 / -1.00 | -2.00 ± 1.00 (95 % CI -4.48 … +0.48) |")
    assert lines["pafi-float32 − full-float32"].endswith("| 0/3 / 0/3 |")
    assert lines["pafi-float32 − random-float32"].split(" | ")[1:3] == ["1/2", "-1.00 / +2.00"]
    assert "random-float32 − magnitude-float32" not in lines  # one seed in common: no spread to give
    assert not [k for k in lines if "pafi-iid" in k]  # no full-iid to pair the IID control with
    checks = {c["target"]: c for c in json.loads((tmp_path / "results.json").read_text())["targets"]}
    assert checks["final accuracy vs full"]["measured"].endswith(
        "; paired over seeds 1/2/3: -2.00 ± 1.00 (95 % CI -4.48 … +0.48), 0/3 seeds within 1.0, the CI holds -1.0:"
        " not separated")
    order = checks["mask ordering (final accuracy)"]["measured"]
    assert "; pafi − random paired over seeds 1/2: +0.50 ± 2.12" in order
    assert "1/2 seeds pafi ahead, the CI holds 0: not separated" in order  # met on the means, not separated


def test_a_gap_whose_interval_clears_the_line_is_called_separated():
    pafi = [_run("pafi", s, [0.8] * 9 + [a]) for s, a in ((1, 0.80), (2, 0.82), (3, 0.84))]
    full = [_run("full", s, [0.8] * 9 + [a]) for s, a in ((1, 0.83), (2, 0.85), (3, 0.87))]  # 3 pts on every seed
    rand = [_run("random", s, [0.8] * 9 + [a]) for s, a in ((1, 0.79), (2, 0.81), (3, 0.825))]
    mag = [_run("magnitude", s, [0.8] * 9 + [a]) for s, a in ((1, 0.70), (2, 0.72), (3, 0.74))]
    checks = {c["target"]: c for c in check_targets(group_rows(pafi + full + rand + mag, full[0], None))}
    assert checks["final accuracy vs full"]["measured"].endswith("0/3 seeds within 1.0, the CI lies below -1.0")
    order = checks["mask ordering (final accuracy)"]["measured"]
    assert "3/3 seeds pafi ahead, the CI lies above 0" in order and "3/3 seeds random ahead, the CI lies above 0" in order


def test_the_plateau_check_gives_the_gain_over_seeds_with_its_confidence_interval():
    """Gains of +1, +0 and +2 pts over three seeds: mean +1.00, std 1.00, 95 % CI ± 4.303 / √3 = ± 2.48."""
    flat = [0.80] * 8
    runs = [_run("pafi", s, flat[:6] + [0.80 + g] * 2) for s, g in ((1, 0.01), (2, 0.0), (3, 0.02))]
    checks = [c for c in check_targets(group_rows(runs, None, None)) if c["target"].startswith("plateau")]
    assert checks[0]["measured"] == ("+1.00 pts ± 1.00 (3 seeds, 95 % CI -1.48 … +3.48): mean of the last 2 rounds"
                                     " − the 2 before")
    assert not checks[0]["met"]


def test_bytes_to_the_target_are_also_compared_seed_by_seed_as_a_geometric_mean():
    from simulations.benchmark.lib.seeds import paired_ratio
    # pafi reaches 0.80 in round 1 on seed 1 and round 3 on seed 2; lora in round 3 on both (300 kB × 4 per round)
    pafi = [_run("pafi", 1, [0.80, 0.8, 0.8]), _run("pafi", 2, [0.7, 0.7, 0.8])]
    lora = [_run("lora", 1, [0.7, 0.7, 0.8]), _run("lora", 2, [0.7, 0.7, 0.8])]
    rows = {r["method"]: r for r in group_rows(pafi + lora, None, 0.80)}
    p = paired_ratio(rows["pafi"], rows["lora"])
    assert p["seeds"] == [1, 2] and p["ratios"] == pytest.approx([9.0, 3.0]) and p["geomean"] == pytest.approx(27 ** 0.5)
    check = [c for c in check_targets(list(rows.values())) if c["target"] == "bytes to target vs lora-float32"][0]
    assert check["measured"] == ("4.5× (3.60 vs 0.80 MB, 2/2 seeds reached it); paired over seeds 1/2: 9.00× / 3.00×,"
                                 " geometric mean 5.20×, 2/2 seeds ≥ 2×")


def test_a_seed_on_which_only_one_method_reached_the_target_is_named_not_averaged_away():
    pafi = [_run("pafi", s, [0.7, 0.8, 0.8]) for s in (1, 2, 3)]
    lora = [_run("lora", 1, [0.7, 0.8, 0.8]), _run("lora", 2, [0.7, 0.7, 0.8]), _run("lora", 3, [0.7, 0.7, 0.7])]
    rows = {r["method"]: r for r in group_rows(pafi + lora, None, 0.80)}
    check = [c for c in check_targets(list(rows.values())) if c["target"] == "bytes to target vs lora-float32"][0]
    assert "3/3 seeds reached it; lora: 2/3 seeds reached it, its MB are their mean)" in check["measured"]
    assert check["measured"].endswith("geometric mean 3.67×, 2/2 seeds ≥ 2×; seed 3: only pafi reached it")
