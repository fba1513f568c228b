"""``train.topk`` on the client: load the global change (index+value), train densely, upload the k
largest-|delta| entries with their int32 positions (the index overhead a shared mask avoids)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from server.wire import message_parts, to_recorddict
from shared.codec import decode_values, encode_values
from shared.config import parse_run_config
from shared.masks import MaskMismatchError
from shared.protocol import CONFIG, flatten_head, unflatten_head
from shared.runtime import client_partition, get_runtime
from shared.topk import decode_sparse, encode_sparse, to_dense, top_entries
from shared.training import train_local


def train_topk(msg: Message, context: Context) -> Message:
    """Dense local training from the global state; reply with top-k (positions, values) and the head delta."""
    from client.client_app import _node_partition  # lazy: client_app imports this module to register it

    cfg = parse_run_config(context.run_config)
    rt = get_runtime(cfg)
    conf = msg.content[CONFIG]
    if conf.get("fingerprint") != rt.tuner.fingerprint:
        raise MaskMismatchError(f"server fingerprint {str(conf.get('fingerprint'))[:12]} != this node's "
                                f"{rt.tuner.fingerprint[:12]}: different base model or topk settings")
    dtype, block, n = str(conf["value-dtype"]), cfg.int8_block_size, rt.tuner.k
    arrays = message_parts(msg)[0]
    head_like = rt.tuner.head_state()
    h = sum(t.numel() for t in head_like.values())
    idx, vals = decode_sparse({k: v for k, v in arrays.items() if k.startswith("values")}, "values", dtype, n, block)
    head_vec = decode_values({k: v for k, v in arrays.items() if k.startswith("head")}, dtype, h, "head", block)
    values = to_dense(idx, vals, n)
    rt.tuner.load(values, unflatten_head(head_vec, head_like, rt.base.head_names))
    pid, nparts = _node_partition(context)
    data = client_partition(cfg, rt.base.tokenizer, pid, nparts)
    server_round = int(conf.get("server-round", 0))
    params = rt.tuner.trainable()
    groups = [{"params": params[:1], "lr": cfg.lr}, {"params": params[1:], "lr": cfg.effective_head_lr}]
    result = train_local(rt.base.model, groups, data, cfg.local_steps, cfg.batch_size,
                         seed=cfg.seed * 100_003 + pid * 1_009 + server_round, weight_decay=cfg.weight_decay)
    top_idx, top_vals = top_entries(rt.tuner.values.detach() - values, rt.tuner.topk_k)
    out = encode_sparse(top_idx, top_vals, dtype, "delta", block)
    out.update(encode_values(flatten_head(rt.tuner.head_state(), rt.base.head_names) - head_vec, dtype,
                             "head-delta", block))
    metrics = {"num-examples": len(data), "train-loss": result.loss, "train-seconds": result.seconds,
               "examples-seen": result.num_examples}
    return Message(to_recorddict(out, {"fingerprint": rt.tuner.fingerprint, "partition-id": pid}, metrics),
                   reply_to=msg)


def register(app: ClientApp) -> None:
    """Route ``train.topk`` messages to :func:`train_topk`."""
    app.train("topk")(train_topk)
