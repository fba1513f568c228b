"""Many tasks, one mask: the assignment, the refusals, the per-task step and a real three-task federation.

The federation runs the real ServerApp ``main`` and ClientApp over an in-process Grid on a tiny BERT and the real GLUE
folders (RTE, MRPC, STS-B: two classifications and the regression)."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict
from safetensors.torch import load_file

from server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from server.handshake import admit
from server.multitask import HEAD_STATE, HeadLayout, multitask_step
from server.recovery import CRASH_EXIT_CODE
from server.server_opt import ServerSettings
from shared.knobs import ConfigError
from shared.multitask import node_task, parse_tasks, task_config
from shared.settings import declared_defaults, parse_run_config
from wire.codec import MalformedUpdateError

GLUE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue"
TASKS = "rte:2,mrpc:1,stsb:1"
NODES = 4


def _rc(**extra) -> dict:
    return {**declared_defaults(), "tasks": TASKS, "data-dir": str(GLUE), **extra}


# ---- the assignment and the refusals ---------------------------------------------------------------------------------
def test_tasks_assign_partitions_in_the_order_written():
    cfg = parse_run_config(_rc())
    assert [(s.name, s.first, s.count) for s in parse_tasks(cfg.tasks)] == [("rte", 0, 2), ("mrpc", 2, 1),
                                                                            ("stsb", 3, 1)]
    assert [(node_task(cfg, pid, NODES)[0].name, node_task(cfg, pid, NODES)[1]) for pid in range(NODES)] == [
        ("rte", 0), ("rte", 1), ("mrpc", 0), ("stsb", 0)]
    sub = task_config(cfg, "stsb")
    assert sub.dataset == "stsb" and sub.data_dir == str(GLUE / "STS-B") and sub.tasks == ""
    with pytest.raises(ConfigError, match="num-partitions=5 but tasks="):
        node_task(cfg, 0, 5)


@pytest.mark.parametrize("extra, match", [
    ({"tasks": "rte"}, "is not task:nodes"),
    ({"tasks": "rte:0,mrpc:1"}, "is not task:nodes"),
    ({"tasks": "rte:2,nope:1"}, "unknown dataset 'nope'"),
    ({"tasks": "rte:2,rte:1"}, "listed twice"),
    ({"tasks": "rte:2"}, "needs two or more"),
    ({"tasks": "rte:1,e2e:1"}, "causal-lm task"),
    ({"method": "sam"}, "selected from the clients' data"),
    ({"method": "topk"}, "carry their own positions"),
    ({"num-labels": 3}, "leave num-labels=0"),
    ({"secure-aggregation": True, "aggregator": "median"}, "cannot run aggregator 'median'"),
    ({"local-loss": "balanced", "tasks": "rte:1,stsb:1"}, "task stsb: local-loss='balanced'"),
])
def test_a_multitask_run_it_cannot_make_is_refused_in_one_line(extra, match):
    with pytest.raises(ConfigError, match=match) as exc:
        parse_run_config(_rc(**extra))
    assert "\n" not in str(exc.value)


def test_the_handshake_refuses_a_node_whose_task_or_head_disagrees_with_the_assignment():
    assignment = [("rte", 66), ("rte", 66), ("stsb", 33)]
    ok = {"partition-id": 2, "num-partitions": 3, "num-examples": 10, "head-size": 33}
    assert admit(ok, {"fingerprint": "f", "task": "stsb"}, "f", assignment).task == "stsb"
    with pytest.raises(MalformedUpdateError, match="assigns partition 2 to 'stsb'"):
        admit(ok, {"fingerprint": "f", "task": "rte"}, "f", assignment)
    with pytest.raises(MalformedUpdateError, match="33"):
        admit({**ok, "head-size": 66}, {"fingerprint": "f", "task": "stsb"}, "f", assignment)
    with pytest.raises(MalformedUpdateError, match="num-partitions 4"):
        admit({**ok, "num-partitions": 4}, {"fingerprint": "f", "task": "stsb"}, "f", assignment)


# ---- the step ------------------------------------------------------------------------------------------------------
def test_values_aggregate_over_every_reply_and_each_head_over_its_tasks_only():
    layout, k = HeadLayout(("a", "b", "c"), (3, 2, 4)), 5
    gen = torch.Generator().manual_seed(0)
    tasks = ["a", "b", "a", "b", "a"]  # no reply of task c this round
    rows = torch.stack([torch.cat([torch.randn(k, generator=gen), layout.widen(t, torch.randn(layout.size(t),
                                                                                            generator=gen))])
                        for t in tasks])
    weights = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0], dtype=torch.float64)
    step, state, notes = multitask_step(rows, weights, tasks, layout, k, {}, ServerSettings(), 1)
    mean = lambda r, w: torch.mv(r.double().t(), w / w.sum()).float()  # noqa: E731 (FedAvg, as the server sums)
    assert torch.equal(step[:k], mean(rows[:, :k], weights))
    for name in ("a", "b"):
        idx = [i for i, t in enumerate(tasks) if t == name]
        span = layout.span(name)
        assert torch.equal(step[k + span.start:k + span.stop], mean(rows[idx][:, k + span.start:k + span.stop],
                                                                     weights[idx]))
    assert not step[k + layout.span("c").start:].any() and notes == []


def test_a_task_without_replies_keeps_its_head_and_its_optimizer_state_bit_for_bit():
    layout, k = HeadLayout(("a", "b"), (2, 3)), 4
    hp = ServerSettings(aggregator="fedadam", lr=0.1)
    rows = torch.stack([torch.cat([torch.ones(k), layout.widen("a", torch.ones(2))]),
                        torch.cat([torch.ones(k), layout.widen("b", torch.ones(3))])])
    _, state, _ = multitask_step(rows, torch.ones(2, dtype=torch.float64), ["a", "b"], layout, k, {}, hp, 1)
    assert {"m", "v", f"{HEAD_STATE}a.m", f"{HEAD_STATE}b.v"} <= set(state)
    step, after, _ = multitask_step(rows[:1], torch.ones(1, dtype=torch.float64), ["a"], layout, k, state, hp, 2)
    assert not step[k + 2:].any()
    assert all(torch.equal(after[key], state[key]) for key in state if key.startswith(f"{HEAD_STATE}b."))
    assert not torch.equal(after[f"{HEAD_STATE}a.m"], state[f"{HEAD_STATE}a.m"])


def test_dp_noise_keeps_one_clients_sensitivity_and_draws_a_stream_per_block():
    layout, k = HeadLayout(("a", "b"), (2, 2)), 3
    hp = ServerSettings(dp_clip_norm=1.0, dp_noise_multiplier=1.0)
    rows = torch.stack([torch.cat([torch.full((k,), 10.0), layout.widen("a", torch.full((2,), 10.0))]),
                        torch.cat([torch.zeros(k), layout.widen("b", torch.zeros(2))])])
    plain, _, _ = multitask_step(rows, torch.ones(2, dtype=torch.float64), ["a", "b"], layout, k, {},
                                 ServerSettings(dp_clip_norm=1.0), 1)
    assert abs(float(torch.cat([plain[:k] * 2, plain[k:k + 2]]).norm()) - 1.0) < 1e-6  # the whole row clipped to C
    noisy, _, _ = multitask_step(rows, torch.ones(2, dtype=torch.float64), ["a", "b"], layout, k, {}, hp, 1)
    noise = noisy - plain
    assert not torch.allclose(noise[k:k + 2], noise[k + 2:]) and not torch.allclose(noise[:2], noise[k:k + 2])


# ---- a real three-task federation ------------------------------------------------------------------------------------
def _config(tiny_model_dir: Path, out: Path, **extra) -> dict:
    cfg = {"model": str(tiny_model_dir), "data-dir": str(GLUE), "tasks": TASKS, "mask-density": 0.05,
           "local-steps": 2, "batch-size": 8, "max-length": 32, "max-eval-examples": 24, "output-dir": str(out),
           "seed": 3, "num-server-rounds": 3, "fraction-train": 0.25, "task-sampling": "proportional",
           "min-available-nodes": NODES, "aggregator": "fedadam", "server-lr": 0.01, "resume": False,
           "crash-after-round": 0, "trust-weighting": "none"}  # 2 steps of 8 rows: FLTrust may weigh every reply 0
    cfg.update(extra)
    return cfg


def _run(cfg: dict, nodes: int = NODES) -> None:
    from client.client_app import app as client_app
    from server.server_app import main
    from tests.support.local_grid import LocalGrid

    grid = LocalGrid(client_app, cfg, nodes, error_replies=True)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))


@pytest.mark.integration
def test_a_three_task_federation_trains_one_vector_and_a_head_per_task(tmp_path, tiny_model_dir, monkeypatch):
    import server.server_app as server_app
    from transformers import AutoModelForSequenceClassification

    seen = []  # per round: the tasks it trained and the global head after it
    real = server_app.checkpoint_round

    def spy(cfg, out, strategy, rnd, history, *args, **kwargs):
        tasks = {strategy.node_tasks[n] for n in strategy.round_nodes}
        seen.append((tasks, strategy.state.head.clone(), strategy.layout))
        return real(cfg, out, strategy, rnd, history, *args, **kwargs)

    monkeypatch.setattr(server_app, "checkpoint_round", spy)
    out = tmp_path / "run"
    _run(_config(tiny_model_dir, out))
    layout = seen[0][2]
    assert layout.names == ("rte", "mrpc", "stsb") and layout.sizes == (66, 66, 33)
    head0 = None
    for tasks, head, _ in seen:  # one node a round: every other task's head is bit-identical to the round before
        assert len(tasks) == 1
        if head0 is not None:
            for name in layout.names:
                same = torch.equal(head[layout.span(name)], head0[layout.span(name)])
                assert same == (name not in tasks), (name, tasks)
        head0 = head
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 4 and all(set(r["metrics"]) == {"rte", "mrpc", "stsb"} for r in history)
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    assert set(m["rte"]) == {"accuracy"} and set(m["mrpc"]) == {"f1", "accuracy"} and set(m["stsb"]) == {
        "pearson", "spearman"}
    assert summary["final_score"] == pytest.approx((m["rte"]["accuracy"] + m["mrpc"]["f1"] + m["stsb"]["spearman"]) / 3)
    assert summary["headline_metric"] == "average" and "final_accuracy" not in summary
    assert summary["storage_bytes"]["multitask"] < summary["storage_bytes"]["one_per_task"]
    stsb = AutoModelForSequenceClassification.from_pretrained(out / "tasks" / "stsb" / "model")
    assert stsb.config.num_labels == 1 and stsb.config.problem_type == "regression"
    rte = AutoModelForSequenceClassification.from_pretrained(out / "tasks" / "rte" / "model")
    assert rte.config.num_labels == 2


def _final(out: Path) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": t for name in ("rte", "mrpc", "stsb")
            for key, t in load_file(str(out / "tasks" / name / "delta.safetensors")).items()}


def _crash_and_resume(tmp_path: Path, tiny_model_dir: Path, **extra):
    """A reference run of 3 rounds, the same run killed after round 2's checkpoint and resumed: (the checkpoint it
    resumed from, the reference's folder, the resumed run's folder), the finals checked bit-identical."""
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    _run(_config(tiny_model_dir, ref, **extra))
    child = mp.get_context("spawn").Process(target=_run, args=(_config(tiny_model_dir, crashed, **extra,
                                                                       **{"crash-after-round": 2}),))
    child.start()
    child.join(300)
    assert child.exitcode == CRASH_EXIT_CODE
    ck = load_checkpoint(crashed / CHECKPOINT_NAME)
    _run(_config(tiny_model_dir, crashed, resume=True, **extra))
    got, want = _final(crashed), _final(ref)
    assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)
    return ck, ref, crashed


@pytest.mark.integration
def test_a_crashed_multitask_run_resumes_bit_identical_with_every_head(tmp_path, tiny_model_dir):
    ck, ref, crashed = _crash_and_resume(tmp_path, tiny_model_dir, **{"task-sampling": "stratified",
                                                                      "fraction-train": 0.5})
    assert ck.round == 2 and ck.head.numel() == 66 + 66 + 33
    assert any(key.startswith(f"{HEAD_STATE}stsb.") for key in ck.opt_state)  # every head's server-optimizer state
    h_ref, h_res = (json.loads((d / "history.json").read_text()) for d in (ref, crashed))
    assert [r["metrics"] for r in h_res] == [r["metrics"] for r in h_ref]


@pytest.mark.integration
def test_a_task_never_seen_starts_from_the_shared_values_and_can_train_its_head_alone(tmp_path, tiny_model_dir, capsys):
    """The transfer experiment's two settings: RTE (held out of the multi-task run) from its shared values with the
    values frozen (only the head trains), and a run of another mask refused in one line before any round."""
    shared, transfer = tmp_path / "shared", tmp_path / "rte"
    _run(_config(tiny_model_dir, shared, tasks="mrpc:1,stsb:1", **{"num-server-rounds": 2, "fraction-train": 1.0,
                                                                    "min-available-nodes": 2}), nodes=2)
    values = load_checkpoint(shared / CHECKPOINT_NAME).values
    assert values.abs().sum() > 0
    single = {"tasks": "", "dataset": "rte", "data-dir": str(GLUE / "RTE"), "num-server-rounds": 2,
              "fraction-train": 1.0, "min-available-nodes": 2, "init-values": str(shared), "freeze-values": True}
    _run(_config(tiny_model_dir, transfer, **single), nodes=2)
    assert "values start from" in capsys.readouterr().out
    ck = load_checkpoint(transfer / CHECKPOINT_NAME)
    assert torch.equal(ck.values, values)  # the shared values, untouched by two rounds of head training
    history = json.loads((transfer / "history.json").read_text())
    assert all(r["aggregated"] for r in history[1:])
    with pytest.raises(SystemExit):
        _run(_config(tiny_model_dir, tmp_path / "other", **{**single, "mask-density": 0.1}), nodes=2)
    err = capsys.readouterr().err
    assert "is not this run's" in err and "same mask" in err


@pytest.mark.integration
def test_a_secure_multitask_federation_equals_the_plain_one_within_the_quantization_error(tmp_path, tiny_model_dir):
    """SecAgg+ over every task: each vector carries every task's head slots (zeros but its own); the server rescales
    a head's part of the survivors' mean to the mean over that task's survivors."""
    same = {"fraction-train": 1.0, "weighting": "uniform", "task-sampling": "stratified", "aggregator": "fedavg",
            "lr": 0.02}
    _run(_config(tiny_model_dir, tmp_path / "plain", **same))
    _run(_config(tiny_model_dir, tmp_path / "sec", **same, **{"secure-aggregation": True}))
    plain, sec = _final(tmp_path / "plain"), _final(tmp_path / "sec")
    for key in plain:
        rel = float((sec[key].double() - plain[key].double()).norm() / plain[key].double().norm())
        assert rel <= 1e-3, (key, rel)
    history = json.loads((tmp_path / "sec" / "history.json").read_text())
    assert all(r["aggregated"] and r["secagg"]["survivors"] == NODES for r in history[1:])


def test_scaffold_keeps_each_heads_variate_over_its_tasks_nodes():
    """c over the values and every head: a node's delta c_i lands in its view; the values part averages over all N
    nodes, a head's over that task's N_t."""
    from server.drift import ServerDrift
    from wire.drift import CONTROL_DELTA, encode_control

    k = 3
    layout = HeadLayout(("a", "b"), (2, 1))
    views = {0: torch.tensor([0, 1, 2, 3, 4]), 1: torch.tensor([0, 1, 2, 3, 4]), 2: torch.tensor([0, 1, 2, 5])}
    drift = ServerDrift(parse_run_config({**declared_defaults(), "drift-correction": "scaffold"}), views)
    drift.start_round(k + layout.total)
    assert drift.down(2)["control"].shape == (4,)  # its view only
    deltas = {0: torch.ones(5), 1: torch.full((5,), 3.0), 2: torch.full((4,), 6.0)}
    for pid, d in deltas.items():
        drift.take(100 + pid, encode_control(d, CONTROL_DELTA, "float32", 256), d.numel(), pid)
    drift.absorb([(100 + pid, pid) for pid in deltas], 3)
    assert torch.equal(drift.c, torch.tensor([10 / 3] * 3 + [2.0, 2.0] + [6.0]))


@pytest.mark.integration
def test_a_crashed_multitask_scaffold_run_resumes_bit_identical(tmp_path, tiny_model_dir):
    ck, _, _ = _crash_and_resume(tmp_path, tiny_model_dir, **{"drift-correction": "scaffold",
                                                               "task-sampling": "stratified", "fraction-train": 0.5})
    assert ck.drift["c"].numel() == ck.values.numel() + 66 + 66 + 33 and bool(ck.drift["c"][ck.values.numel():].any())
