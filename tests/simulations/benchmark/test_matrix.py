"""Preset expansion: matrix x runs, precedence of overrides, names, and the shipped presets."""

from __future__ import annotations

import pytest

from shared.settings import parse_run_config
from simulations.benchmark.lib.matrix import REPO, PresetError, build_runs, load_preset

ALL_METHODS = {"pafi", "magnitude", "random", "bitfit", "sam", "topk", "full", "lora", "dsee", "hiwi"}


def test_matrix_product_runs_and_precedence():
    doc = {"run-config": {"lr": 0.005, "num-server-rounds": 10, "data-dir": "../shared/data/sst2"},
           "matrix": {"method": ["pafi", "full"], "value-dtype": ["float32", "int8"]},
           "runs": [{"method": "lora", "value-dtype": "float16", "lr": 0.002}],
           "methods": {"full": {"lr": 3e-5}, "lora": {"lr": 1e-3, "lora-rank": 8}}}
    runs = {r.name: r.run_config for r in build_runs(doc, {"num-server-rounds": 3})}
    assert list(runs) == ["pafi-float32", "pafi-int8", "full-float32", "full-int8", "lora-float16-lr=0.002"]
    assert runs["pafi-int8"]["lr"] == 0.005 and runs["full-int8"]["lr"] == 3e-5
    assert runs["lora-float16-lr=0.002"]["lr"] == 0.002 and runs["lora-float16-lr=0.002"]["lora-rank"] == 8  # run > methods
    assert all(c["num-server-rounds"] == 3 for c in runs.values())  # -c beats everything
    assert runs["pafi-float32"]["data-dir"] == str((REPO / "../shared/data/sst2").resolve())


def test_names_carry_extra_keys_and_duplicates_are_refused():
    doc = {"runs": [{"method": "pafi", "value-dtype": "int8", "int8-block-size": 64}]}
    assert build_runs(doc, {})[0].name == "pafi-int8-int8-block-size=64"
    with pytest.raises(PresetError, match="both named"):
        build_runs({"runs": [{"method": "pafi"}, {"method": "pafi"}]}, {})
    with pytest.raises(PresetError, match="matrix"):
        build_runs({"run-config": {}}, {})


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(PresetError, match="ci"):
        load_preset("nope")


@pytest.mark.parametrize("name", ["ci", "quick", "full"])
def test_shipped_presets_parse_into_valid_run_configs(name):
    preset = load_preset(name)
    assert preset.runs and preset.target_score is not None
    for spec in preset.runs:
        cfg = parse_run_config(spec.run_config)  # every run-config is valid for the app
        assert cfg.seed == 42


@pytest.mark.parametrize("name", ["quick", "full"])
def test_quick_and_full_list_every_method_on_the_same_data(name):
    preset = load_preset(name)
    assert {s.run_config["method"] for s in preset.runs} == ALL_METHODS
    same = {"seed", "num-server-rounds", "partitioner", "dirichlet-alpha", "data-dir", "local-steps"}
    for key in same:
        assert len({str(s.run_config.get(key)) for s in preset.runs}) == 1, key
    dtypes = {s.run_config["value-dtype"] for s in preset.runs if s.run_config["method"] == "pafi"}
    assert {"float32", "float16", "int8"} <= dtypes


def test_full_preset_matches_the_issue_setting():
    preset = load_preset("full")
    cfg = preset.runs[0].run_config
    assert preset.simulation.num_supernodes == 10
    assert (cfg["partitioner"], cfg["dirichlet-alpha"], cfg["dataset"], cfg["mask-density"]) == \
        ("dirichlet", 0.5, "sst2", 0.005)
    assert cfg.get("model", "") == ""  # the bundled MiniLM


def test_paper_preset_keeps_its_store_of_record_in_docs(tmp_path):
    """The paper runs span sessions: their store is a committed folder, not outputs/ (which a fresh clone lacks)."""
    assert load_preset("paper").out == REPO / "docs" / "results" / "paper"
    assert load_preset("quick").out is None
    bad = tmp_path / "bad.toml"
    bad.write_text('out = 3\n[matrix]\nmethod = ["pafi"]\n')
    with pytest.raises(PresetError, match="'out' must be a folder path"):
        load_preset(str(bad))


def test_the_store_of_record_commits_what_a_resume_needs_and_not_the_dense_checkpoints():
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    runs = "docs/results/paper/runs"
    paths = [f"{runs}/{r}/{f}" for r in ("pafi-s42", "lora-s43") for f in
             ("history.json", "summary.json", "run_config.json", "run.log", "checkpoint.safetensors")]
    ignored = [f"{runs}/full-s42/checkpoint.safetensors", f"{runs}/full-iid-s42/checkpoint.safetensors",
               f"{runs}/topk-s42/checkpoint.safetensors", f"{runs}/pafi-s42/model/model.safetensors",
               f"{runs}/pafi-s42/delta.safetensors", f"{runs}/pafi-s42/.flwr/x"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths, *ignored], cwd=REPO, capture_output=True,
                         text=True).stdout.split()
    assert sorted(out) == sorted(ignored)


def test_ray_cpus_in_a_preset_is_checked(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('[simulation]\nray-cpus = 3\n[matrix]\nmethod = ["pafi"]\n')
    assert load_preset(str(good)).simulation.ray_cpus == 3
    bad.write_text('[simulation]\nray-cpus = -1\n[matrix]\nmethod = ["pafi"]\n')
    with pytest.raises(PresetError, match="ray-cpus must be an integer"):
        load_preset(str(bad))


def test_an_only_glob_that_selects_no_run_is_refused_before_any_work(tmp_path, capsys):
    """`--only pafi-d2` names a group whose runs are pafi-d2-s42...: it used to run nothing and exit 0."""
    from simulations.benchmark import benchmark
    from simulations.benchmark.benchmark import select_runs
    preset = load_preset("paper")
    assert [s.name for s in select_runs(preset, "pafi-d2-*")] == ["pafi-d2-s42"]
    assert [s.name for s in select_runs(preset, "pafi-s42, full-s4[23]")] == ["pafi-s42", "full-s42", "full-s43"]
    with pytest.raises(PresetError, match=r"--only 'pafi-d2' matches no run of preset paper: did you mean "
                                          r"pafi-d2-s42 or 'pafi-d2-\*'\?"):
        select_runs(preset, "pafi-s42,pafi-d2")
    assert benchmark.main(["--preset", "paper", "--out", str(tmp_path), "--only", "nope"]) == 2
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "--only 'nope' matches no run of preset paper: --list prints every run's name" in err.replace("\n", " ")
    assert not any(tmp_path.iterdir())


def test_the_paper_preset_lists_the_issue_runs():
    p = load_preset("paper")
    groups: dict[str, list[int]] = {}
    for r in p.runs:
        groups.setdefault(r.group, []).append(r.seed)
        assert r.run_config["partitioner"] in ("dirichlet", "iid") and r.run_config["dirichlet-alpha"] == 0.5
    for m in ("pafi", "full", "lora", "random", "magnitude", "bitfit"):
        assert len(groups[m]) == 3, m
    for m in ("sam", "topk", "dsee", "hiwi", "pafi-iid", "full-iid", "pafi-d2"):
        assert len(groups[m]) == 1, m
    dense = next(r for r in p.runs if r.group == "pafi-d2").run_config
    assert dense["mask-density"] == 0.02 and dense["method"] == "pafi" and dense["partitioner"] == "dirichlet"
    assert dense["lr"] == 0.005  # its own sweep (paper-lr), not pafi's 1e-2
    # the drift diagnostics: each one knob away from pafi's run-config
    pafi = next(r for r in p.runs if r.name == "pafi-s42").run_config
    for group, knobs in (("pafi-lr5e3", {"lr": 0.005}), ("pafi-bal", {"local-loss": "balanced"}),
                         ("pafi-avgm", {"aggregator": "fedavgm", "server-lr": 0.1, "server-momentum": 0.9})):
        (run,) = [r for r in p.runs if r.group == group]
        assert run.seed == 42 and {k: v for k, v in run.run_config.items() if pafi.get(k) != v} == knobs, group


def test_the_non_iid_preset_lists_the_issue_41_runs_in_papers_setting():
    p, paper = load_preset("non-iid"), load_preset("paper")
    assert p.out == REPO / "docs" / "results" / "non-iid"
    ref = {r.name: r.run_config for r in paper.runs}
    groups: dict[str, list[int]] = {}
    for r in p.runs:
        groups.setdefault(r.group, []).append(r.seed)
        parse_run_config(r.run_config)  # every run-config is valid for the app (drift knobs included)
    variants = {"plain": {}, "bal": {"local-loss": "balanced"}, "prox": {"prox-mu": None},
                "scaf": {"drift-correction": "scaffold"},
                "bal-scaf": {"local-loss": "balanced", "drift-correction": "scaffold"}}
    skews = {"a05": {}, "a01": {"dirichlet-alpha": 0.1}, "iid": {"partitioner": "iid"}}
    assert len(groups) == 2 * len(variants) * len(skews)
    for method in ("pafi", "full"):
        for skew, skew_knobs in skews.items():
            for variant, knobs in variants.items():
                group = f"{method}-{skew}-{variant}"
                many = skew != "iid" and variant in ("plain", "bal-scaf")
                assert groups[group] == ([42, 43, 44] if many else [42]), group
                run = next(r for r in p.runs if r.group == group and r.seed == 42).run_config
                base = ref[f"{method}-s42"]  # paper's run of record: everything else is its setting
                mu = {"prox-mu": {"pafi": 1e-3, "full": 0.1}[method]} if variant == "prox" else {}
                assert {k: v for k, v in run.items() if base.get(k) != v} == {**skew_knobs, **knobs, **mu}, group


def test_the_multitask_preset_pairs_the_federation_with_one_federation_per_task():
    """Issue 39: the same nodes per task, the same rounds, seeds and recipe; each single task on its own node count."""
    from shared.multitask import parse_tasks, task_config

    preset = load_preset("multitask")
    multi = next(s for s in preset.runs if s.run_config.get("tasks"))
    transfer = [s for s in preset.runs if s.run_config.get("num-server-rounds") == 10]
    held_out = next(s for s in preset.runs if s.name == "pafi-multitask-no-rte-s42")
    assert "rte" not in held_out.run_config["tasks"] and held_out.num_supernodes == 9
    assert {(bool(s.run_config.get("init-values")), s.run_config["freeze-values"]) for s in transfer} == {
        (True, True), (True, False), (False, True), (False, False)}
    assert all(s.run_config["init-values"].endswith("runs/pafi-multitask-no-rte-s42") for s in transfer
               if s.run_config.get("init-values"))
    cfg = parse_run_config(multi.run_config)
    slots = {slot.name: slot.count for slot in parse_tasks(cfg.tasks)}
    assert multi.num_supernodes is None and preset.simulation.num_supernodes == sum(slots.values())
    singles = {s.run_config["dataset"]: s for s in preset.runs
               if s is not multi and s is not held_out and s not in transfer}
    assert set(singles) == set(slots)
    for name, spec in singles.items():
        single = parse_run_config(spec.run_config)
        assert spec.num_supernodes == slots[name] and single.min_available_nodes <= slots[name]
        assert single.data_dir == task_config(cfg, name).data_dir  # the same folder the multi-task node reads
        for key in ("seed", "num-server-rounds", "lr", "local-steps", "batch-size", "max-length", "fraction-train",
                    "dirichlet-alpha", "max-eval-examples", "lr-schedule"):
            assert spec.run_config[key] == multi.run_config[key], (name, key)


def test_a_runs_own_num_supernodes_is_checked():
    assert build_runs({"runs": [{"method": "pafi", "num-supernodes": 3}]}, {})[0].num_supernodes == 3
    with pytest.raises(PresetError, match="'num-supernodes' must be an integer >= 1"):
        build_runs({"runs": [{"method": "pafi", "num-supernodes": 0}]}, {})


def test_the_decoder_preset_lists_the_issue_38_runs():
    preset = load_preset("decoder")
    cfgs = {s.name: parse_run_config(s.run_config) for s in preset.runs}
    assert all(c.model == "smollm2-135m" and c.dataset == "e2e" and c.max_eval_examples > 0 for c in cfgs.values())
    pafi = {(c.mask_density, c.partitioner) for c in cfgs.values() if c.method == "pafi"}
    assert pafi == {(d, p) for d in (0.001, 0.005, 0.02) for p in ("dirichlet", "iid")}
    lora = {(c.options["lora-rank"], c.partitioner) for c in cfgs.values() if c.method == "lora"}
    assert lora == {(r, p) for r in (8, 16) for p in ("dirichlet", "iid")}
    assert [c.partitioner for c in cfgs.values() if c.method == "full"] == ["dirichlet"]
