"""Flower ClientApp: thin handlers that call shared/ (model, method, local training) and wire/ (the format).

Handlers: ``query`` (round-0 handshake: partition id and the mask fingerprint this node derived),
``train`` and ``evaluate`` for every method, and each registered method's own routes
(``query.<route>``, e.g. sam's selection phase). The method's update codec decodes what the server
sends and encodes the reply; a method's per-node state lives in ``context.state`` between messages.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from shared.config import RunConfig
from shared.faults import act_before_training, planned_fault, poison
from shared.masks import MaskMismatchError
from shared.methods import methods
from shared.methods.base import ClientCall, ClientRoute, Method
from shared.runtime import Runtime, client_partition, get_runtime
from shared.settings import parse_run_config
from shared.training import evaluate as evaluate_model
from shared.training import train_local
from wire.protocol import CONFIG, UP_KEYS, Parts, flatten_head, unflatten_head
from wire.records import message_parts, to_recorddict

app = ClientApp()
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


def _runtime(context: Context, state: dict[str, Any] | None = None) -> tuple[RunConfig, Runtime]:
    """The parsed config and this process's runtime, with the method's node state (read once) re-installed."""
    cfg = parse_run_config(context.run_config)
    rt = get_runtime(cfg)
    if rt.method.restore is not None:
        rt.method.restore(rt.tuner, _node_state(context) if state is None else state)
    return cfg, rt


def _receive(msg: Message, cfg: RunConfig, rt: Runtime) -> tuple:
    """Check the fingerprint, decode the global values and head with the method's codec, load them."""
    conf = msg.content[CONFIG]
    if conf.get("fingerprint") != rt.tuner.fingerprint:
        raise MaskMismatchError(
            f"server mask fingerprint {str(conf.get('fingerprint'))[:12]} != this node's "
            f"{rt.tuner.fingerprint[:12]}: the nodes hold different base models or mask settings"
        )
    dtype = str(conf["value-dtype"])
    head_like = rt.tuner.head_state()
    h = sum(t.numel() for t in head_like.values())
    values, head_vec = rt.tuner.codec.decode_down(message_parts(msg)[0], dtype, rt.tuner.k, h, cfg.int8_block_size)
    rt.tuner.load(values, unflatten_head(head_vec, head_like, rt.base.head_names))
    return values, head_vec, dtype


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the method's values and the head locally; reply with the deltas only."""
    cfg, rt = _runtime(context)
    values, head_vec, dtype = _receive(msg, cfg, rt)
    pid, nparts = _node_partition(context)
    data = client_partition(cfg, rt.base.tokenizer, pid, nparts)
    server_round = int(msg.content[CONFIG].get("server-round", 0))
    fault = planned_fault(cfg.seed, pid, server_round, cfg.fail_rate, cfg.fail_mode)
    act_before_training(fault, cfg.round_timeout, pid, server_round)
    params = rt.tuner.trainable()
    lr, head_lr = rt.method.learning_rates(cfg)
    groups = [{"params": params[:1], "lr": lr}, {"params": params[1:], "lr": head_lr}]
    result = train_local(rt.base.model, groups, data, cfg.local_steps, cfg.batch_size,
                         seed=cfg.seed * 100_003 + pid * 1_009 + server_round, weight_decay=cfg.weight_decay,
                         group_by_length=cfg.group_by_length)
    delta = rt.tuner.values.detach() - values
    head_delta = flatten_head(rt.tuner.head_state(), rt.base.head_names) - head_vec
    arrays = rt.tuner.codec.encode_up(delta, head_delta, dtype, cfg.int8_block_size)
    if fault == "nan":
        arrays = poison(arrays, UP_KEYS[0])
    metrics = {"num-examples": len(data), "train-loss": result.loss, "train-seconds": result.seconds,
               "examples-seen": result.num_examples}
    content = to_recorddict(arrays, {"fingerprint": rt.tuner.fingerprint, "partition-id": pid}, metrics)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Client-side evaluation of the global model on this node's partition (metrics only)."""
    cfg, rt = _runtime(context)
    _receive(msg, cfg, rt)
    pid, nparts = _node_partition(context)
    data = client_partition(cfg, rt.base.tokenizer, pid, nparts)
    loss, acc = evaluate_model(rt.base.model, data, cfg.eval_batch_size)
    metrics = {"num-examples": len(data), "eval-loss": loss, "eval-acc": acc}
    return Message(to_recorddict({}, {"fingerprint": rt.tuner.fingerprint}, metrics), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Handshake: this node's partition, its size and the mask fingerprint (derived locally, never sent)."""
    cfg, rt = _runtime(context)
    pid, nparts = _node_partition(context)
    size = len(client_partition(cfg, rt.base.tokenizer, pid, nparts))  # the cap on what its replies may claim
    metrics = {"partition-id": pid, "num-partitions": nparts, "num-examples": size, "k": rt.tuner.k}
    return Message(to_recorddict({}, {"fingerprint": rt.tuner.fingerprint}, metrics), reply_to=msg)


def _route_handler(owner: Method, route: ClientRoute) -> Callable[[Message, Context], Message]:
    """A Flower handler around a method's plain route: parts in, parts out, node state kept."""
    def handle(msg: Message, context: Context) -> Message:
        state = _node_state(context)
        cfg, rt = _runtime(context, state)
        if rt.method.name != owner.name:  # by name: Flower may re-import the app's modules between runs
            raise ValueError(f"message {msg.metadata.message_type!r} belongs to method {owner.name!r}, "
                             f"this run's method is {rt.method.name!r}")
        pid, nparts = _node_partition(context)
        arrays, metrics, config = message_parts(msg)
        call = ClientCall(cfg=cfg, tuner=rt.tuner, base=rt.base, partition_id=pid, num_partitions=nparts,
                          request=Parts(arrays, config, metrics), state=state,
                          data=lambda: client_partition(cfg, rt.base.tokenizer, pid, nparts))
        reply: Parts = route(call)
        _keep_state(context, call.state)
        return Message(to_recorddict(reply.arrays, reply.config, reply.metrics), reply_to=msg)
    return handle


for _method in methods().values():  # every registered method's own routes: "query.<route>"
    for _name, _route in _method.client_routes.items():
        app.query(_name)(_route_handler(_method, _route))
