"""SCAFFOLD and FedProx against a reference written out by hand, on the tiny BERT and fabricated sentences.

The reference loops below repeat :func:`shared.training.train_local`'s steps one by one (same seeded batches,
same dropout seed, same AdamW) and add the drift terms by their formulas; the real path (``GradientAdjuster``
through ``train_local``, ``ClientDrift`` and ``ServerDrift``) must match them bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from client.drift_state import VARIATE_META, ClientDrift, keep_variate, load_variate
from server.drift import ServerDrift
from shared.data import Encoded, batch_indices
from shared.drift import DriftTerms, GradientAdjuster, option_ii, rate_vector
from shared.runtime import get_runtime
from shared.training import adamw, train_local
from wire.drift import CONTROL, CONTROL_DELTA, CONTROL_OWN, encode_control, split_control
from wire.protocol import flatten_head, unflatten_head

LR, HEAD_LR, STEPS, BATCH, SEED = 5e-3, 1e-3, 3, 4, 11
SENTENCES = ["a fine film", "dull and long", "the cast is superb", "i wanted to leave", "warm and funny",
             "a tedious mess", "quietly moving", "nothing works here"]


@pytest.fixture()
def rt(tiny_cfg):
    runtime = get_runtime(tiny_cfg)
    runtime.tuner.load(torch.zeros(runtime.tuner.k))
    return runtime


@pytest.fixture()
def data(rt) -> Encoded:
    enc = rt.base.tokenizer(SENTENCES, truncation=True, max_length=16, padding="max_length", return_tensors="pt")
    return Encoded(enc["input_ids"], enc["attention_mask"], torch.tensor([1, 0] * 4))


def _vector(rt) -> torch.Tensor:
    """The trainable vector (k + h,) in wire order."""
    return torch.cat([rt.tuner.values.detach().clone(), flatten_head(rt.tuner.head_state(), rt.base.head_names)])


def _set(rt, vec: torch.Tensor) -> None:
    k = rt.tuner.k
    rt.tuner.load(vec[:k], unflatten_head(vec[k:], rt.tuner.head_state(), rt.base.head_names))


def _groups(rt) -> list[dict]:
    params = rt.tuner.trainable()
    return [{"params": params[:1], "lr": LR}, {"params": params[1:], "lr": HEAD_LR}]


def _real(rt, data, terms: DriftTerms | None) -> tuple[torch.Tensor, int]:
    groups = _groups(rt)
    hook = GradientAdjuster([p for g in groups for p in g["params"]], terms) if terms is not None else None
    train_local(rt.base.model, groups, data, STEPS, BATCH, SEED, group_by_length=False, adjust=hook)
    return _vector(rt), (hook.steps if hook is not None else STEPS)


def _by_hand(rt, data, correction: torch.Tensor | None, anchor: torch.Tensor | None, mu: float) -> torch.Tensor:
    """K AdamW steps on g + (c - c_i) + mu (w - anchor), each term written out."""
    groups = _groups(rt)
    params = [p for g in groups for p in g["params"]]
    opt, model = adamw(groups), rt.base.model
    torch.manual_seed(SEED)
    model.train()
    for idx in batch_indices(len(data), BATCH, STEPS, SEED, None):
        loss = model(**data.batch(idx)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            grad = torch.cat([p.grad.reshape(-1) for p in params])
            w = torch.cat([p.detach().reshape(-1) for p in params])
            if correction is not None:
                grad = grad + correction
            if mu > 0:
                grad = grad + mu * (w - anchor)
            for p, piece in zip(params, grad.split([p.numel() for p in params])):
                p.grad = piece.reshape(p.shape).clone()
        opt.step()
    model.eval()
    for p in params:
        p.grad = None
    return _vector(rt)


@pytest.mark.parametrize("parts", ["scaffold", "prox", "both"])
def test_corrected_local_training_equals_the_formula_step_by_step(rt, data, parts):
    x = _vector(rt)
    gen = torch.Generator().manual_seed(0)
    c, c_i = torch.randn(x.numel(), generator=gen) * 1e-2, torch.randn(x.numel(), generator=gen) * 1e-2
    correction = c - c_i if parts in ("scaffold", "both") else None
    mu = 0.5 if parts in ("prox", "both") else 0.0
    y, steps = _real(rt, data, DriftTerms(correction=correction, anchor=x.clone(), mu=mu))
    _set(rt, x)
    want = _by_hand(rt, data, correction, x, mu)
    if mu == 0:
        assert torch.equal(y, want)  # the same float32 additions in the same order
    else:  # add_(alpha=mu) may fuse the multiply-add that the reference rounds twice
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-7)
    assert steps == STEPS and not torch.equal(y, x)
    rates = rate_vector(rt.tuner.k, x.numel() - rt.tuner.k, LR, HEAD_LR)
    lr_of = torch.cat([torch.full((rt.tuner.k,), LR), torch.full((x.numel() - rt.tuner.k,), HEAD_LR)])
    assert torch.equal(option_ii(c_i, c, x, y, steps, rates), c_i - c + (x - y) / (STEPS * lr_of))


def test_the_gradient_variate_is_the_mean_raw_gradient_of_the_local_steps(rt, data):
    """``scaffold-variate='gradient'``: c_i+ = the mean of the minibatch gradients the K steps saw, before any term."""
    groups, seen = _groups(rt), []
    params = [p for g in groups for p in g["params"]]
    x = _vector(rt)

    class Recording(GradientAdjuster):
        def __call__(self) -> None:
            seen.append(torch.cat([p.grad.reshape(-1).clone() for p in self.params]))
            super().__call__()

    hook = Recording(params, DriftTerms(correction=torch.full((x.numel(),), 0.3)), track_gradients=True)
    train_local(rt.base.model, groups, data, STEPS, BATCH, SEED, group_by_length=False, adjust=hook)
    assert len(seen) == hook.steps == STEPS
    torch.testing.assert_close(hook.mean_gradient(), torch.stack(seen).mean(0), rtol=1e-6, atol=1e-9)
    assert float(hook.mean_gradient().abs().max()) < 0.3  # raw gradients, without the correction added to them


def test_the_adjuster_adds_exactly_the_correction_and_the_proximal_gradient(rt, data):
    params = rt.tuner.trainable()
    x = _vector(rt)
    _set(rt, x + 0.01)
    rt.base.model(**data.batch(torch.arange(4))).loss.backward()
    raw = torch.cat([p.grad.reshape(-1).clone() for p in params])
    correction, anchor = torch.linspace(-1, 1, x.numel()), x
    GradientAdjuster(params, DriftTerms(correction=correction, anchor=anchor, mu=2.0))()
    got = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(got, raw + correction + 2.0 * (x + 0.01 - anchor), rtol=1e-6, atol=1e-7)
    for p in params:
        p.grad = None


def test_fedprox_with_mu_zero_is_plain_training_bit_for_bit(rt, data):
    x = _vector(rt)
    plain, _ = _real(rt, data, None)
    _set(rt, x)
    zero, _ = _real(rt, data, DriftTerms(anchor=x.clone(), mu=0.0))
    assert torch.equal(zero, plain)
    _set(rt, x)
    pulled, _ = _real(rt, data, DriftTerms(anchor=x.clone(), mu=50.0))
    assert float((pulled - x).norm()) < float((plain - x).norm())  # the proximal term holds w near w_global


def test_option_ii_leaves_c_i_where_nothing_stepped():
    c_i, c = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5])
    out = option_ii(c_i, c, torch.zeros(2), torch.tensor([-0.2, -0.4]), 2, torch.tensor([0.1, 0.0]))
    assert torch.equal(out, torch.tensor([1.0 - 0.5 + 0.2 / 0.2, 2.0]))


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _client_round(rt, cfg, data, ctx: Context, c: torch.Tensor, x: torch.Tensor, extra: dict | None = None):
    """One client's round through the real ClientDrift (as the train handler runs it)."""
    _set(rt, x)
    params = rt.tuner.trainable()
    groups = [{"params": params[:1], "lr": LR}, {"params": params[1:], "lr": HEAD_LR}]
    control = {**encode_control(c, CONTROL, cfg.value_dtype, cfg.int8_block_size), **(extra or {})}
    drift = ClientDrift(cfg, ctx, control, params, x, rate_vector(rt.tuner.k, x.numel() - rt.tuner.k, LR, HEAD_LR),
                        rt.tuner.fingerprint)
    train_local(rt.base.model, groups, data, STEPS, BATCH, SEED, group_by_length=False, adjust=drift.adjust)
    y = _vector(rt)
    return y - x, drift.finish(y, 1)


@pytest.mark.parametrize("variate", ["gradient", "option-ii"])
def test_with_identical_clients_scaffold_equals_fedavg(rt, tiny_cfg, data, variate):
    """Full participation, identical data and seeds: c = c_i after every round, so every correction is exactly 0."""
    cfg, n, x0 = tiny_cfg.replace(drift_correction="scaffold", scaffold_variate=variate), 3, _vector(rt)
    server, contexts = ServerDrift(cfg), [_context() for _ in range(n)]
    x_avg, x_sc = x0.clone(), x0.clone()
    for _ in range(3):
        _set(rt, x_avg)
        deltas = []
        for _ in range(n):
            _set(rt, x_avg)
            y, _ = _real(rt, data, None)
            deltas.append(y - x_avg)
        x_avg = x_avg + torch.stack(deltas).mean(0)
        server.start_round(x0.numel())
        replies = [_client_round(rt, cfg, data, ctx, server.c, x_sc) for ctx in contexts]
        for node, (_, arrays) in enumerate(replies):
            server.take(node, arrays, x0.numel())
        server.absorb([(node, node) for node in range(n)], n)
        x_sc = x_sc + torch.stack([d for d, _ in replies]).mean(0)
        assert torch.equal(x_sc, x_avg)
        assert all(torch.equal(load_variate(ctx, rt.tuner.fingerprint, x0.numel()), server.c) for ctx in contexts)
    assert float(server.c.abs().max()) > 0  # the variates moved; the corrections cancelled


def test_a_rarely_sampled_client_keeps_its_stale_variate_and_a_new_one_starts_at_zero(rt, tiny_cfg, data):
    cfg, x = tiny_cfg.replace(drift_correction="scaffold"), _vector(rt)
    fp, size = rt.tuner.fingerprint, x.numel()
    sampled, never = _context(), _context()
    _client_round(rt, cfg, data, sampled, torch.zeros(size), x)
    kept = load_variate(sampled, fp, size)
    assert float(kept.abs().max()) > 0 and sampled.state.config_records[VARIATE_META]["round"] == 1
    assert torch.equal(load_variate(sampled, fp, size), kept)  # rounds without a message change nothing
    assert torch.equal(load_variate(never, fp, size), torch.zeros(size))
    assert torch.equal(load_variate(sampled, "0" * 64, size), torch.zeros(size))  # another mask's variate: unused
    own = torch.full((size,), 0.25)
    restored = _context()
    keep_variate(restored, fp, torch.ones(size), 1)  # whatever it held, control-own wins
    _, arrays = _client_round(rt, cfg, data, restored, torch.zeros(size), x,
                              encode_control(own, CONTROL_OWN, cfg.value_dtype, cfg.int8_block_size))
    sent = torch.from_numpy(np.array(arrays[CONTROL_DELTA]))
    assert torch.equal(load_variate(restored, fp, size), own + sent)


def test_the_control_arrays_split_from_the_update_and_are_strict(tiny_cfg):
    arrays = {"values": np.zeros(3, np.float32), "control": np.zeros(3, np.float32),
              "control-delta.scales": np.zeros(1, np.float32), "head": np.zeros(2, np.float32)}
    rest, control = split_control(arrays)
    assert set(rest) == {"values", "head"} and set(control) == {"control", "control-delta.scales"}
    server = ServerDrift(tiny_cfg.replace(drift_correction="scaffold"))
    with pytest.raises(ValueError, match="carries exactly"):
        server.take(1, {}, 3)  # a scaffold reply without its control-delta is refused
    with pytest.raises(ValueError, match="drift-correction='none'"):
        ServerDrift(tiny_cfg).take(1, {"control-delta": np.zeros(3, np.float32)}, 3)
