"""Client side of a selection phase (``sam``): send gradient statistics, receive and keep the mask.

``query.sam_stats``: sum the raw loss gradients over ``sam-batches`` local batches at the pre-trained
weights (a freshly loaded base, so nothing trained or wired can leak in) and send them: the dense
(n_cand,) float32 sum as ``grad``, or with ``sam-scheme="local-top"`` only this client's top entries
as ``grad-index`` int32 + ``grad`` float32; with ``sam-scheme="refine"`` the same, followed by
``query.sam_refine``: the exact sum at the union of everyone's reported positions (float32 values only).
``query.sam_mask``: rebuild the broadcast mask, check its fingerprint, keep its positions in the
node's ``context.state`` (a simulation may run a node's next message in another worker process) and
install it. :func:`sync_selected_mask` re-installs it from ``context.state`` before every message.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from server.wire import message_parts, to_recorddict
from shared.codec import MalformedUpdateError, encode_values
from shared.config import RunConfig, parse_run_config
from shared.masks import MaskMismatchError
from shared.model import load_base_model
from shared.protocol import CONFIG
from shared.runtime import Runtime, client_partition, get_runtime
from shared.sam import accumulate_gradients, local_top
from shared.topk import decode_index, encode_sparse

STATE_KEY, STATE_CONF = "sam-mask", "sam-mask-config"


def sync_selected_mask(context: Context, cfg: RunConfig) -> Runtime:
    """The runtime, with this node's selected mask installed (or pending if this run has none yet)."""
    rt = get_runtime(cfg)
    if not getattr(rt.tuner, "needs_selection", False):
        return rt
    if STATE_KEY in context.state and STATE_CONF in context.state:
        idx = torch.from_numpy(context.state[STATE_KEY]["index"].numpy().astype(np.int64))
        mask = rt.tuner.mask_from_flat_index(idx)
        if mask.fingerprint != context.state[STATE_CONF]["fingerprint"]:
            raise MaskMismatchError("the sam mask kept in this node's state does not rebuild to its fingerprint")
        rt.tuner.install(mask)
    else:
        rt.tuner.reset()
    return rt


def _check_recipe(msg: Message, rt: Runtime) -> None:
    got = msg.content[CONFIG].get("fingerprint")
    if got != rt.tuner.recipe:
        raise MaskMismatchError(f"server's sam recipe {str(got)[:12]} != this node's {rt.tuner.recipe[:12]}: "
                                f"different base model or sam-* settings")


def _local_gradient(msg: Message, context: Context) -> tuple[RunConfig, Runtime, torch.Tensor, int, int]:
    """(cfg, runtime, this node's accumulated gradient (n_cand,), partition id, examples used).

    Deterministic (seeded by partition), so the ``refine`` pass recomputes it instead of keeping 4*n_cand
    bytes per node between messages.
    """
    from client.client_app import _node_partition  # lazy: client_app imports this module to register it

    cfg = parse_run_config(context.run_config)
    rt = sync_selected_mask(context, cfg)
    _check_recipe(msg, rt)
    pid, nparts = _node_partition(context)
    data = client_partition(cfg, rt.base.tokenizer, pid, nparts)
    batches = rt.tuner.settings[0]
    pristine = load_base_model(cfg.model, rt.num_labels, cfg.seed).model  # θ0, same head init as everyone
    grad = accumulate_gradients(pristine, list(rt.tuner.shapes), data, batches, cfg.batch_size,
                                seed=cfg.seed * 100_003 + pid * 1_009)
    return cfg, rt, grad, pid, min(len(data), batches * cfg.batch_size)


def sam_stats(msg: Message, context: Context) -> Message:
    """Accumulated gradients of this node's data at the pre-trained weights (no update)."""
    cfg, rt, grad, pid, used = _local_gradient(msg, context)
    _, scheme, factor = rt.tuner.settings
    if scheme == "dense":
        arrays = encode_values(grad, "float32", "grad")
    else:
        idx, vals = local_top(grad, rt.tuner.shapes, cfg.mask_density, factor, cfg.mask_scope)
        arrays = encode_sparse(idx, vals, "float32", "grad", cfg.int8_block_size)
    metrics = {"num-examples": used, "partition-id": pid}
    return Message(to_recorddict(arrays, {"fingerprint": rt.tuner.recipe}, metrics), reply_to=msg)


def sam_refine(msg: Message, context: Context) -> Message:
    """``refine`` scheme, second pass: this node's exact accumulated gradient at the server's positions."""
    cfg, rt, grad, pid, used = _local_gradient(msg, context)
    idx = decode_index(message_parts(msg)[0], "union", rt.tuner.num_candidates)
    arrays = encode_values(grad[idx], "float32", "grad")
    metrics = {"num-examples": used, "partition-id": pid}
    return Message(to_recorddict(arrays, {"fingerprint": rt.tuner.recipe}, metrics), reply_to=msg)


def sam_mask(msg: Message, context: Context) -> Message:
    """Receive the selected positions once, verify them, keep them in the node state, install the mask."""
    cfg = parse_run_config(context.run_config)
    rt = sync_selected_mask(context, cfg)
    _check_recipe(msg, rt)
    arrays = message_parts(msg)[0]
    idx = decode_index(arrays, "mask", rt.tuner.num_candidates)
    mask = rt.tuner.mask_from_flat_index(idx)
    announced = msg.content[CONFIG].get("mask-fingerprint")
    if mask.fingerprint != announced:
        raise MalformedUpdateError(f"the broadcast sam mask rebuilds to {mask.fingerprint[:12]}, "
                                   f"not the announced {str(announced)[:12]}")
    context.state[STATE_KEY] = ArrayRecord({"index": Array(idx.to(torch.int32).numpy())})
    context.state[STATE_CONF] = ConfigRecord({"fingerprint": mask.fingerprint})
    rt.tuner.install(mask)
    return Message(to_recorddict({}, {"fingerprint": rt.tuner.fingerprint}, {"k": mask.k}), reply_to=msg)


def register(app: ClientApp) -> None:
    """Route ``query.sam_stats``, ``query.sam_refine`` and ``query.sam_mask``."""
    app.query("sam_stats")(sam_stats)
    app.query("sam_refine")(sam_refine)
    app.query("sam_mask")(sam_mask)
