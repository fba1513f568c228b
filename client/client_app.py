"""Flower ClientApp: thin handlers that call shared/ (model, method, local training) and wire/ (the format).

Handlers: ``query`` (round-0 handshake: partition id and the mask fingerprint this node derived),
``train`` and ``evaluate`` for every method, and each registered method's own routes
(``query.<route>``, e.g. sam's selection phase). The method's update codec decodes what the server
sends and encodes the reply; a method's per-node state lives in ``context.state`` between messages.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.drift_state import ClientDrift
from shared.clipping import clip_rows
from shared.config import RunConfig
from shared.device import to_cpu
from shared.drift import rate_vector
from shared.faults import act_before_training, planned_fault, poison
from shared.masks import MaskMismatchError
from shared.methods import methods
from shared.methods.base import ClientCall, ClientRoute, Method
from shared.multitask import node_task, parse_tasks, task_config
from shared.runtime import Runtime, client_partition, client_partition_size, get_runtime
from shared.schedule import lr_factor
from shared.settings import local_loss, parse_run_config
from shared.tasks import task_of
from shared.training import evaluate as evaluate_model
from shared.training import train_local
from wire.codec import MalformedUpdateError
from wire.drift import split_control
from wire.protocol import CONFIG, UP_KEYS, Parts, flatten_head, secure_vector, unflatten_head
from wire.records import message_parts, secure_train_reply, to_recorddict

app = ClientApp()
log = logging.getLogger("fedsparse.client")
STATE_ARRAYS, STATE_CONFIG = "fedsparse.method-arrays", "fedsparse.method-config"  # a method's node state


def _node_partition(context: Context) -> tuple[int, int]:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError("node config lacks partition-id/num-partitions; start the SuperNode with "
                         "--node-config \"partition-id=0 num-partitions=N\"")
    return int(node["partition-id"]), int(node["num-partitions"])


def _node_state(context: Context) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if STATE_ARRAYS in context.state:
        state.update({k: a.numpy() for k, a in context.state[STATE_ARRAYS].items()})
    if STATE_CONFIG in context.state:
        state.update(dict(context.state[STATE_CONFIG]))
    return state


def _keep_state(context: Context, state: dict[str, Any]) -> None:
    arrays = {k: Array(np.ascontiguousarray(v)) for k, v in state.items() if isinstance(v, np.ndarray)}
    context.state[STATE_ARRAYS] = ArrayRecord(arrays)
    context.state[STATE_CONFIG] = ConfigRecord({k: v for k, v in state.items() if not isinstance(v, np.ndarray)})


_PARSED: dict[tuple, RunConfig] = {}  # run config -> parsed settings; one entry per run a worker serves


def _config(run_config: Mapping[str, Any]) -> RunConfig:
    """``parse_run_config`` once per distinct run config (every message of a run carries the same one)."""
    key = tuple(sorted((k, repr(v)) for k, v in run_config.items()))
    if key not in _PARSED:
        if len(_PARSED) >= 4:
            _PARSED.clear()
        _PARSED[key] = parse_run_config(run_config)
    return _PARSED[key]


@dataclass(frozen=True)
class Node:
    """This node's view of the run: its task's settings and runtime, its global partition and its share of its
    task's data (a single-task run: the run's settings, and the partition is the share)."""

    cfg: RunConfig
    rt: Runtime
    pid: int  # global partition id (faults, the handshake, the reply)
    nparts: int
    part: int  # its share of its task's train split
    parts: int

    def data(self):
        return client_partition(self.cfg, self.rt.base.tokenizer, self.part, self.parts)


def _node(context: Context, state: dict[str, Any] | None = None) -> Node:
    """The parsed config and this process's runtime for this node's task, with the method's node state (read once)
    re-installed. A multi-task run (``tasks``): the task its partition id is assigned (``shared.multitask``)."""
    cfg = _config(context.run_config)
    pid, nparts = _node_partition(context)
    part, parts, capacity = pid, nparts, 1
    if cfg.tasks:
        slot, part = node_task(cfg, pid, nparts)
        cfg, parts, capacity = task_config(cfg, slot.name), slot.count, len(parse_tasks(cfg.tasks))
    rt = get_runtime(cfg, capacity)
    if rt.method.restore is not None:
        rt.method.restore(rt.tuner, _node_state(context) if state is None else state)
    return Node(cfg, rt, pid, nparts, part, parts)


def _receive(msg: Message, cfg: RunConfig, rt: Runtime) -> tuple:
    """Check the fingerprint, decode the global values and head with the method's codec, load them.

    Returns (values (k,), head (h,), value dtype, the message's control-variate arrays (``wire/drift.py``)).
    """
    conf = msg.content[CONFIG]
    if conf.get("fingerprint") != rt.tuner.fingerprint:
        raise MaskMismatchError(
            f"server mask fingerprint {str(conf.get('fingerprint'))[:12]} != this node's "
            f"{rt.tuner.fingerprint[:12]}: the nodes hold different base models or mask settings"
        )
    dtype = str(conf["value-dtype"])
    head_like = rt.tuner.head_state()
    h = sum(t.numel() for t in head_like.values())
    arrays, control = split_control(message_parts(msg)[0])
    values, head_vec = rt.tuner.codec.decode_down(arrays, dtype, rt.tuner.k, h, cfg.int8_block_size)
    rt.tuner.load(values, unflatten_head(head_vec, head_like, rt.base.head_names))
    return values, head_vec, dtype, control


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the SecAgg+ stages (messages carrying its record); plain train otherwise."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[secure_mod])
def train(msg: Message, context: Context) -> Message:
    """Train the method's values and the head locally; reply with the deltas only (masked under SecAgg+)."""
    node = _node(context)
    cfg, rt, pid = node.cfg, node.rt, node.pid
    secure = RECORD_KEY_CONFIGS in msg.content.config_records
    if cfg.secure_aggregation and not secure:
        raise ValueError("this run uses secure-aggregation: a plain train message is refused (its reply would "
                         "show this node's update to the server)")
    values, head_vec, dtype, control = _receive(msg, cfg, rt)
    data = node.data()
    server_round = int(msg.content[CONFIG].get("server-round", 0))
    fault = planned_fault(cfg.seed, pid, server_round, cfg.fail_rate, cfg.fail_mode)
    act_before_training(fault, cfg.round_timeout, pid, server_round)
    result, local, local_head, drift = _train_locally(cfg, rt, context, control, values, head_vec, data,
                                                      cfg.seed * 100_003 + node.part * 1_009 + server_round,
                                                      server_round)  # by its share of its task (= pid, one task)
    delta, head_delta = local - values, local_head - head_vec
    if secure:
        head_delta = _every_head(msg.content[CONFIG], head_delta)
        vector = _secure_update(cfg, pid, server_round, delta, head_delta, result.loss, fault)
        clear = {"fingerprint": rt.tuner.fingerprint, "train-seconds": result.seconds, **_worker_node()}
        return Message(secure_train_reply(vector, clear), reply_to=msg)
    arrays = rt.tuner.codec.encode_up(delta, head_delta, dtype, cfg.int8_block_size)
    arrays.update(drift.finish(torch.cat([local, local_head]), server_round))  # SCAFFOLD's control-delta
    if fault == "nan":
        arrays = poison(arrays, UP_KEYS[0])
    metrics = {"num-examples": len(data), "train-loss": result.loss, "train-seconds": result.seconds,
               "examples-seen": result.num_examples}
    config = {"fingerprint": rt.tuner.fingerprint, "partition-id": pid}
    config.update(_worker_node())
    content = to_recorddict(arrays, config, metrics)
    return Message(content, reply_to=msg)


def _train_locally(cfg: RunConfig, rt: Runtime, context: Context, control: Mapping[str, np.ndarray],
                   values: torch.Tensor, head_vec: torch.Tensor, data: Any, seed: int,
                   server_round: int) -> tuple[Any, torch.Tensor, torch.Tensor, ClientDrift]:
    """Local AdamW training from the global (values (k,), head (h,)) at the round's rates, with the run's drift
    terms (``client/drift_state.py``); (result, local values (k,), local head (h,), the drift terms)."""
    params = rt.tuner.trainable()
    lr, head_lr = rt.method.learning_rates(cfg)
    lr = 0.0 if cfg.freeze_values else lr  # the head alone trains: AdamW at rate 0 leaves the values as they came
    scale = lr_factor(server_round, cfg.num_server_rounds, cfg.lr_schedule, cfg.lr_warmup_rounds, cfg.lr_decay_rounds)
    groups = [{"params": params[:1], "lr": lr * scale}, {"params": params[1:], "lr": head_lr * scale}]
    rates = rate_vector(values.numel(), head_vec.numel(), lr * scale, head_lr * scale)
    drift = ClientDrift(cfg, context, control, params, torch.cat([values, head_vec]), rates, rt.tuner.fingerprint)
    result = train_local(rt.base.model, groups, data, cfg.local_steps, cfg.batch_size, seed=seed,
                         weight_decay=cfg.weight_decay, precision=cfg.precision, group_by_length=cfg.group_by_length,
                         loss=local_loss(cfg), adjust=drift.adjust)
    local = rt.tuner.values.detach().cpu()  # the wire is on the CPU, whatever the device
    return result, local, flatten_head(to_cpu(rt.tuner.head_state()), rt.base.head_names), drift


def _every_head(conf: Mapping[str, Any], head_delta: torch.Tensor) -> torch.Tensor:
    """A multi-task node's head delta in every task's head slots (zeros but its own, at ``head-offset`` of
    ``head-total``): the one length every secure vector of the round shares. A single-task message: unchanged."""
    if "head-total" not in conf:
        return head_delta
    total, offset = int(conf["head-total"]), int(conf["head-offset"])
    if not 0 <= offset <= total - head_delta.numel():
        raise ValueError(f"head-offset {offset} + this node's {head_delta.numel()}-value head exceed head-total "
                         f"{total}")
    out = torch.zeros(total, dtype=head_delta.dtype)
    out[offset:offset + head_delta.numel()] = head_delta
    return out


def _secure_update(cfg: RunConfig, pid: int, server_round: int, delta: torch.Tensor, head_delta: torch.Tensor,
                   loss: float, fault: str | None) -> np.ndarray:
    """The flat vector this client hands to SecAgg+ (clipped to dp-clip-norm here: the server never sees it)."""
    if cfg.dp_clip_norm > 0:  # central DP on a secure sum: each client clips its own update's L2 norm
        both = clip_rows(torch.cat([delta, head_delta]).unsqueeze(0), cfg.dp_clip_norm)[0].float()
        delta, head_delta = both[:delta.numel()], both[delta.numel():]
    vector = secure_vector(delta, head_delta, loss)
    if fault == "nan":
        vector[0] = np.nan
    if not np.isfinite(vector).all():  # a NaN would quantize to garbage and silently corrupt everyone's sum
        raise MalformedUpdateError(f"partition {pid}, round {server_round}: non-finite update; not sent")
    over = int((np.abs(vector) > cfg.secagg_clipping_range).sum())
    if over:
        log.warning("partition %d, round %d: %d of %d coordinates beyond secagg-clipping-range %g are clipped",
                    pid, server_round, over, vector.size, cfg.secagg_clipping_range)
    return vector


def _worker_node() -> dict[str, str]:
    """``{"worker-node": <Ray node id>}`` when this client runs in a Ray worker (simulation), else ``{}``.

    Diagnostic only (which machine of a Ray cluster ran the client); the server counts it, never needs it.
    """
    ray = sys.modules.get("ray")  # never import Ray here: a SuperNode of the Deployment Engine has none
    try:
        if ray is not None and ray.is_initialized():
            return {"worker-node": str(ray.get_runtime_context().get_node_id())}
    except Exception:  # noqa: BLE001 - a diagnostic must not fail a round
        pass
    return {}


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Client-side evaluation of the global model on this node's partition (metrics only)."""
    node = _node(context)
    cfg, rt = node.cfg, node.rt
    _receive(msg, cfg, rt)
    data = node.data()
    ev = evaluate_model(rt.base.model, data, task_of(cfg), cfg.eval_batch_size, cfg.precision, cfg.max_new_tokens,
                        cfg.num_beams)
    metrics = {"num-examples": len(data), "eval-loss": ev.loss, **{f"eval-{m}": v for m, v in ev.metrics.items()}}
    if "accuracy" in ev.metrics:
        metrics["eval-acc"] = ev.metrics["accuracy"]  # the name replies had before tasks had metrics
    return Message(to_recorddict({}, {"fingerprint": rt.tuner.fingerprint}, metrics), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Handshake: this node's partition, its size and the mask fingerprint (derived locally, never sent); in a
    multi-task run also its task and its head's size, which the server checks against its assignment."""
    node = _node(context)
    rt = node.rt
    size = client_partition_size(node.cfg, node.part, node.parts)  # the cap on what its replies may claim; counted
    metrics = {"partition-id": node.pid, "num-partitions": node.nparts, "num-examples": size, "k": rt.tuner.k}
    config = {"fingerprint": rt.tuner.fingerprint}
    if _config(context.run_config).tasks:  # a multi-task run: the task this node trains
        config["task"] = node.cfg.dataset
        metrics["head-size"] = rt.tuner.head_size
    return Message(to_recorddict({}, config, metrics), reply_to=msg)


def _route_handler(owner: Method, route: ClientRoute) -> Callable[[Message, Context], Message]:
    """A Flower handler around a method's plain route: parts in, parts out, node state kept."""
    def handle(msg: Message, context: Context) -> Message:
        state = _node_state(context)
        node = _node(context, state)
        cfg, rt = node.cfg, node.rt
        if rt.method.name != owner.name:  # by name: Flower may re-import the app's modules between runs
            raise ValueError(f"message {msg.metadata.message_type!r} belongs to method {owner.name!r}, "
                             f"this run's method is {rt.method.name!r}")
        arrays, metrics, config = message_parts(msg)
        call = ClientCall(cfg=cfg, tuner=rt.tuner, base=rt.base, partition_id=node.part, num_partitions=node.parts,
                          request=Parts(arrays, config, metrics), state=state, data=node.data)
        reply: Parts = route(call)
        _keep_state(context, call.state)
        return Message(to_recorddict(reply.arrays, reply.config, reply.metrics), reply_to=msg)
    return handle


for _method in methods().values():  # every registered method's own routes: "query.<route>"
    for _name, _route in _method.client_routes.items():
        app.query(_name)(_route_handler(_method, _route))
