"""The report over seeds on fabricated histories: means, stds, bands, MB to target, target checks on the means;
the preset's seeds expand into one run per seed; a stopped run resumes from its checkpoint."""

from __future__ import annotations

import csv
import json
import math

import pytest

from simulations.benchmark.benchmark import StaleResultError, can_extend, can_resume, is_done
from simulations.benchmark.lib.matrix import PresetError, RunSpec, load_preset
from simulations.benchmark.lib.plots import write_plots
from simulations.benchmark.lib.report import RunResult, pick_reference, write_report
from simulations.benchmark.lib.seeds import band, group_rows, mean_std, plateau_gain, tail_score
from simulations.benchmark.lib.targets import check_targets

N = 22_713_216
PER_ROUND = {"full": 90_000_000, "pafi": 100_000, "lora": 300_000, "random": 100_000, "magnitude": 100_000}


def _run(method: str, seed: int, accs: list[float], partitioner: str = "dirichlet", group: str = "") -> RunResult:
    b = PER_ROUND[method]
    history = [{"round": 0, "accuracy": 0.5, "bytes_up": 0, "bytes_down": 0}]
    history += [{"round": i, "accuracy": a, "bytes_up": 2 * b, "bytes_down": 2 * b} for i, a in enumerate(accs, 1)]
    summary = {"method": method, "value_dtype": "float32", "mask_density": 0.005, "num_params": N,
               "num_trainable": 54_000, "bytes_up_per_client_round": b, "bytes_down_per_client_round": b,
               "dense_bytes_per_client_round": 4 * N, "final_accuracy": accs[-1], "rounds": len(accs),
               "seconds_per_round": 5.0}
    group = group or f"{method}-float32"
    return RunResult(f"{group}-s{seed}", summary, history, group, {"seed": seed, "partitioner": partitioner})


@pytest.fixture()
def runs() -> list[RunResult]:
    return [
        _run("pafi", 1, [0.70, 0.80, 0.84]), _run("pafi", 2, [0.60, 0.82, 0.86]), _run("pafi", 3, [0.65, 0.75, 0.79]),
        _run("full", 1, [0.80, 0.85, 0.85]), _run("full", 2, [0.78, 0.84, 0.87]),
        _run("lora", 1, [0.60, 0.70, 0.80]),
        _run("random", 1, [0.6, 0.7, 0.80]), _run("random", 2, [0.6, 0.7, 0.78]),
        _run("magnitude", 1, [0.6, 0.7, 0.75]),
        _run("pafi", 1, [0.85, 0.86, 0.88], partitioner="iid", group="pafi-iid"),
    ]


def test_mean_std_is_the_sample_spread():
    assert mean_std([]) == (None, None)
    assert mean_std([0.8]) == (0.8, 0.0)
    mean, std = mean_std([0.84, 0.86, 0.79])
    assert mean == pytest.approx(0.83) and std == pytest.approx(math.sqrt((0.01 ** 2 + 0.03 ** 2 + 0.04 ** 2) / 2))


def test_group_rows_fold_seeds(runs):
    rows = {r["name"]: r for r in group_rows(runs, pick_reference(runs), target=0.84)}
    pafi, full = rows["pafi-float32"], rows["full-float32"]
    assert pafi["seeds"] == 3 and pafi["seed_list"] == [1, 2, 3]
    assert pafi["final_score"] == pytest.approx(0.83) and pafi["final_std"] == pytest.approx(mean_std([0.84, 0.86, 0.79])[1])
    assert pafi["best_score"] == pytest.approx(0.83)  # best of each seed: 0.84, 0.86, 0.79
    assert full["final_score"] == pytest.approx(0.86) and full["best_score"] == pytest.approx(0.86)
    assert pafi["score_vs_reference"] == pytest.approx(0.83 - 0.86)
    # target 0.84: seeds 1 and 2 reach it in round 3 (4 messages of 100 kB per round: 1.2 MB); seed 3 never does
    assert pafi["reached"] == 2 and pafi["bytes_to_target"] == pytest.approx(1.2e6) and pafi["round_to_target"] == 3
    assert full["reached"] == 2 and full["bytes_to_target"] == pytest.approx(2 * 4 * 9e7)  # both in round 2
    assert pafi["reduction_up"] == pytest.approx(900.0) and pafi["bytes_up_per_client_round"] == 100_000
    assert rows["pafi-iid"]["seeds"] == 1 and rows["pafi-iid"]["final_std"] == 0.0
    assert rows["pafi-iid"]["partitioner"] == "iid"


def test_band_is_mean_and_std_per_round(runs):
    b = band([r for r in runs if r.group == "pafi-float32"])
    assert b["round"] == [0, 1, 2, 3]
    assert b["mean"][1] == pytest.approx(0.65) and b["std"][1] == pytest.approx(0.05)
    assert b["std"][0] == 0.0 and b["mb"][3] == pytest.approx(1.2)
    short = _run("pafi", 4, [0.7, 0.8])  # a run with fewer rounds: only the rounds every run has
    assert band([runs[0], short])["round"] == [0, 1, 2]


def test_target_checks_are_made_on_the_means(tmp_path, runs):
    write_report(tmp_path, runs, target=0.84)
    data = json.loads((tmp_path / "results.json").read_text())
    checks = {t["target"]: t for t in data["targets"]}
    acc = checks["final accuracy vs full"]
    assert acc["run"] == "pafi-float32" and not acc["met"]  # mean 83.00 vs 86.00: -3 pts
    assert acc["measured"].startswith("-3.00 pts (pafi 83.00 ± 3.61 (3 seeds))")
    full = checks["bytes to target vs full-float32"]
    assert full["met"] and full["measured"].startswith("600.0× (720.00 vs 1.20 MB") and "2/3 seeds reached it" in full["measured"]
    # seed by seed on the seeds both reached it (seed 3 of pafi never did): 600× on each
    assert "; paired over seeds 1/2: 600.0× / 600.0×, geometric mean 600.0×, 2/2 seeds ≥ 500×" in full["measured"]
    lora = checks["bytes to target vs lora-float32"]
    assert lora["met"] is False or lora["met"] is True  # present
    order = checks["mask ordering (final accuracy)"]
    assert order["met"] and order["measured"].startswith("pafi 83.00 ± 3.61 (3 seeds) > random 79.00 ± 1.41 (2 seeds)")
    assert all(t["run"] != "pafi-iid" for t in data["targets"])  # the IID control is not checked against non-IID full
    md = (tmp_path / "results.md").read_text()
    assert "## Over seeds" in md and "| pafi-float32 | 3 |" in md and "83.00 ± 3.61" in md and "| 2/3 |" in md
    with open(tmp_path / "groups.csv") as fh:
        assert [r["name"] for r in csv.DictReader(fh)][:2] == ["pafi-float32", "full-float32"]
    paths = write_plots(tmp_path, runs, 0.84)
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_reference_prefers_the_non_iid_full_run(runs):
    iid_full = _run("full", 1, [0.9, 0.9, 0.9], partitioner="iid", group="full-iid")
    assert pick_reference([iid_full] + runs).group == "full-float32"


def test_preset_seeds_expand_into_one_run_per_seed(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('seeds = [1, 2, 3]\n[run-config]\nlr = 0.01\n[matrix]\nmethod = ["pafi", "sam"]\n'
                    '[methods.sam]\nseeds = [1]\n[[runs]]\nname = "pafi-iid"\nmethod = "pafi"\npartitioner = "iid"\n'
                    'seeds = [7]\n')
    p = load_preset(str(path))
    assert [(r.name, r.group, r.seed) for r in p.runs] == [
        ("pafi-s1", "pafi", 1), ("pafi-s2", "pafi", 2), ("pafi-s3", "pafi", 3), ("sam-s1", "sam", 1),
        ("pafi-iid-s7", "pafi-iid", 7)]
    assert p.runs[1].run_config["seed"] == 2 and "seeds" not in p.runs[3].run_config
    path.write_text('seeds = [1, 1]\n[matrix]\nmethod = ["pafi"]\n')
    with pytest.raises(PresetError, match="distinct"):
        load_preset(str(path))


def test_a_stopped_run_resumes_only_with_its_own_config(tmp_path):
    spec = RunSpec("pafi-s1", {"method": "pafi", "seed": 1})
    run_dir = tmp_path / "pafi-s1"
    run_dir.mkdir()
    assert not can_resume(spec, run_dir)
    (run_dir / "run_config.json").write_text(json.dumps({"method": "pafi", "seed": 1, "output-dir": "x"}))
    (run_dir / "history.json").write_text("[]")
    (run_dir / "checkpoint.safetensors").write_bytes(b"x")
    assert can_resume(spec, run_dir)
    assert not can_resume(RunSpec("pafi-s1", {"method": "pafi", "seed": 2}), run_dir)


def test_a_finished_run_is_extended_when_the_preset_asks_for_more_rounds(tmp_path):
    run_dir = tmp_path / "pafi-s1"
    run_dir.mkdir()
    stored = {"method": "pafi", "seed": 1, "num-server-rounds": 40, "output-dir": "x"}
    (run_dir / "run_config.json").write_text(json.dumps(stored))
    (run_dir / "history.json").write_text("[]")
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "checkpoint.safetensors").write_bytes(b"x")
    same = RunSpec("pafi-s1", {"method": "pafi", "seed": 1, "num-server-rounds": 40})
    longer = RunSpec("pafi-s1", {"method": "pafi", "seed": 1, "num-server-rounds": 80})
    assert is_done(same, run_dir) and not can_extend(same, run_dir)
    assert can_extend(longer, run_dir) and not is_done(longer, run_dir) and can_resume(longer, run_dir)
    for other in ({"method": "pafi", "seed": 1, "num-server-rounds": 20},  # fewer rounds: not a continuation
                  {"method": "pafi", "seed": 1, "num-server-rounds": 80, "lr": 0.1}):  # another setting too
        assert not can_extend(RunSpec("pafi-s1", other), run_dir)
        with pytest.raises(StaleResultError, match="different config"):
            is_done(RunSpec("pafi-s1", other), run_dir)
    (run_dir / "checkpoint.safetensors").unlink()  # no checkpoint (full's is not committed): nothing to continue from
    assert not can_extend(longer, run_dir)
    with pytest.raises(StaleResultError, match=r"holds 40 rounds of pafi-s1, the preset asks for 80, .*"
                                               r"--rerun --only pafi-s1 makes it again from round 1"):
        is_done(longer, run_dir)


def test_a_finished_run_is_annealed_when_the_preset_adds_a_decay_over_new_rounds(tmp_path):
    run_dir = tmp_path / "pafi-s1"
    run_dir.mkdir()
    (run_dir / "run_config.json").write_text(json.dumps({"method": "pafi", "num-server-rounds": 4, "output-dir": "x"}))
    (run_dir / "history.json").write_text(json.dumps([{"round": r, "accuracy": 0.5} for r in range(5)]))
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "checkpoint.safetensors").write_bytes(b"x")
    annealed = {"method": "pafi", "num-server-rounds": 6, "lr-schedule": "cosine", "lr-decay-rounds": 2}
    assert can_extend(RunSpec("pafi-s1", annealed), run_dir) and can_resume(RunSpec("pafi-s1", annealed), run_dir)
    longer_decay = RunSpec("pafi-s1", {**annealed, "lr-decay-rounds": 3})  # would lower round 4, already made
    assert not can_extend(longer_decay, run_dir)
    with pytest.raises(StaleResultError, match="would change the rates of rounds already made"):
        is_done(longer_decay, run_dir)
    (run_dir / "checkpoint.safetensors").rename(run_dir / "gone")  # not committed (full's): nothing to continue from
    with pytest.raises(StaleResultError, match=r"holds 4 rounds of pafi-s1, the preset asks for 6, .*--rerun"):
        is_done(RunSpec("pafi-s1", annealed), run_dir)
    (run_dir / "gone").rename(run_dir / "checkpoint.safetensors")
    with pytest.raises(StaleResultError, match="would change the rates"):  # a decay over the rounds already made
        is_done(RunSpec("pafi-s1", {"method": "pafi", "num-server-rounds": 4, "lr-schedule": "linear"}), run_dir)
    # a preset that now pins what the run ran with (its settings.json, else the default of its time) is the same run
    assert is_done(RunSpec("pafi-s1", {"method": "pafi", "num-server-rounds": 4, "lr-schedule": "constant"}), run_dir)
    (run_dir / "settings.json").write_text(json.dumps({"lr-schedule": "linear"}))  # it ran with another value
    with pytest.raises(StaleResultError, match="different config"):
        is_done(RunSpec("pafi-s1", {"method": "pafi", "num-server-rounds": 4, "lr-schedule": "constant"}), run_dir)
    with pytest.raises(StaleResultError, match="different config"):  # another value of a key: not the same run
        is_done(RunSpec("pafi-s1", {"method": "pafi", "num-server-rounds": 4, "seed": 7}), run_dir)


def test_a_run_with_an_lr_decay_is_judged_on_its_plateau_before_the_decay():
    accs = [0.85, 0.86, 0.85, 0.86, 0.85, 0.86, 0.85, 0.86] + [0.88, 0.89, 0.90, 0.90]  # 8 rounds flat, 4 of decay
    annealed = _run("pafi", 1, accs)
    annealed.config.update({"num-server-rounds": 12, "lr-schedule": "cosine", "lr-decay-rounds": 4})
    assert plateau_gain(annealed.history)[0] == pytest.approx(sum(accs[-3:]) / 3 - sum(accs[-6:-3]) / 3)  # all 12
    row = group_rows([annealed], None, target=None)[0]
    assert row["plateau_gain"] == pytest.approx(0.0) and row["plateau_window"] == 2  # rounds 7-8 against 5-6
    assert row["tail_score"] == pytest.approx(sum(accs[-10:]) / 10)  # the tail still includes the decay


def test_an_extension_stopped_part_way_reads_as_stopped_not_done(tmp_path, monkeypatch):
    from rich.progress import Progress

    from simulations.benchmark import benchmark
    from simulations.benchmark.lib.matrix import Preset, Simulation

    run_dir = tmp_path / "pafi-s1"
    run_dir.mkdir()
    (run_dir / "run_config.json").write_text(json.dumps({"method": "pafi", "num-server-rounds": 4, "output-dir": "x"}))
    (run_dir / "history.json").write_text(json.dumps([{"round": r, "accuracy": 0.5} for r in range(5)]))
    (run_dir / "summary.json").write_text(json.dumps({"rounds": 4}))
    (run_dir / "checkpoint.safetensors").write_bytes(b"x")
    longer = RunSpec("pafi-s1", {"method": "pafi", "num-server-rounds": 6})

    class Stopped:  # the launcher stopped after round 5 of 6 (SIGTERM, a session's end)
        pid, returncode = 0, 124

        def poll(self):
            (run_dir / "history.json").write_text(json.dumps([{"round": r, "accuracy": 0.5} for r in range(6)]))
            return 124

    monkeypatch.setattr(benchmark.subprocess, "Popen", lambda cmd, **kw: Stopped())
    monkeypatch.setattr(benchmark, "stop_tree", lambda *a, **k: None)
    with Progress(disable=True) as progress:
        assert benchmark.run_one(longer, run_dir, Preset("p", "", None, Simulation()), progress, progress.add_task("r", total=1), resume=True) == 124
    assert not (run_dir / "summary.json").exists()  # the 4-round summary no longer describes the run
    assert not is_done(longer, run_dir) and can_resume(longer, run_dir)


def test_plateau_gain_compares_the_last_quarter_with_the_one_before():
    climbing = _run("pafi", 1, [0.60 + 0.01 * i for i in range(8)])  # +1 pt a round
    flat = _run("pafi", 2, [0.70, 0.80, 0.84, 0.85, 0.86, 0.85, 0.86, 0.85])
    assert plateau_gain(climbing.history) == (pytest.approx(0.02), 2)  # rounds 7-8 vs 5-6
    assert plateau_gain(flat.history)[0] == pytest.approx(0.855 - 0.855)
    assert plateau_gain(flat.history, window=4)[0] == pytest.approx(0.855 - 0.7975)
    assert plateau_gain(_run("pafi", 3, [0.7]).history) == (None, 1)  # one round: too short to tell
    rows = {r["name"]: r for r in group_rows([climbing, flat, _run("full", 1, [0.8] * 8)], None, target=None)}
    assert rows["pafi-float32"]["plateau_gain"] == pytest.approx(0.01)  # mean of +2 and 0 pts
    assert rows["pafi-float32"]["plateau_std"] == pytest.approx(math.sqrt(2) * 0.01)
    checks = {c["run"]: c for c in check_targets(list(rows.values())) if c["target"].startswith("plateau")}
    assert checks["full-float32"]["met"] and checks["full-float32"]["measured"].startswith("+0.00 pts")
    assert not checks["pafi-float32"]["met"]  # +1.00 pt on the mean: still climbing
    assert "± 1.41 (2 seeds, 95 % CI -11.71 … +13.71): mean of the last 2 rounds − the 2 before" in checks["pafi-float32"]["measured"]


def test_a_stored_run_reads_the_same_data_at_another_path(tmp_path):
    """A committed run store stays valid in a clone elsewhere: data-dir compares the files, not the path."""
    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here, there):
        folder.mkdir()
        (folder / "train.tsv").write_text("sentence\tlabel\na\t1\n")
        (folder / "test.tsv").write_text("sentence\tlabel\nb\t0\n")
    run_dir = tmp_path / "pafi-s1"
    run_dir.mkdir()
    (run_dir / "run_config.json").write_text(json.dumps({"method": "pafi", "data-dir": str(here), "output-dir": "x"}))
    (run_dir / "summary.json").write_text("{}")
    moved = RunSpec("pafi-s1", {"method": "pafi", "data-dir": str(there)})
    assert is_done(moved, run_dir)
    (there / "test.tsv").write_text("sentence\tlabel\nb\t1\n")  # other labels under the same name
    with pytest.raises(StaleResultError, match="data-dir"):
        is_done(moved, run_dir)
    with pytest.raises(StaleResultError, match="data-dir"):  # a folder that is gone is not the same data
        is_done(RunSpec("pafi-s1", {"method": "pafi", "data-dir": str(tmp_path / "gone")}), run_dir)


def test_the_last_ten_rounds_give_a_final_figure_one_noisy_round_does_not_move(tmp_path):
    """full's last round dips 2 points below its plateau: the final check reads the dip, the last-10 check the
    plateau; a run shorter than 10 rounds has no last-10 figure (– in the table, no check)."""
    pafi = [_run("pafi", s, [0.80] * 5 + [0.85] * 10) for s in (1, 2)]
    full = [_run("full", 1, [0.80] * 5 + [0.86] * 9 + [0.84])]
    rand = [_run("random", 1, [0.80] * 5 + [0.84] * 10)]
    mag = [_run("magnitude", 1, [0.80] * 5 + [0.83] * 10)]
    assert tail_score(full[0].history) == pytest.approx((9 * 0.86 + 0.84) / 10)
    assert tail_score(_run("pafi", 3, [0.8] * 9).history) is None
    rows = {r["name"]: r for r in group_rows(pafi + full + rand + mag, full[0], target=None)}
    assert rows["pafi-float32"]["tail_score"] == pytest.approx(0.85) and rows["pafi-float32"]["tail_std"] == 0.0
    assert rows["pafi-float32"]["tail_vs_reference"] == pytest.approx(0.85 - 0.858)
    checks = {c["target"]: c for c in check_targets(list(rows.values()))}
    assert checks["final accuracy vs full"]["met"] and checks["final accuracy vs full"]["measured"].startswith("+1.00 pts")
    tail = checks["last-10-round accuracy vs full"]
    assert tail["met"] and tail["measured"] == ("-0.80 pts (pafi 85.00 ± 0.00 (2 seeds)) "
                                                "[seeds differ: pafi-float32 1/2, full-float32 1]")
    order = checks["mask ordering (last-10-round accuracy)"]
    assert order["met"] and order["measured"].startswith("pafi 85.00 ± 0.00 (2 seeds) > random 84.00 > magnitude 83.00")
    write_report(tmp_path, pafi + full + rand + mag, target=None)
    md = (tmp_path / "results.md").read_text()
    assert "last-10 acc % (mean ± std)" in md and "| 85.00 ± 0.00 |" in md and "| 85.80 |" in md  # group and run tables
    short = [_run("pafi", 1, [0.8, 0.85]), _run("full", 1, [0.8, 0.86])]
    assert not [c for c in check_targets(group_rows(short, short[1], None)) if c["target"].startswith("last-10")]


def test_a_group_whose_seeds_ran_unequally_long_is_marked_and_its_checks_say_interim(tmp_path):
    """A preset extended from 12 to 14 rounds while one full seed still holds 12: full's row says 12/14 (mixed) and
    every check over it is marked interim; once the lengths agree the marks are gone."""
    pafi = [_run("pafi", 1, [0.80] * 14)]
    full = [_run("full", 1, [0.86] * 14), _run("full", 2, [0.84] * 12)]
    rows = {r["name"]: r for r in group_rows(pafi + full, full[0], target=None)}
    assert rows["full-float32"]["rounds"] == [12, 14] and rows["pafi-float32"]["rounds"] == [14]
    checks = check_targets(list(rows.values()))
    assert checks and all(c["measured"].endswith(" [interim: runs of 12/14 rounds]") for c in checks)
    write_report(tmp_path, pafi + full, target=None)
    md = (tmp_path / "results.md").read_text()
    assert "| full-float32 | 2 | 12/14 (mixed) |" in md and "| pafi-float32 | 1 | 14 |" in md
    with open(tmp_path / "groups.csv") as fh:
        assert {r["name"]: r["rounds"] for r in csv.DictReader(fh)} == {"pafi-float32": "14", "full-float32": "12/14"}
    full[1] = _run("full", 2, [0.84] * 14)
    assert not [c for c in check_targets(group_rows(pafi + full, full[0], None)) if "interim" in c["measured"]]


def test_a_pafi_run_at_another_density_is_an_ablation_in_the_table_not_a_target_check(tmp_path):
    pafi = [_run("pafi", 1, [0.80] * 12)]
    dense = _run("pafi", 1, [0.86] * 12, group="pafi-d2")
    dense.summary["mask_density"] = 0.02
    full = [_run("full", 1, [0.86] * 12)]
    rows = group_rows(pafi + [dense] + full, full[0], target=None)
    checks = check_targets(rows)
    assert {c["run"] for c in checks if "vs full" in c["target"]} == {"pafi-float32"}
    assert not [c for c in checks if "pafi-d2" in c["run"]]
    write_report(tmp_path, pafi + [dense] + full, target=None)
    md = (tmp_path / "results.md").read_text()
    assert "| pafi-d2-s1 | 54,000 |" in md and "pafi-d2" not in md.split("## Targets")[1]


def test_the_uplink_check_takes_the_same_density_rule_as_the_others():
    from simulations.benchmark.lib.targets import uplink_checks
    row = {"name": "pafi-float16", "method": "pafi", "value_dtype": "float16", "reduction_up": 900.0,
           "reduction_reference": "full-s1"}
    assert [c["met"] for c in uplink_checks([dict(row, mask_density=0.005)])] == [True]
    assert uplink_checks([dict(row, mask_density=0.02)]) == []  # an ablation: in the table, not checked
    assert len(uplink_checks([dict(row, mask_density=None)])) == 1  # unknown density counts as the target's, as in
    # the accuracy and ordering checks


def test_a_run_made_again_keeps_nothing_of_the_run_it_replaces(tmp_path, monkeypatch):
    """--rerun (or a fresh start over a stale folder): the old history, checkpoint and log go; a resume keeps its log."""
    from rich.progress import Progress

    from simulations.benchmark import benchmark
    from simulations.benchmark.lib.matrix import Preset, Simulation

    run_dir = tmp_path / "pafi-s1"
    run_dir.mkdir()
    (run_dir / "run_config.json").write_text(json.dumps({"method": "pafi", "lr": 0.01, "num-server-rounds": 4}))
    (run_dir / "history.json").write_text(json.dumps([{"round": r, "accuracy": 0.5} for r in range(3)]))
    (run_dir / "checkpoint.safetensors").write_bytes(b"x")
    (run_dir / "run.log").write_text("the old run at lr 0.01\n")
    again = RunSpec("pafi-s1", {"method": "pafi", "lr": 0.005, "num-server-rounds": 4})

    class Finished:
        pid, returncode = 0, 0

        def poll(self):
            return 0

    def launch(cmd, stdout, **kw):
        stdout.write(b"the new run\n")
        return Finished()

    monkeypatch.setattr(benchmark.subprocess, "Popen", launch)
    with Progress(disable=True) as progress:
        benchmark.run_one(again, run_dir, Preset("p", "", None, Simulation()), progress, progress.add_task("r", total=1),
                          resume=False)
    assert (run_dir / "run.log").read_text() == "the new run\n"
    assert not (run_dir / "history.json").exists() and not (run_dir / "checkpoint.safetensors").exists()


def test_the_report_names_the_command_that_makes_its_runs(tmp_path):
    """results.md is committed on its own (docs/results/paper): it says what made it and how many runs it holds."""
    from simulations.benchmark import benchmark
    preset_file = tmp_path / "p.toml"
    preset_file.write_text('seeds = [1, 2]\n[run-config]\nnum-server-rounds = 3\n[matrix]\nmethod = ["pafi"]\n')
    out = tmp_path / "out"
    args = ["--preset", str(preset_file), "--out", str(out), "-c", "lr=0.02 local-steps=5", "--ray-cpus", "3"]
    for seed, accs in ((1, [0.6, 0.7, 0.8]), (2, [0.6, 0.75, 0.82])):
        run = _run("pafi", seed, accs)
        (out / "runs" / f"pafi-s{seed}").mkdir(parents=True)
        (out / "runs" / f"pafi-s{seed}" / "summary.json").write_text(json.dumps(run.summary))
        (out / "runs" / f"pafi-s{seed}" / "history.json").write_text(json.dumps(run.history))
        if seed == 1:
            assert benchmark.main(args + ["--only", "pafi-s1", "--report-only"]) == 0
            command = (f"python -m simulations.benchmark --preset {preset_file} --out {out} "
                       f"-c 'lr=0.02 local-steps=5' --ray-cpus 3")  # --only and --report-only pick, they do not make
            assert (out / "results.md").read_text().splitlines()[2] == (
                f"1 of the preset's 2 runs, made by `{command}`: rerun it to make or resume the others (finished runs "
                f"are skipped); `--report-only` added rebuilds this page and the plots from the runs alone.")
            assert json.loads((out / "results.json").read_text())["command"] == command
    assert benchmark.main(args + ["--report-only"]) == 0
    assert (out / "results.md").read_text().splitlines()[2].startswith(f"All 2 runs of the preset, made by `{command}`;")
