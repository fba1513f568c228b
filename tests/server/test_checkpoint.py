"""Checkpoints: exact round trip, atomic replace, refusal of corrupted or mismatched files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from server.checkpoint import (CHECKPOINT_NAME, Checkpoint, CheckpointError, check_compatible, load_checkpoint,
                               restore_rng, save_checkpoint)

IDENTITY = {"fingerprint": "f" * 64, "k": 5, "head_size": 2, "model": "/m", "method": "pafi"}
RUN_CONFIG = {"seed": 42, "lr": 0.005, "resume": False, "num-server-rounds": 3, "aggregator": "fedadam",
              "lr-schedule": "constant"}


def _ck(rnd: int = 2) -> Checkpoint:
    g = torch.Generator().manual_seed(rnd)
    return Checkpoint(round=rnd, values=torch.randn(5, generator=g), head=torch.randn(2, generator=g),
                      opt_state={"m": torch.randn(7, dtype=torch.float64, generator=g),
                                 "v": torch.rand(7, dtype=torch.float64, generator=g)},
                      history=[{"round": 0, "accuracy": 0.5}, {"round": 1, "accuracy": 0.625, "rejected_reasons": []}],
                      identity=dict(IDENTITY), run_config=dict(RUN_CONFIG))


def test_round_trip_is_bit_exact_and_restores_rngs(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    ck = _ck()
    path = save_checkpoint(tmp_path, ck)
    assert path.name == CHECKPOINT_NAME and not list(tmp_path.glob("*.tmp"))
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    back = load_checkpoint(path)
    assert back.round == 2 and back.history == ck.history and back.identity == IDENTITY
    assert torch.equal(back.values, ck.values) and torch.equal(back.head, ck.head)
    assert set(back.opt_state) == {"m", "v"}
    assert all(torch.equal(back.opt_state[n], ck.opt_state[n]) for n in ck.opt_state)
    restore_rng(back.rng, back.rng["torch"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect


def test_newer_checkpoint_replaces_older(tmp_path):
    save_checkpoint(tmp_path, _ck(1))
    save_checkpoint(tmp_path, _ck(2))
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).round == 2


@pytest.mark.parametrize("where", ["body", "header", "truncate", "garbage"])
def test_corrupted_checkpoint_is_refused_with_one_line(tmp_path, where):
    path = save_checkpoint(tmp_path, _ck())
    raw = bytearray(path.read_bytes())
    if where == "body":
        raw[-3] ^= 0x01  # one bit in the last tensor's bytes
    elif where == "header":
        i = raw.index(b'round\\": 2')  # the meta JSON sits escaped inside the safetensors header
        raw[i + 9:i + 10] = b"7"  # round 2 -> 7
    elif where == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and ("corrupted" in str(info.value) or "unreadable" in str(info.value))


def test_mismatched_checkpoint_is_refused(tmp_path):
    ck = load_checkpoint(save_checkpoint(tmp_path, _ck()))
    check_compatible(ck, IDENTITY, {**RUN_CONFIG, "resume": True, "num-server-rounds": 9})  # allowed changes
    with pytest.raises(CheckpointError, match="fingerprint"):
        check_compatible(ck, {**IDENTITY, "fingerprint": "0" * 64}, RUN_CONFIG)
    with pytest.raises(CheckpointError, match="model"):
        check_compatible(ck, {**IDENTITY, "model": "/other"}, RUN_CONFIG)
    with pytest.raises(CheckpointError, match="aggregator"):
        check_compatible(ck, IDENTITY, {**RUN_CONFIG, "aggregator": "fedavg"})


def test_a_schedule_may_change_on_resume_only_where_rounds_already_made_keep_their_rates(tmp_path):
    ck = load_checkpoint(save_checkpoint(tmp_path, _ck()))  # round 2 of 3, constant rate
    annealed = {**RUN_CONFIG, "resume": True, "num-server-rounds": 5, "lr-schedule": "cosine", "lr-decay-rounds": 3}
    check_compatible(ck, IDENTITY, annealed)  # rounds 3-5 decay; rounds 1-2 were at the full rate, as before
    for changed in ({"lr-decay-rounds": 4}, {"lr-decay-rounds": 0}, {"lr-schedule": "linear", "lr-decay-rounds": 0},
                    {"lr-schedule": "constant", "lr-decay-rounds": 0, "lr-warmup-rounds": 1}):
        with pytest.raises(CheckpointError, match=r"trains rounds 1-2 at other rates") as info:
            check_compatible(ck, IDENTITY, {**annealed, **changed})
        assert "\n" not in str(info.value)


def test_a_checkpoint_from_before_a_knob_existed_resumes_at_that_knobs_default(tmp_path):
    ck = load_checkpoint(save_checkpoint(tmp_path, _ck()))  # its run config has no local-loss (added later)
    check_compatible(ck, IDENTITY, {**RUN_CONFIG, "local-loss": "ce", "resume": True})  # the default: what it ran
    with pytest.raises(CheckpointError, match=r"written with local-loss='ce', this run has 'balanced'"):
        check_compatible(ck, IDENTITY, {**RUN_CONFIG, "local-loss": "balanced"})
