"""Run config: every knob declared once, defaults in one place, bad values refused in one line at start."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from shared.config import ConfigError, RunConfig
from shared.knobs import knobs
from shared.methods import get_method, methods
from shared.settings import declared_defaults, parse_run_config


def test_pyproject_declares_exactly_the_knobs_of_the_settings_classes(repo_root):
    """[tool.flwr.app.config] is generated from the settings (`python -m shared.settings --toml`): same keys, same
    defaults; `flwr run --run-config k=v` refuses keys the app does not declare."""
    conf = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert conf == declared_defaults(), "regenerate the block with: python -m shared.settings --toml"
    cfg = parse_run_config(conf)
    assert cfg.method == "pafi" and cfg.mask_density == 0.005 and cfg.value_dtype == "float32"


def test_a_knob_in_two_settings_classes_has_one_default_and_type():
    seen: dict[str, object] = {}
    for m in methods().values():
        for key, (f, _) in knobs(m.settings).items():
            assert seen.setdefault(key, f.default) == f.default and type(seen[key]) is type(f.default), key


@pytest.mark.parametrize("conf,key", [
    ({"mask-density": 2.0}, "mask-density"),
    ({"value-dtype": "float64"}, "value-dtype"),
    ({"lr": "fast"}, "lr"),
    ({"partitioner": "shards"}, "partitioner"),
    ({"trim-fraction": 0.5}, "trim-fraction"),
    ({"server-beta2": 1.5}, "server-beta2"),
    ({"max-reply-mb": float("inf")}, "max-reply-mb"),
    ({"dp-clip-norm": -1.0}, "dp-clip-norm"),
    ({"aggregator": "krum"}, "aggregator"),
    ({"method": "pafii"}, "method"),
    ({"lora-rank": 0}, "lora-rank"),
    ({"sam-scheme": "sparse"}, "sam-scheme"),
    ({"hiwi-target": "gate"}, "hiwi-target"),
    ({"hiwi-normalize": "yes"}, "hiwi-normalize"),
    ({"dsee-prune-ratio": 1.0}, "dsee-prune-ratio"),
    ({"mask-seed": -1}, "mask-seed"),
    ({"fail-mode": "explode"}, "fail-mode"),
])
def test_bad_values_of_any_method_fail_at_start_in_one_line_naming_the_key(conf, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        parse_run_config(conf)
    assert "\n" not in str(err.value) and "got" in str(err.value)


def test_unknown_keys_are_refused_with_the_closest_valid_name():
    with pytest.raises(ConfigError, match="did you mean 'lora-rank'"):
        parse_run_config({"lora-rnk": 4})
    with pytest.raises(ConfigError, match="unknown run-config key 'colour'"):
        parse_run_config({"colour": "blue"})


def test_method_knobs_are_typed_and_defaulted_in_their_settings():
    cfg = parse_run_config({"method": "lora", "lora-rank": 4})
    st = get_method("lora").settings_of(cfg)
    assert (st.rank, st.alpha, st.target_modules, st.targets) == (4, 16.0, "auto", [])  # auto: the model's q/v
    st = get_method("lora").settings_of(parse_run_config({"method": "lora", "lora-target-modules": "query, value"}))
    assert st.targets == ["query", "value"]


def test_each_method_has_its_own_learning_rate_and_an_explicit_lr_wins():
    assert get_method("full").learning_rates(parse_run_config({"method": "full"})) == (3e-5, 3e-5)
    assert get_method("pafi").learning_rates(parse_run_config({})) == (2e-2, 1e-3)  # the head apart (head swing)
    assert get_method("magnitude").learning_rates(parse_run_config({"method": "magnitude"})) == (5e-3, 1e-3)
    assert get_method("pafi").learning_rates(parse_run_config({"lr": 1e-2})) == (1e-2, 1e-3)
    assert get_method("topk").learning_rates(parse_run_config({"method": "topk"})) == (2e-4, 5e-3)
    assert get_method("full").learning_rates(parse_run_config({"method": "full", "lr": 1e-4})) == (1e-4, 1e-4)
    assert get_method("topk").learning_rates(parse_run_config({"method": "topk", "head-lr": 1e-3}))[1] == 1e-3


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="mask-scope"):
        RunConfig(mask_scope="layer")
    with pytest.raises(ConfigError, match="dp-clip-norm"):
        RunConfig(dp_noise_multiplier=0.5)


def test_the_command_line_lists_every_method_and_knob(repo_root):
    out = subprocess.run([sys.executable, "-m", "shared.settings"], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout
    for name in methods():
        assert f"  {name}: " in out
    for key in declared_defaults():
        assert f" {key} = " in out
    toml = subprocess.run([sys.executable, "-m", "shared.settings", "--toml"], cwd=repo_root, capture_output=True,
                          text=True, check=True).stdout
    assert tomllib.loads(toml)["tool"]["flwr"]["app"]["config"] == declared_defaults()


def test_trust_weighting_auto_is_on_wherever_it_can_act():
    assert RunConfig().trust_weighting == "auto" and RunConfig().trusts
    for agg in ("fedavg", "fedavgm", "fedadam", "fedyogi"):
        assert RunConfig(aggregator=agg).trusts
    assert not RunConfig(aggregator="median").trusts  # a robust aggregator: no weights to set, it is the defence
    assert not RunConfig(aggregator="multi-krum", min_train_replies=5).trusts
    assert not RunConfig(dp_clip_norm=1.0).trusts  # central DP: equal weights
    assert not RunConfig(secure_aggregation=True).trusts  # a secure sum: no update is seen
    assert not RunConfig(trust_weighting="none").trusts
    assert RunConfig(trust_weighting="cosine").trusts
