"""Run config: the pyproject defaults parse, bad values give one-line errors that name the key."""

from __future__ import annotations

import tomllib

import pytest

from shared.config import ConfigError, RunConfig, parse_run_config


def test_pyproject_defaults_match_runconfig(repo_root):
    conf = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg = parse_run_config(conf)
    assert cfg.method == "pafi" and cfg.mask_density == 0.005 and cfg.value_dtype == "float32"
    defaults = RunConfig()
    for key in conf:
        name = key.replace("-", "_")
        if hasattr(defaults, name):
            assert getattr(cfg, name) == getattr(defaults, name), key


@pytest.mark.parametrize("conf,key", [
    ({"mask-density": 2.0}, "mask-density"),
    ({"value-dtype": "float64"}, "value-dtype"),
    ({"lr": "fast"}, "lr"),
    ({"partitioner": "shards"}, "partitioner"),
])
def test_bad_values_name_the_key(conf, key):
    with pytest.raises(ConfigError, match=key):
        parse_run_config(conf)


def test_unknown_keys_are_kept_for_methods():
    cfg = parse_run_config({"lora-rank": 4})
    assert cfg.option("lora-rank", 8) == 4 and cfg.option("lora-alpha", 16) == 16


def test_every_method_knob_is_declared_for_flwr_run(repo_root):
    """`flwr run --run-config k=v` refuses keys the app does not declare ("Invalid run configuration"):
    every knob the code reads with ``option(...)`` must have a default in [tool.flwr.app.config]."""
    import re
    import tomllib

    declared = set(tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    used = set()
    for pkg in ("shared", "server", "client"):
        for path in (repo_root / pkg).rglob("*.py"):
            used |= set(re.findall(r'option\((?:cfg, |self\.cfg, )?"([a-z0-9-]+)"', path.read_text()))
    assert {"hiwi-normalize", "lora-rank", "dsee-rank"} <= used
    assert not used - declared, f"declare these in pyproject.toml [tool.flwr.app.config]: {sorted(used - declared)}"
