"""Flower ClientApp: thin handlers that call shared/ (model, mask, local training, codec)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.selection import register as register_selection
from client.selection import sync_selected_mask
from client.topk import register as register_topk
from shared.config import RunConfig, parse_run_config
from shared.faults import act_before_training, planned_fault, poison
from shared.masks import MaskMismatchError
from server.wire import message_parts, to_recorddict
from shared.protocol import CONFIG, DOWN_KEYS, UP_KEYS, decode_pair, encode_pair, flatten_head, unflatten_head
from shared.runtime import client_partition, get_runtime
from shared.training import evaluate as evaluate_model
from shared.training import train_local

app = ClientApp()
register_topk(app)  # "train.topk": the index-carrying baseline (client/topk.py)
register_selection(app)  # "query.sam_stats" / "query.sam_mask": sam's selection phase (client/selection.py)


def _node_partition(context: Context) -> tuple[int, int]:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError("node config lacks partition-id/num-partitions; start the SuperNode with "
                         "--node-config \"partition-id=0 num-partitions=N\"")
    return int(node["partition-id"]), int(node["num-partitions"])


def _receive(msg: Message, cfg: RunConfig):
    """Check the fingerprint, decode the global values and head, load them into the tuner."""
    rt = get_runtime(cfg)
    conf = msg.content[CONFIG]
    if conf.get("fingerprint") != rt.tuner.fingerprint:
        raise MaskMismatchError(
            f"server mask fingerprint {str(conf.get('fingerprint'))[:12]} != this node's "
            f"{rt.tuner.fingerprint[:12]}: the nodes hold different base models or mask settings"
        )
    dtype = str(conf["value-dtype"])
    head_like = rt.tuner.head_state()
    h = sum(t.numel() for t in head_like.values())
    values, head_vec = decode_pair(message_parts(msg)[0], DOWN_KEYS, dtype, rt.tuner.k, h,
                                   cfg.int8_block_size)
    rt.tuner.load(values, unflatten_head(head_vec, head_like, rt.base.head_names))
    return rt, values, head_vec, dtype


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the masked entries and the head locally; reply with the deltas only."""
    cfg = parse_run_config(context.run_config)
    sync_selected_mask(context, cfg)  # a selected (sam) mask lives in the node state; no-op otherwise
    rt, values, head_vec, dtype = _receive(msg, cfg)
    pid, nparts = _node_partition(context)
    data = client_partition(cfg, rt.base.tokenizer, pid, nparts)
    server_round = int(msg.content[CONFIG].get("server-round", 0))
    fault = planned_fault(cfg.seed, pid, server_round, cfg.option("fail-rate", 0.0), cfg.option("fail-mode", "raise"))
    act_before_training(fault, cfg.round_timeout, pid, server_round)
    params = rt.tuner.trainable()
    groups = [{"params": params[:1], "lr": cfg.lr}, {"params": params[1:], "lr": cfg.effective_head_lr}]
    result = train_local(rt.base.model, groups, data, cfg.local_steps, cfg.batch_size,
                         seed=cfg.seed * 100_003 + pid * 1_009 + server_round, weight_decay=cfg.weight_decay)
    delta = rt.tuner.values.detach() - values
    head_delta = flatten_head(rt.tuner.head_state(), rt.base.head_names) - head_vec
    arrays = encode_pair(delta, head_delta, UP_KEYS, dtype, cfg.int8_block_size)
    if fault == "nan":
        arrays = poison(arrays, UP_KEYS[0])
    metrics = {"num-examples": len(data), "train-loss": result.loss, "train-seconds": result.seconds,
               "examples-seen": result.num_examples}
    content = to_recorddict(arrays, {"fingerprint": rt.tuner.fingerprint, "partition-id": pid}, metrics)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Client-side evaluation of the global model on this node's partition (metrics only)."""
    cfg = parse_run_config(context.run_config)
    sync_selected_mask(context, cfg)  # a selected (sam) mask lives in the node state; no-op otherwise
    rt, _, _, _ = _receive(msg, cfg)
    pid, nparts = _node_partition(context)
    data = client_partition(cfg, rt.base.tokenizer, pid, nparts)
    loss, acc = evaluate_model(rt.base.model, data, cfg.eval_batch_size)
    metrics = {"num-examples": len(data), "eval-loss": loss, "eval-acc": acc}
    return Message(to_recorddict({}, {"fingerprint": rt.tuner.fingerprint}, metrics), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Handshake: report this node's partition and mask fingerprint (derived locally, never sent)."""
    cfg = parse_run_config(context.run_config)
    sync_selected_mask(context, cfg)  # a selected (sam) mask lives in the node state; no-op otherwise
    rt = get_runtime(cfg)
    pid, nparts = _node_partition(context)
    metrics = {"partition-id": pid, "num-partitions": nparts, "k": rt.tuner.k}
    return Message(to_recorddict({}, {"fingerprint": rt.tuner.fingerprint}, metrics), reply_to=msg)
