"""Resume from a checkpoint into a strategy; refuse corrupted or mismatched ones with one line."""

from __future__ import annotations

import pytest
import torch

from server.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from server.recovery import checkpoint_round, resume_from_checkpoint, run_identity
from server.strategy import GlobalState, SparseStrategy
from server.validation import Expected
from shared.config import RunConfig

RUN_CONFIG = {"seed": 1, "aggregator": "fedadam", "resume": False, "num-server-rounds": 3, "lr-schedule": "constant"}


def _strategy(fp: str = "c" * 64, k: int = 6) -> SparseStrategy:
    cfg = RunConfig(aggregator="fedadam", resume=True)
    return SparseStrategy(cfg, GlobalState(torch.zeros(k), torch.zeros(2)), Expected(fp, "float32", k, 2))


def test_checkpoint_then_resume_restores_state_optimizer_and_history(tmp_path):
    src = _strategy()
    src.state = GlobalState(torch.randn(6), torch.randn(2))
    src.opt_state = {"m": torch.randn(8, dtype=torch.float64), "v": torch.rand(8, dtype=torch.float64)}
    ident = run_identity(src, "/model", "pafi")
    history = [{"round": 0}, {"round": 1}, {"round": 2}]
    checkpoint_round(src.cfg, tmp_path, src, 2, history, ident, RUN_CONFIG)
    dst = _strategy()
    first, hist = resume_from_checkpoint(dst.cfg, tmp_path, dst, ident, {**RUN_CONFIG, "resume": True})
    assert first == 3 and hist == history
    assert torch.equal(dst.state.values, src.state.values) and torch.equal(dst.state.head, src.state.head)
    assert all(torch.equal(dst.opt_state[n], src.opt_state[n]) for n in src.opt_state)


def test_resume_without_checkpoint_starts_at_round_one(tmp_path):
    s = _strategy()
    assert resume_from_checkpoint(s.cfg, tmp_path, s, run_identity(s, "/m", "pafi"), RUN_CONFIG) == (1, [])


def test_resume_refuses_other_mask_and_corruption(tmp_path):
    src = _strategy()
    checkpoint_round(src.cfg, tmp_path, src, 1, [], run_identity(src, "/m", "pafi"), RUN_CONFIG)
    other = _strategy(fp="d" * 64)
    with pytest.raises(CheckpointError, match="fingerprint"):
        resume_from_checkpoint(other.cfg, tmp_path, other, run_identity(other, "/m", "pafi"), RUN_CONFIG)
    path = tmp_path / CHECKPOINT_NAME
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)
    before = src.state.values.clone()
    with pytest.raises(CheckpointError):
        resume_from_checkpoint(src.cfg, tmp_path, src, run_identity(src, "/m", "pafi"), RUN_CONFIG)
    assert torch.equal(src.state.values, before)  # a refused checkpoint touches nothing


def test_a_checkpoint_moves_with_its_data_and_refuses_other_data(tmp_path):
    """The data's content, not its path, is in the identity: a clone of the project at another path resumes the
    committed checkpoint of a run of record; other files under the same name are refused."""
    from shared.data import data_fingerprint

    here, there, other = (tmp_path / d for d in ("here", "there", "other"))
    for folder, rows in ((here, "a\t1\n"), (there, "a\t1\n"), (other, "b\t0\n")):
        folder.mkdir()
        (folder / "train.tsv").write_text("sentence\tlabel\n" + rows)
        (folder / "test.tsv").write_text("sentence\tlabel\nc\t0\n")
    src = _strategy()
    ident = run_identity(src, "/m", "pafi", data_fingerprint(str(here)))
    checkpoint_round(src.cfg, tmp_path, src, 1, [{"round": 1}], ident, {**RUN_CONFIG, "data-dir": str(here)})
    dst = _strategy()
    moved = run_identity(dst, "/m", "pafi", data_fingerprint(str(there)))
    assert resume_from_checkpoint(dst.cfg, tmp_path, dst, moved, {**RUN_CONFIG, "data-dir": str(there)})[0] == 2
    with pytest.raises(CheckpointError, match="data="):
        resume_from_checkpoint(dst.cfg, tmp_path, dst, run_identity(dst, "/m", "pafi", data_fingerprint(str(other))),
                               {**RUN_CONFIG, "data-dir": str(other)})


def test_a_checkpoint_from_before_the_data_identity_resumes_on_the_same_data_dir(tmp_path):
    """Checkpoints written before ``data`` joined the identity still resume, compared by their data-dir string."""
    src = _strategy()
    old_ident = {k: v for k, v in run_identity(src, "/m", "pafi", "abc").items() if k != "data"}
    checkpoint_round(src.cfg, tmp_path, src, 1, [{"round": 1}], old_ident, {**RUN_CONFIG, "data-dir": "/d"})
    dst = _strategy()
    ident = run_identity(dst, "/m", "pafi", "abc")
    assert resume_from_checkpoint(dst.cfg, tmp_path, dst, ident, {**RUN_CONFIG, "data-dir": "/d"})[0] == 2
    with pytest.raises(CheckpointError, match="data-dir"):
        resume_from_checkpoint(dst.cfg, tmp_path, dst, ident, {**RUN_CONFIG, "data-dir": "/elsewhere"})


def test_a_run_of_record_resumes_with_the_defaults_it_was_made_with(tmp_path, repo_root):
    """pafi-s42 of the `paper` record was made when examples-cap-multiple defaulted to 0 (no cap): the launcher adds
    what the checkpoint's run had (``kept_settings``), so server and clients resume with it and the compatibility
    check passes; a value the user sets is kept and checked; a plain ``flwr run`` without them is refused in one
    line that lists them."""
    import json
    import shutil

    from server.checkpoint import check_compatible
    from server.recovery import kept_defaults, kept_settings
    from shared.settings import declared_defaults, parse_run_config

    run = repo_root / "docs" / "results" / "paper" / "runs" / "pafi-s42"
    shutil.copy(run / CHECKPOINT_NAME, tmp_path / CHECKPOINT_NAME)
    stored = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    today = {**declared_defaults(), **json.loads((run / "run_config.json").read_text()),
             "output-dir": str(tmp_path), "resume": True}
    assert today["examples-cap-multiple"] == 10.0 and stored.run_config["examples-cap-multiple"] == 0.0
    kept = kept_settings(today)
    assert kept == {"examples-cap-multiple": 0.0, "state-loss-ratio": 0.0, "update-bound": "none",
                    "local-loss": "ce", "trust-weighting": "none", "final-eval": "slice",
                    "lora-target-modules": "query,value"}  # (another method's knob: kept, unused)
    with pytest.raises(CheckpointError, match=r"made with examples-cap-multiple=0\.0 .*add them to --run-config"):
        kept_defaults(parse_run_config(today), today)
    launched = {**today, **kept}  # what simulations.engines.run_simulation submits
    cfg, run_config = kept_defaults(parse_run_config(launched), launched)
    assert cfg.examples_cap_multiple == 0.0 and cfg.update_bound == "none"
    check_compatible(stored, stored.identity, {**run_config, "output-dir": stored.run_config["output-dir"]})
    mine = {**today, "examples-cap-multiple": 4.0}
    assert "examples-cap-multiple" not in kept_settings(mine)  # a value the user sets is theirs...
    with pytest.raises(CheckpointError, match="examples-cap-multiple=0.0, this run has 4.0"):  # ...and checked
        check_compatible(stored, stored.identity, {**mine, **kept_settings(mine),
                                                   "output-dir": stored.run_config["output-dir"]})
    assert kept_settings({**today, "resume": False}) == {}


def test_a_resumed_run_keeps_its_resolved_learning_rate_when_the_methods_default_changes(tmp_path, monkeypatch):
    """Runs store their resolved settings: the method's rate (lr = 0 resolved) is in the checkpoint, so a resume
    after the method's default rate changed trains at the stored rate."""
    import dataclasses

    from server.checkpoint import Checkpoint, check_compatible, save_checkpoint
    from server.recovery import kept_settings, resolved_settings
    from shared.methods import get_method
    from shared.settings import declared_defaults, parse_run_config

    rc = {**declared_defaults(), "output-dir": str(tmp_path), "resume": True}
    cfg = parse_run_config(rc)
    pafi = get_method("pafi")
    stored = resolved_settings(cfg, rc, pafi.learning_rates(cfg))
    assert stored["lr"] == pafi.lr > 0 and rc["lr"] == 0
    ck = Checkpoint(1, torch.zeros(3), torch.zeros(2), identity={"k": 3}, run_config=stored)
    save_checkpoint(tmp_path, ck)
    assert kept_settings(rc) == {}  # the same default rate: nothing to keep, and the check passes
    check_compatible(ck, ck.identity, rc, resolved_settings(cfg, rc, pafi.learning_rates(cfg)))
    faster = dataclasses.replace(pafi, lr=pafi.lr * 2)  # the method's default rate changes
    monkeypatch.setattr("shared.methods.get_method", lambda name: faster)
    assert kept_settings(rc) == {"lr": pafi.lr}  # the stored rate is kept: the launcher adds lr=<stored>


def test_runs_store_what_auto_chose_and_a_run_made_before_auto_resumes_as_it_was_made(tmp_path):
    """settings.json and checkpoints store the loss and the trust weighting ``auto`` resolved to; a checkpoint of
    a run made when the defaults were ``ce`` and no trust weighting (or one that predates the knob) keeps them."""
    from server.checkpoint import Checkpoint, check_compatible, save_checkpoint
    from server.recovery import kept_settings, resolved_settings
    from shared.methods import get_method
    from shared.settings import declared_defaults, parse_run_config

    rc = {**declared_defaults(), "output-dir": str(tmp_path), "resume": True}
    cfg = parse_run_config(rc)
    lrs = get_method("pafi").learning_rates(cfg)
    now = resolved_settings(cfg, rc, lrs)
    assert (now["local-loss"], now["trust-weighting"]) == ("balanced", "cosine")
    assert resolved_settings(cfg.replace(aggregator="median"), {**rc, "aggregator": "median"},
                             lrs)["trust-weighting"] == "none"
    save_checkpoint(tmp_path, Checkpoint(1, torch.zeros(3), torch.zeros(2), identity={"k": 3}, run_config=now))
    assert kept_settings(rc) == {}  # made under today's defaults: resumes with them
    old = {k: v for k, v in now.items() if k != "trust-weighting"}  # predates the knob
    old["local-loss"] = "ce"
    ck = Checkpoint(1, torch.zeros(3), torch.zeros(2), identity={"k": 3}, run_config=old)
    save_checkpoint(tmp_path, ck)
    assert kept_settings(rc) == {"local-loss": "ce", "trust-weighting": "none"}
    with pytest.raises(CheckpointError, match="local-loss"):
        check_compatible(ck, ck.identity, rc, now)
    kept = {**rc, "local-loss": "ce", "trust-weighting": "none"}
    kcfg = parse_run_config(kept)
    check_compatible(ck, ck.identity, kept, resolved_settings(kcfg, kept, get_method("pafi").learning_rates(kcfg)))
