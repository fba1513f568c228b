"""``sam``'s client side: send gradient statistics, receive the mask once, keep it in the node state.

``sam_stats``: sum the raw loss gradients over ``sam-batches`` local batches at the pre-trained
weights (a freshly loaded base, so nothing trained or wired can leak in) and send them: the dense
(n_cand,) float32 sum as ``grad``, or with ``sam-scheme="local-top"`` only this client's top entries
as ``grad-index`` int32 + ``grad`` float32; with ``sam-scheme="refine"`` the same, followed by
``sam_refine``: the exact sum at the union of everyone's reported positions (float32 values only).
``sam_mask``: rebuild the broadcast mask, check its fingerprint, keep its positions in the node
state (a simulation may run a node's next message in another worker process) and install it.
:func:`restore` re-installs it from the node state before every message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shared.masks import MaskMismatchError
from shared.methods.base import ClientCall
from shared.methods.sam.statistic import accumulate_gradients, local_top
from shared.methods.sam.tuner import SamTuner
from shared.model import load_base_model
from wire.codec import MalformedUpdateError, encode_values
from wire.index import decode_index, encode_sparse
from wire.protocol import Parts

STATE_INDEX, STATE_FINGERPRINT = "sam-mask-index", "sam-mask-fingerprint"


def restore(tuner: SamTuner, state: dict[str, Any]) -> None:
    """Install this node's selected mask from its state, or go back to pending if it has none yet."""
    if STATE_INDEX in state and STATE_FINGERPRINT in state:
        mask = tuner.mask_from_flat_index(torch.from_numpy(np.asarray(state[STATE_INDEX]).astype(np.int64)))
        if mask.fingerprint != state[STATE_FINGERPRINT]:
            raise MaskMismatchError("the sam mask kept in this node's state does not rebuild to its fingerprint")
        tuner.install(mask)
    else:
        tuner.reset()


def _check_recipe(call: ClientCall) -> None:
    got = (call.request.config or {}).get("fingerprint")
    if got != call.tuner.recipe:
        raise MaskMismatchError(f"server's sam recipe {str(got)[:12]} != this node's {call.tuner.recipe[:12]}: "
                                f"different base model or sam-* settings")


def _local_gradient(call: ClientCall) -> tuple[torch.Tensor, int]:
    """This node's accumulated gradient (n_cand,) and the examples used.

    Deterministic (seeded by partition), so the ``refine`` pass recomputes it instead of keeping
    4*n_cand bytes per node between messages.
    """
    _check_recipe(call)
    cfg, tuner, data = call.cfg, call.tuner, call.data()
    batches = tuner.settings.batches
    pristine = load_base_model(cfg.model, int(call.base.model.config.num_labels), cfg.seed,  # θ0
                               problem_type=call.base.model.config.problem_type, kind=call.base.kind).model
    grad = accumulate_gradients(pristine, list(tuner.shapes), data, batches, cfg.batch_size,
                                seed=cfg.seed * 100_003 + call.partition_id * 1_009)
    return grad, min(len(data), batches * cfg.batch_size)


def sam_stats(call: ClientCall) -> Parts:
    """Accumulated gradients of this node's data at the pre-trained weights (no update)."""
    grad, used = _local_gradient(call)
    st, cfg = call.tuner.settings, call.cfg
    if st.scheme == "dense":
        arrays = encode_values(grad, "float32", "grad")
    else:
        idx, vals = local_top(grad, call.tuner.shapes, cfg.mask_density, st.local_factor, cfg.mask_scope)
        arrays = encode_sparse(idx, vals, "float32", "grad", cfg.int8_block_size)
    return Parts(arrays, {"fingerprint": call.tuner.recipe}, {"num-examples": used, "partition-id": call.partition_id})


def sam_refine(call: ClientCall) -> Parts:
    """``refine`` scheme, second pass: this node's exact accumulated gradient at the server's positions."""
    grad, used = _local_gradient(call)
    idx = decode_index(call.request.arrays, "union", call.tuner.num_candidates)
    return Parts(encode_values(grad[idx], "float32", "grad"), {"fingerprint": call.tuner.recipe},
                 {"num-examples": used, "partition-id": call.partition_id})


def sam_mask(call: ClientCall) -> Parts:
    """Receive the selected positions once, verify them, keep them in the node state, install the mask."""
    _check_recipe(call)
    tuner = call.tuner
    idx = decode_index(call.request.arrays, "mask", tuner.num_candidates)
    mask = tuner.mask_from_flat_index(idx)
    announced = (call.request.config or {}).get("mask-fingerprint")
    if mask.fingerprint != announced:
        raise MalformedUpdateError(f"the broadcast sam mask rebuilds to {mask.fingerprint[:12]}, "
                                   f"not the announced {str(announced)[:12]}")
    call.state[STATE_INDEX] = idx.to(torch.int32).numpy()
    call.state[STATE_FINGERPRINT] = mask.fingerprint
    tuner.install(mask)
    return Parts({}, {"fingerprint": tuner.fingerprint}, {"k": mask.k})


ROUTES = {"sam_stats": sam_stats, "sam_refine": sam_refine, "sam_mask": sam_mask}
