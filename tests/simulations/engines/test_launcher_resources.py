"""Launcher: client resources (CPUs, fractional GPUs) reach Flower's federation config; --ray-address reaches Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from flwr.supercore.utils import simulation_config_from_json

import simulations.engines.launcher as launcher
import simulations.engines.lib.superlink as superlink
from simulations.engines import federation_config


def test_fractional_gpus_reach_flowers_simulation_config():
    text = federation_config(8, cpus_per_client=1, gpus_per_client=0.25)
    sim = simulation_config_from_json(parse_config_args([text]))  # what `flwr run --federation-config` builds
    assert sim.num_supernodes == 8 and sim.client_resources_num_cpus == 1
    assert sim.client_resources_num_gpus == pytest.approx(0.25)
    assert not sim.HasField("init_args_num_cpus") and not sim.HasField("init_args_num_gpus")  # attachable
    assert "gpus" not in federation_config(8)  # no GPU asked for unless set


@pytest.mark.parametrize("cpus,gpus", [(0, 0.0), (1.5, 0.0), (1, -0.5)])
def test_bad_client_resources_are_refused_in_one_line(cpus, gpus, capsys):
    with pytest.raises(ValueError):
        federation_config(4, cpus, gpus)
    argv = ["--cpus-per-client", str(cpus), "--gpus-per-client", str(gpus)]
    if isinstance(cpus, float):
        with pytest.raises(SystemExit):  # argparse: an integer is required
            launcher.main(argv)
        return
    assert launcher.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsparse: error:") and "\n" not in err


class _Proc:
    pid, returncode = 0, None

    def poll(self):
        return None


@pytest.mark.parametrize("address", ["192.0.2.7:6379", None])
def test_ray_address_goes_to_the_superlinks_environment_only_when_asked(tmp_path, monkeypatch, address):
    seen = {}
    monkeypatch.setenv("RAY_ADDRESS", "stray:1")
    monkeypatch.setattr(superlink.subprocess, "Popen", lambda cmd, env, **kw: (seen.update(env=env), _Proc())[1])
    monkeypatch.setattr(superlink, "wait_port", lambda *a, **k: None)
    monkeypatch.setattr(superlink, "stop_tree", lambda *a, **k: None)
    with superlink.simulation_superlink(Path(tmp_path), ray_address=address):
        pass
    assert seen["env"].get("RAY_ADDRESS") == address


def test_ray_cpus_size_the_local_ray_and_are_checked():
    """3 one-CPU clients at once on 2 cores: a round of 5 sampled clients in two waves, not three."""
    sim = simulation_config_from_json(parse_config_args([federation_config(10, 1, ray_cpus=3)]))
    assert sim.init_args_num_cpus == 3 and sim.client_resources_num_cpus == 1
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="ray-cpus"):
            federation_config(10, 1, ray_cpus=bad)
    with pytest.raises(ValueError, match="ray-cpus"):
        federation_config(10, 2, ray_cpus=1)  # a client could never be placed


def test_ray_cpus_and_a_running_cluster_are_refused_together(capsys):
    assert launcher.main(["--ray-cpus", "3", "--ray-address", "192.0.2.7:6379"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsparse: error:") and "--ray-address" in err and "\n" not in err


def test_the_presets_timeout_reaches_the_launchers_flwr_run(tmp_path, monkeypatch):
    """A run of record may take hours: the preset's [simulation] timeout, not the launcher's 3600 s default, bounds
    it (a full-s42 run at 80 rounds was stopped at 3,600 s, round 64, before this was passed through)."""
    from rich.progress import Progress

    from simulations.benchmark import benchmark
    from simulations.benchmark.lib.matrix import load_preset

    preset = load_preset("paper")
    seen = {}

    class Done:
        pid, returncode = 0, 0

        def poll(self):
            return 0

    monkeypatch.setattr(benchmark.subprocess, "Popen", lambda cmd, **kw: (seen.update(cmd=cmd), Done())[1])
    monkeypatch.setattr(benchmark, "stop_tree", lambda *a, **k: None)
    with Progress(disable=True) as progress:
        benchmark.run_one(preset.runs[0], tmp_path / "run", preset, progress, progress.add_task("r", total=1), resume=False)
    cmd = seen["cmd"]
    assert float(cmd[cmd.index("--timeout") + 1]) == preset.simulation.timeout == 36000
    forwarded = {}
    monkeypatch.setattr(launcher, "preflight", lambda overrides, num_supernodes=None: None)
    monkeypatch.setattr(launcher, "run_simulation", lambda *a, **kw: forwarded.update(kw) or 0)
    assert launcher.main(cmd[cmd.index("--num-supernodes"):]) == 0
    assert forwarded["timeout"] == 36000


def test_a_bad_timeout_is_refused_in_one_line(capsys):
    assert launcher.main(["--timeout", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsparse: error:") and "--timeout" in err and "\n" not in err


def test_make_run_trains_with_the_apps_own_defaults_as_a_plain_flwr_run_does():
    """One set of defaults: `make run` passes the launcher the data folder and the output folder only (and whatever
    RUN_CONFIG adds), so it trains with pyproject's [tool.flwr.app.config], which is what a plain `flwr run .` reads,
    and that block is the declared defaults (tests/shared/test_config.py checks it is generated from them)."""
    import re
    import tomllib

    from shared.settings import declared_defaults
    from simulations.engines import REPO

    recipe = re.search(r"^run: install\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    configs = re.findall(r'-c "([^"]*)"', recipe)
    assert len(configs) == 1, configs
    keys = re.findall(r"([a-z-]+)=", configs[0])
    assert keys == ["data-dir", "output-dir"] and configs[0].rstrip().endswith("$(RUN_CONFIG)"), configs
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert {k: app[k] for k in declared_defaults()} == declared_defaults()
