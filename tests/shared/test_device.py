"""The device and precision knobs: resolution, every tensor of a step on the chosen device, bf16, the wire on CPU.

The step checks run on every device this machine has (the CPU always; CUDA/MPS where present), so the
same test proves GPU placement on a GPU host. Device choice is also checked with the accelerators
faked as present, and the sparse-kernel fallback with the kernel faked as missing.
"""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import Context, RecordDict
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import shared.device as device_mod
from shared.config import ConfigError, RunConfig
from shared.data import encode, load_splits, partition
from shared.device import autocast, resolve_device, sampled_addmm_works
from shared.runtime import build_runtime
from shared.tasks import get_task
from shared.training import evaluate, train_local


def _devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


class RecordOps(TorchDispatchMode):
    """Records (op, device, dtype) of every tensor every aten op reads or makes."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs or {}, out))[0]:
            if isinstance(t, torch.Tensor):
                self.seen.append((str(func), t.device.type, t.dtype))
        return out


# ---- resolution --------------------------------------------------------------------------------
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_explicit_cuda_index_is_checked_against_the_gpus_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"device=cuda:2 .* 2 CUDA GPU"):
        resolve_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_unavailable_device_is_refused_in_one_line_before_any_model_loads(tiny_cfg, monkeypatch):
    loaded = []
    monkeypatch.setattr("shared.runtime.load_base_model", lambda *a, **k: loaded.append(a))
    with pytest.raises(ConfigError) as err:
        build_runtime(tiny_cfg.replace(device="cuda"))
    assert "\n" not in str(err.value) and "device=cuda" in str(err.value) and "device=auto" in str(err.value)
    assert loaded == []


@pytest.mark.parametrize("bad", ["gpu", "cuda1", "CUDA", "cuda:x"])
def test_bad_device_spelling_is_a_config_error(tiny_cfg, bad):
    with pytest.raises(ConfigError, match="'device'"):
        tiny_cfg.replace(device=bad)
    with pytest.raises(ConfigError, match="precision"):
        tiny_cfg.replace(precision="fp16")


# ---- placement -----------------------------------------------------------------------------------
@pytest.fixture()
def tiny_data(tiny_cfg):
    def make(rt):
        train = load_splits(tiny_cfg.dataset, tiny_cfg.data_dir)["train"]
        return encode(partition(train, 10, 0, "iid", 0.5, 0), rt.base.tokenizer, 32, limit=48)
    return make


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("method", ["pafi", "bitfit", "full", "lora", "dsee", "hiwi"])
def test_every_tensor_of_a_train_step_is_on_the_chosen_device(tiny_cfg, tiny_data, device, method):
    rt = build_runtime(tiny_cfg.replace(device=device, method=method,
                                        options={"dsee-prune-heads": 1} if method == "dsee" else {}))
    want = resolve_device(device).type
    data = tiny_data(rt)
    rt.tuner.load(rt.tuner.initial_values(), {n: t.detach().cpu() for n, t in rt.tuner.head_state().items()})
    params = rt.tuner.trainable()
    groups = [{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 1e-2}]
    rec = RecordOps()
    with rec:
        res = train_local(rt.base.model, groups, data, 2, 8, seed=1)
    assert res.num_examples == 16 and res.loss > 0
    off = sorted({(op, dev) for op, dev, _ in rec.seen if dev != want})
    assert not off, f"ops off {want}: {off[:8]}"
    assert len(rec.seen) > 100  # the hook saw the step
    assert rt.tuner.values.device.type == want
    assert all(p.device.type == want for p in rt.base.model.parameters())


@pytest.mark.parametrize("device", _devices())
def test_evaluation_runs_on_the_device(tiny_cfg, tiny_data, device):
    rt = build_runtime(tiny_cfg.replace(device=device))
    rec = RecordOps()
    with rec:
        ev = evaluate(rt.base.model, tiny_data(rt), get_task("sst2"), batch_size=16)
        loss, acc = ev.loss, ev.metrics["accuracy"]
    assert 0 <= acc <= 1 and loss > 0
    assert {dev for _, dev, _ in rec.seen} == {resolve_device(device).type}


# ---- precision -----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", _devices())
def test_bf16_autocast_runs_matmuls_in_bf16_and_keeps_values_and_optimizer_state_fp32(tiny_cfg, tiny_data, device):
    rt = build_runtime(tiny_cfg.replace(device=device, precision="bf16"))
    params = rt.tuner.trainable()
    groups = [{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 1e-2}]
    opt_seen = {}
    original = torch.optim.AdamW.step

    def step(self, *a, **k):  # keep a handle on the optimizer the loop builds
        out = original(self, *a, **k)
        opt_seen["state"] = [s for s in self.state.values()]
        return out

    rec = RecordOps()
    torch.optim.AdamW.step = step
    try:
        with rec:
            res = train_local(rt.base.model, groups, tiny_data(rt), 2, 8, seed=1, precision="bf16")
    finally:
        torch.optim.AdamW.step = original
    assert res.loss > 0
    mm = {dt for op, _, dt in rec.seen if op.split(".")[1] in ("mm", "addmm", "bmm")}
    assert torch.bfloat16 in mm
    assert rt.tuner.values.dtype == torch.float32 and bool(rt.tuner.values.detach().abs().sum() > 0)
    for st in opt_seen["state"]:
        assert st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32


def test_bf16_step_tracks_the_fp32_step(tiny_cfg, tiny_data):
    finals = {}
    for precision in ("fp32", "bf16"):
        rt = build_runtime(tiny_cfg.replace(precision=precision, seed=5))
        rt.tuner.reset()
        params = rt.tuner.trainable()
        train_local(rt.base.model, [{"params": params, "lr": 1e-3}], tiny_data(rt), 1, 8, seed=1,
                    precision=precision)
        finals[precision] = rt.tuner.values.detach().clone()
    # one AdamW step moves every entry by about lr (sign of its gradient): most signs agree under bf16
    agree = (torch.sign(finals["fp32"]) == torch.sign(finals["bf16"])).float().mean()
    assert agree > 0.8, agree


def test_autocast_is_a_no_op_for_fp32():
    with autocast(torch.device("cpu"), "fp32"):
        y = torch.ones(2, 3) @ torch.ones(3, 2)
    assert y.dtype == torch.float32


# ---- the sparse kernel ---------------------------------------------------------------------------
def test_sampled_addmm_runs_on_cpu():
    assert sampled_addmm_works(torch.device("cpu"))


def test_a_device_without_the_sparse_kernel_falls_back_to_the_dense_path(tiny_cfg, tiny_data, monkeypatch):
    grads = {}
    for kernel in (True, False):
        monkeypatch.setattr("shared.tuner.sampled_addmm_works", lambda device, ok=kernel: ok)
        rt = build_runtime(tiny_cfg.replace(seed=7 + kernel))  # a fresh runtime each time
        assert rt.tuner.sparse_kernel is kernel
        rec = RecordOps()
        rt.tuner.reset()
        batch = tiny_data(rt).batch(torch.arange(8))
        with rec:
            rt.base.model.train()
            rt.base.model(**batch).loss.backward()
        grads[kernel] = rt.tuner.values.grad.clone()
        used = any("sampled_addmm" in op for op, _, _ in rec.seen)
        assert used is kernel


# ---- the wire ------------------------------------------------------------------------------------
def test_a_whole_run_with_device_and_bf16_keeps_the_wire_and_outputs_on_cpu(tmp_path, tiny_model_dir, sst2_dir):
    from client.client_app import app as client_app
    from server.server_app import main
    from tests.support.local_grid import LocalGrid

    cfg = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05, "local-steps": 2,
           "batch-size": 8, "max-length": 32, "max-eval-examples": 32, "output-dir": str(tmp_path / "run"),
           "num-server-rounds": 2, "fraction-train": 1.0, "min-available-nodes": 2, "device": _devices()[-1],
           "precision": "bf16"}
    grid = LocalGrid(client_app, cfg, 2)
    replies = []
    original = grid.pull_messages

    def pull(ids):
        got = list(original(ids))
        replies.extend(got)
        return got

    grid.pull_messages = pull
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["round"] for r in history] == [0, 1, 2] and history[-1]["replied"] == 2
    train = [r for r in replies if r.metadata.message_type == "train"]
    assert train
    for r in train:  # what travels is numpy bytes made from CPU tensors
        for rec in r.content.array_records.values():
            for arr in rec.values():
                assert arr.numpy().dtype.kind in "fiu"
    from safetensors.torch import load_file
    assert all(t.device.type == "cpu" for t in load_file(str(tmp_path / "run" / "delta.safetensors")).values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_the_server_refuses_an_absent_device_in_one_line(tmp_path, tiny_model_dir, sst2_dir, capsys):
    from client.client_app import app as client_app
    from server.server_app import main
    from tests.support.local_grid import LocalGrid

    cfg = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "output-dir": str(tmp_path / "run"),
           "device": "cuda:1"}
    with pytest.raises(SystemExit) as exit_:
        main(LocalGrid(client_app, cfg, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                     run_config=cfg))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsparse: error: device=cuda:1") and "\n" not in err
