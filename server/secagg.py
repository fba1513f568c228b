"""SecAgg+ arithmetic on the server (Bell et al., CCS 2020), from Flower's own primitives.

The clients run Flower's ``secaggplus_mod`` unchanged; the server runs the four stages itself
(``server/secure_round.py``) so that the one strategy keeps its handshake, its wall and ``server_step``.
This module is the pure part: the protocol's sizes, the neighbour graph, the checks of each stage's
replies and the unmasking of the sum, with Flower's Shamir shares, key agreement, PRG masks and
(de)quantization (``flwr.common.secure_aggregation``).

What a client sends in the masked stage is ``[Q, q(x)] + private mask ± pairwise masks (mod M)``
where ``x`` = delta ‖ head delta ‖ train-loss / 64 (``wire.protocol.secure_vector``), each coordinate
clipped into [-c, c] and quantized to [0, Q] with stochastic rounding. Every client weighs 1
(``max_weight`` = ``num_examples`` = 1, so the weight factor is exactly Q): the weights are uniform and
no client's example count is sent. Unmasked, the sum gives the survivors' plain mean.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (factor_extract, parameters_addition,
                                                                 parameters_mod, parameters_subtraction)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from shared.config import ConfigError, RunConfig
from wire.codec import MalformedUpdateError

MAX_KEY_BYTES = 1024  # a public key (PEM-less, ~90 B) or a Shamir share (~70 B) is far smaller


class SecureAggregationError(RuntimeError):
    """A secure round cannot finish (too few survivors or shares); the round is skipped, the run goes on."""


@dataclass(frozen=True)
class SecAggParams:
    """The run's SecAgg+ knobs (``secagg-*``)."""

    num_shares: float
    threshold: float
    clipping_range: float
    quantization_range: int
    modulus_range: int

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "SecAggParams":
        return cls(cfg.secagg_num_shares, cfg.secagg_reconstruction_threshold, cfg.secagg_clipping_range,
                   cfg.secagg_quantization_range, cfg.secagg_modulus_range)

    @property
    def step(self) -> float:
        """The quantization step 2c/Q: stochastic rounding moves a coordinate by less than this."""
        return 2 * self.clipping_range / self.quantization_range


def protocol_sizes(num_sampled: int, params: SecAggParams) -> tuple[int, int]:
    """(shares per secret, reconstruction threshold) for a round of ``num_sampled`` nodes (Flower's rule).

    A share (<= 1) is that fraction of the sampled nodes, made odd, at least 3 (else all of them); a
    threshold share is that fraction of the shares, at least 2. Counts are used as given, at most n.
    """
    if params.num_shares <= 1:
        shares = round(params.num_shares * num_sampled)
        if shares < num_sampled and shares % 2 == 0:
            shares += 1
        if shares <= 2:
            shares = num_sampled
    else:
        shares = int(params.num_shares)
    shares = min(shares, num_sampled)
    if params.threshold <= 1:
        threshold = max(round(params.threshold * shares), 2)
    else:
        threshold = int(params.threshold)
    return shares, threshold


def check_capacity(num_sampled: int, params: SecAggParams) -> None:
    """One-line :class:`ConfigError` unless a round's nodes can run SecAgg+ and their sum cannot wrap."""
    shares, threshold = protocol_sizes(max(num_sampled, 2), params)
    if num_sampled < 2:
        raise ConfigError(f"secure-aggregation=true needs at least 2 nodes per round, this run samples "
                          f"{num_sampled}; raise fraction-train or connect more nodes")
    if num_sampled * params.quantization_range >= params.modulus_range:
        raise ConfigError(f"secure-aggregation: {num_sampled} nodes per round x secagg-quantization-range "
                          f"{params.quantization_range} >= secagg-modulus-range {params.modulus_range}: the sum "
                          f"would wrap; lower secagg-quantization-range to at most "
                          f"{2 ** int(math.log2((params.modulus_range - 1) // num_sampled))} or lower fraction-train")
    if threshold > shares:
        raise ConfigError(f"secure-aggregation: reconstruction threshold {threshold} > {shares} shares for "
                          f"{num_sampled} nodes per round; lower secagg-reconstruction-threshold")


def neighbour_graph(nodes: list[int], shares: int, seed: int) -> dict[int, set[int]]:
    """Node -> its ``shares`` neighbours (itself included) on a seeded ring, as Flower's workflow builds it."""
    order = sorted(nodes)
    random.Random(seed).shuffle(order)
    half, n = shares >> 1, len(order)
    return {nid: {order[(i + off) % n] for off in range(-half, half + 1)} for i, nid in enumerate(order)}


def short_of_threshold(owners: set[int], alive: set[int], graph: Mapping[int, set[int]], threshold: int) -> list[int]:
    """The owners with fewer than ``threshold`` live neighbours (their secrets could not be rebuilt)."""
    return sorted(nid for nid in owners if len(graph[nid] & alive) < threshold)


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or not 0 < len(value) <= MAX_KEY_BYTES:
        raise MalformedUpdateError(f"{what} must be 1..{MAX_KEY_BYTES} bytes")
    return value


def _int_list(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or any(type(v) is not int for v in value):
        raise MalformedUpdateError(f"{what} must be a list of node ids")
    return value


def parse_public_keys(configs: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Stage 0 reply: (pk1, pk2)."""
    return _bytes(configs.get(Key.PUBLIC_KEY_1), "pk1"), _bytes(configs.get(Key.PUBLIC_KEY_2), "pk2")


def parse_key_shares(configs: Mapping[str, Any], neighbours: set[int]) -> list[tuple[int, bytes]]:
    """Stage 1 reply: (destination, ciphertext) pairs, each destination a neighbour, none twice."""
    dsts = _int_list(configs.get(Key.DESTINATION_LIST), "dsts")
    ctxts = configs.get(Key.CIPHERTEXT_LIST)
    if not isinstance(ctxts, list) or len(ctxts) != len(dsts) or len(set(dsts)) != len(dsts):
        raise MalformedUpdateError("dsts and ctxts must be lists of the same length, one per neighbour")
    if not set(dsts) <= neighbours:
        raise MalformedUpdateError("key shares addressed to nodes that are not this node's neighbours")
    return [(d, _bytes(c, "ciphertext")) for d, c in zip(dsts, ctxts)]


def parse_masked_vector(configs: Mapping[str, Any], length: int, modulus: int) -> list[np.ndarray]:
    """Stage 2 reply: [factor (1,), masked vector (length,)], int64 in [0, modulus)."""
    from flwr.common import bytes_to_ndarray  # np.load(allow_pickle=False)

    blobs = configs.get(Key.MASKED_PARAMETERS)
    if not isinstance(blobs, list) or len(blobs) != 2 or not all(isinstance(b, bytes) for b in blobs):
        raise MalformedUpdateError("masked_params must be two arrays (weight factor, masked vector)")
    arrays = [bytes_to_ndarray(b) for b in blobs]
    for arr, size in zip(arrays, (1, length)):
        if arr.dtype != np.int64 or arr.shape != (size,):
            raise MalformedUpdateError(f"masked array of dtype {arr.dtype} and shape {arr.shape}; expected "
                                       f"int64 ({size},)")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= modulus):
            raise MalformedUpdateError("masked values outside [0, secagg-modulus-range)")
    return arrays


def parse_unmask_shares(configs: Mapping[str, Any], asked: set[int]) -> list[tuple[int, bytes]]:
    """Stage 3 reply: (owner, share) pairs for exactly the owners this node was asked about."""
    nids = _int_list(configs.get(Key.NODE_ID_LIST), "nids")
    shares = configs.get(Key.SHARE_LIST)
    if not isinstance(shares, list) or len(shares) != len(nids) or set(nids) != asked or len(nids) != len(asked):
        raise MalformedUpdateError("nids/shares must list one share for each node asked about")
    return [(n, _bytes(s, "share")) for n, s in zip(nids, shares)]


def unmask_mean(masked: Mapping[int, list[np.ndarray]], seed_shares: Mapping[int, list[bytes]],
                sk1_shares: Mapping[int, list[bytes]], pk1: Mapping[int, bytes], graph: Mapping[int, set[int]],
                params: SecAggParams, threshold: int) -> np.ndarray:
    """The survivors' plain mean (d,) float64 from their masked vectors and the collected shares.

    ``masked``: survivor -> its two masked arrays; ``seed_shares``: survivor -> shares of its private-mask
    seed; ``sk1_shares``: node that dropped after the key exchange -> shares of its first secret key
    (to remove its pairwise masks from its surviving neighbours' vectors). Raises
    :class:`SecureAggregationError` when a secret has fewer than ``threshold`` shares.
    """
    m, q, c = params.modulus_range, params.quantization_range, params.clipping_range
    shapes = [a.shape for a in next(iter(masked.values()))]
    total = None
    for nid in sorted(masked):
        total = masked[nid] if total is None else parameters_addition(total, masked[nid])
    total = parameters_mod(total, m)
    for owners, kind in ((seed_shares, "private-mask seed"), (sk1_shares, "secret key")):
        for nid, shares in owners.items():
            if len(shares) < threshold:
                raise SecureAggregationError(f"only {len(shares)} shares of node {nid}'s {kind} (threshold "
                                             f"{threshold}): the sum cannot be unmasked")
    for nid in sorted(seed_shares):
        total = parameters_subtraction(total, pseudo_rand_gen(combine_shares(seed_shares[nid]), m, shapes))
    for nid in sorted(sk1_shares):  # a dropped node's pairwise masks stay in its surviving neighbours' vectors
        secret = bytes_to_private_key(combine_shares(sk1_shares[nid]))
        for other in sorted((graph[nid] - {nid}) & set(masked)):
            mask = pseudo_rand_gen(generate_shared_key(secret, bytes_to_public_key(pk1[other])), m, shapes)
            total = parameters_addition(total, mask) if nid > other else parameters_subtraction(total, mask)
    total = parameters_mod(total, m)
    factor, vectors = factor_extract(total)
    n = len(masked)
    if int(factor) != n * q:  # every client weighs exactly Q: anything else is a corrupted sum
        raise SecureAggregationError(f"the unmasked weight total is {int(factor)}, not {n} x {q}: the sum is corrupt")
    check_sum_range(vectors, n, q)
    summed = dequantize(vectors, c, q)[0] - (n - 1) * c  # dequantize shifts by -c once; n shifts were added
    return summed / n


def check_sum_range(vectors: list[np.ndarray], n: int, q: int) -> None:
    """Every coordinate of an honest sum of ``n`` quantized vectors lies in [0, n x Q] (each client clips to [-c, c]
    and quantizes to [0, Q]), so its mean lies in [-c, c]; a coordinate outside is a client's offset on its masked
    vector (the masks hide it until the sum): :class:`SecureAggregationError`, and the round is skipped."""
    for arr in vectors:
        ints = np.asarray(arr).astype(np.int64)
        bad = int(((ints < 0) | (ints > n * q)).sum())
        if bad:
            raise SecureAggregationError(f"{bad} of {ints.size} coordinates of the unmasked sum lie outside [0, {n} x "
                                         f"{q}], what {n} clipped clients can produce (the mean would leave "
                                         f"[-c, c]): a client offset its masked vector")


def secure_summary(cfg: RunConfig, rounds: list[dict], payload_bytes: int) -> dict:
    """summary.json fields of a secure run: the ranges, and bytes per client-round of every stage.

    Per client-round = a stage's bytes over all rounds / the (client, round) pairs sampled. The overhead
    ratio is the total over the unframed payload of a values-only round trip (down + up, value-dtype).
    """
    if not cfg.secure_aggregation:
        return {"secure_aggregation": False}
    pairs = max(1, sum(r["sampled"] for r in rounds))
    stages: dict[str, dict[str, float]] = {}
    for r in rounds:
        for stage, b in ((r.get("secagg") or {}).get("bytes") or {}).items():
            entry = stages.setdefault(stage, {"down": 0.0, "up": 0.0})
            entry["down"] += b["down"] / pairs
            entry["up"] += b["up"] / pairs
    total = sum(b["down"] + b["up"] for b in stages.values())
    params = SecAggParams.from_config(cfg)
    return {"secure_aggregation": True, "secagg_weights": "uniform",
            "secagg_clipping_range": params.clipping_range, "secagg_quantization_range": params.quantization_range,
            "secagg_modulus_range": params.modulus_range, "secagg_quantization_step": params.step,
            "secagg_bytes_per_client_round": stages, "secagg_total_bytes_per_client_round": total,
            "secagg_overhead_vs_payload": total / max(1, 2 * payload_bytes),
            "secagg_dropped_after_keys": sum((r.get("secagg") or {}).get("dropped_after_keys", 0) for r in rounds)}
