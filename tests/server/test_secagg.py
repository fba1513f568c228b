"""Secure aggregation (SecAgg+) through the real ServerApp ``main`` and ClientApp over an in-process Grid.

The clients run Flower's ``secaggplus_mod`` unchanged; the server runs the four stages with Flower's
primitives. Checked: the same values as the plain run (uniform weights) within the quantization error,
a dropout after the key exchange, what the server sees of one client in the masked stage, and the
protocol's sizes and limits.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from safetensors.torch import load_file
from scipy import stats

from client.client_app import app as client_app
from server.secagg import SecAggParams, check_capacity, neighbour_graph, protocol_sizes
from server.server_app import main
from shared.config import ConfigError, RunConfig
from tests.support.local_grid import SERVER_NODE_ID, LocalGrid
from wire.protocol import SECURE_LOSS_SCALE
from wire.records import message_parts

SECURE = {"secure-aggregation": True}


def _config(tiny_model_dir: Path, sst2_dir: Path, out: Path, nodes: int, **extra) -> dict:
    cfg = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05, "local-steps": 2,
           "batch-size": 8, "max-length": 32, "max-eval-examples": 64, "output-dir": str(out), "seed": 3,
           "num-server-rounds": 3, "fraction-train": 1.0, "min-available-nodes": nodes, "weighting": "uniform",
           "lr": 0.02, "trust-weighting": "none"}  # the plain run weighs as a secure sum can (FLTrust needs each update)
    cfg.update(extra)
    return cfg


def _run(cfg: dict, nodes: int, grid_cls=LocalGrid, **grid_kw) -> tuple[LocalGrid, list[dict], dict]:
    grid = grid_cls(client_app, cfg, nodes, error_replies=True, **grid_kw)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    out = Path(cfg["output-dir"])
    return grid, json.loads((out / "history.json").read_text()), json.loads((out / "summary.json").read_text())


def _final(out: Path) -> torch.Tensor:
    t = load_file(str(out / "delta.safetensors"))
    return torch.cat([t["values"].double()] + [t[k].reshape(-1).double() for k in sorted(t) if k.startswith("head.")])


def _stage(msg: Message) -> str | None:
    records = msg.content.config_records
    return records[RECORD_KEY_CONFIGS].get(Key.STAGE) if RECORD_KEY_CONFIGS in records else None


class DroppingGrid(LocalGrid):
    """Node ``drop`` is lost when its update is due: after the key exchange under SecAgg+ (stage 2), or its
    plain train message; the SuperLink answers for it with an error reply, as for a lost node."""

    def __init__(self, *args, drop: int, **kw):
        super().__init__(*args, **kw)
        self.drop = drop

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            stage = _stage(msg)
            if msg.metadata.dst_node_id == self.drop and msg.metadata.message_type == "train" and \
                    stage in (None, Stage.COLLECT_MASKED_VECTORS):
                msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                msg.metadata.__dict__["_src_node_id"] = SERVER_NODE_ID
                self._replies[msg.metadata.message_id] = Message(Error(code=0, reason="node unavailable"),
                                                                 reply_to=msg)
                ids.append(msg.metadata.message_id)
            else:
                ids += list(super().push_messages([msg]))
        return ids


class RecordingGrid(LocalGrid):
    """Keeps every train reply the server pulls: round 1's masked vectors, or the plain updates."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.masked: dict[int, list[np.ndarray]] = {}
        self.plain: dict[int, Message] = {}

    def push_messages(self, messages):
        messages = list(messages)
        stages = [_stage(m) for m in messages]  # before delivery: secaggplus_mod pops the stage key
        ids = list(super().push_messages(messages))
        for msg, mid, stage in zip(messages, ids, stages):
            reply = self._replies[mid]
            node = msg.metadata.dst_node_id
            if stage == Stage.COLLECT_MASKED_VECTORS and node not in self.masked:
                blobs = reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
                self.masked[node] = [bytes_to_ndarray(b) for b in blobs]
            elif stage is None and msg.metadata.message_type == "train" and node not in self.plain:
                self.plain[node] = reply
        return ids


# ---- the protocol's sizes and limits (pure) -----------------------------------------------------------
def test_protocol_sizes_follow_flowers_rule():
    params = SecAggParams(1.0, 0.6, 1.0, 2**24, 2**32)
    assert protocol_sizes(5, params) == (5, 3)
    assert protocol_sizes(2, params) == (2, 2)
    assert protocol_sizes(10, SecAggParams(0.5, 0.6, 1.0, 2**24, 2**32)) == (5, 3)
    assert protocol_sizes(10, SecAggParams(3, 2, 1.0, 2**24, 2**32)) == (3, 2)
    graph = neighbour_graph(list(range(10)), 5, seed=1)
    assert all(len(nb) == 5 and n in nb for n, nb in graph.items())
    assert graph == neighbour_graph(list(range(10)), 5, seed=1)  # seeded: the same round replays


def test_a_round_whose_sum_could_wrap_is_refused_in_one_line():
    params = SecAggParams(1.0, 0.6, 1.0, 2**24, 2**32)
    check_capacity(255, params)
    with pytest.raises(ConfigError, match="would wrap; lower secagg-quantization-range to at most 8388608"):
        check_capacity(300, params)
    with pytest.raises(ConfigError, match="at least 2 nodes per round"):
        check_capacity(1, params)


@pytest.mark.parametrize("changes,needle", [
    ({"secagg_modulus_range": 3 * 2**30}, "must be a power of two"),
    ({"secagg_modulus_range": 2**25}, "must exceed 2 x secagg-quantization-range"),
    ({"secagg_num_shares": 2.0}, "'secagg-num-shares' must be a share in (0, 1] or an integer count > 2"),
    ({"secagg_num_shares": 3.0, "secagg_reconstruction_threshold": 3.0}, "must be below secagg-num-shares"),
    ({"aggregator": "trimmed-mean"}, "cannot run aggregator 'trimmed-mean'"),
    ({"aggregator": "multi-krum", "min_train_replies": 5}, "cannot run aggregator 'multi-krum'"),
    ({"aggregator": "centered-clipping"}, "cannot run aggregator 'centered-clipping'"),
    ({"max_update_norm": 1.0}, "cannot run 'max-update-norm' (a per-client norm policy)"),
    ({"update_norm_multiple": 3.0}, "cannot run 'update-norm-multiple'"),
])
def test_secure_settings_are_checked_at_start(changes, needle):
    with pytest.raises(ConfigError) as exc:
        RunConfig(secure_aggregation=True, **changes)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    RunConfig(secure_aggregation=False, **{k: v for k, v in changes.items() if not k.startswith("secagg")})


def test_a_federation_too_large_for_the_modulus_is_refused_in_one_line(tmp_path, tiny_model_dir, sst2_dir, capsys):
    cfg = _config(tiny_model_dir, sst2_dir, tmp_path / "out", 3, **SECURE, **{"secagg-quantization-range": 2**31 - 1})
    with pytest.raises(SystemExit) as stop:  # 2 x Q < M passes at parse time; 3 sampled nodes x Q does not
        _run(cfg, 3)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert stop.value.code == 2 and "Traceback" not in err and len(lines) == 1
    assert lines[0].startswith("fedsparse: error: secure-aggregation: 3 nodes per round") and "would wrap" in lines[0]


# ---- whole runs, in-process ----------------------------------------------------------------------------
@pytest.mark.integration
def test_three_secure_rounds_equal_the_plain_run_within_the_quantization_error(tmp_path, tiny_model_dir, sst2_dir):
    nodes = 3
    _, h_plain, _ = _run(_config(tiny_model_dir, sst2_dir, tmp_path / "plain", nodes), nodes)
    _, h_sec, s_sec = _run(_config(tiny_model_dir, sst2_dir, tmp_path / "sec", nodes, **SECURE), nodes)
    plain, sec = _final(tmp_path / "plain"), _final(tmp_path / "sec")
    rel = float((sec - plain).norm() / plain.norm())
    gaps = [abs(a["accuracy"] - b["accuracy"]) for a, b in zip(h_plain, h_sec)]
    print(f"\nsecure vs plain, 3 rounds x {nodes} clients: relative difference of the final values {rel:.2e} "
          f"(step {s_sec['secagg_quantization_step']:.2e}), accuracy gaps {gaps}, train-loss "
          f"{[r['train_loss'] for r in h_sec]} vs {[r['train_loss'] for r in h_plain]}")
    assert float(plain.norm()) > 0 and rel <= 1e-3
    assert len(h_sec) == len(h_plain) == 4 and max(gaps) <= 0.005
    for rec in h_sec[1:]:
        assert rec["aggregated"] and rec["replied"] == nodes and rec["secagg"]["survivors"] == nodes
        assert abs(rec["train_loss"] - h_plain[rec["round"]]["train_loss"]) < 1e-3  # the mean loss, unmasked
        assert all(b["down"] > 0 and b["up"] > 0 for b in rec["secagg"]["bytes"].values())
        assert rec["bytes_up"] == sum(b["up"] for b in rec["secagg"]["bytes"].values())
    assert set(s_sec["secagg_bytes_per_client_round"]) == {"setup", "share_keys", "collect_masked_vectors", "unmask"}
    assert s_sec["secagg_weights"] == "uniform" and s_sec["secagg_clipping_range"] == 1.0


@pytest.mark.integration
def test_a_client_lost_after_the_key_exchange_leaves_the_survivors_sum(tmp_path, tiny_model_dir, sst2_dir):
    nodes, drop = 5, 1003  # partition 2 is lost every round when its update is due
    _, h_plain, _ = _run(_config(tiny_model_dir, sst2_dir, tmp_path / "plain", nodes), nodes, DroppingGrid, drop=drop)
    _, h_sec, _ = _run(_config(tiny_model_dir, sst2_dir, tmp_path / "sec", nodes, **SECURE), nodes, DroppingGrid,
                       drop=drop)
    for rec in h_sec[1:]:  # it shared its keys, then vanished: unmasked with its rebuilt key, round completes
        assert rec["aggregated"] and rec["replied"] == nodes - 1 and rec["failed"] == 1
        assert rec["secagg"]["survivors"] == nodes - 1 and rec["secagg"]["dropped_after_keys"] == 1
        assert rec["secagg"]["bytes"]["unmask"]["up"] > 0
    assert all(r["aggregated"] and r["replied"] == nodes - 1 for r in h_plain[1:])
    plain, sec = _final(tmp_path / "plain"), _final(tmp_path / "sec")  # the four survivors' plain mean
    rel = float((sec - plain).norm() / plain.norm())
    print(f"\none of {nodes} lost after the key exchange, 3 rounds: relative difference to the survivors' plain "
          f"aggregate {rel:.2e}")
    assert rel <= 1e-3


@pytest.mark.integration
def test_what_the_server_receives_in_the_masked_stage_is_not_the_update(tmp_path, tiny_model_dir, sst2_dir):
    nodes, one = 3, {"num-server-rounds": 1, "mask-density": 0.5}  # k = 8192: a sharp correlation test
    plain_grid, _, summary = _run(_config(tiny_model_dir, sst2_dir, tmp_path / "plain", nodes, **one), nodes,
                                  RecordingGrid)
    sec_grid, _, _ = _run(_config(tiny_model_dir, sst2_dir, tmp_path / "sec", nodes, **SECURE, **one), nodes,
                          RecordingGrid)
    assert set(sec_grid.masked) == set(plain_grid.plain) and len(sec_grid.masked) == nodes
    modulus, q, c = 2**32, 2**24, 1.0
    for node, reply in sorted(plain_grid.plain.items()):
        arrays, metrics, _ = message_parts(reply)
        update = np.concatenate([arrays["delta"], arrays["head-delta"],
                                 [metrics["train-loss"] / SECURE_LOSS_SCALE]]).astype(np.float64)
        factor, masked = sec_grid.masked[node]
        assert masked.shape == update.shape == (summary["k"] + summary["head_size"] + 1,) and factor.shape == (1,)
        corr = float(np.corrcoef(masked.astype(np.float64), update)[0, 1])
        quantized = quantize([update], c, q)[0].astype(np.float64)  # unmasked, the quantized update IS the update
        assert float(np.corrcoef(quantized, update)[0, 1]) > 0.99
        counts = np.bincount((masked // (modulus // 32)).astype(np.int64), minlength=32)
        p_uniform = float(stats.chisquare(counts).pvalue)
        print(f"\nnode {node}: corr(masked, update) {corr:+.4f}, chi-square p (32 bins over the modulus) "
              f"{p_uniform:.3f}, masked weight factor {int(factor[0])} (Q = {q})")
        assert abs(corr) < 0.05 and p_uniform > 1e-3
        assert int(factor[0]) != q  # even the weight factor is masked


@pytest.mark.integration
def test_central_dp_on_the_secure_sum_matches_dp_in_the_clear(tmp_path, tiny_model_dir, sst2_dir):
    """Each client clips its own update to dp-clip-norm before masking; the server adds the same seeded noise
    (std z*C/n with n the survivors) to the unmasked mean: the plain DP run's values, to the quantization error."""
    nodes, dp = 3, {"dp-clip-norm": 0.01, "dp-noise-multiplier": 0.5, "num-server-rounds": 2}
    _run(_config(tiny_model_dir, sst2_dir, tmp_path / "plain", nodes, **dp), nodes)
    _, h_sec, _ = _run(_config(tiny_model_dir, sst2_dir, tmp_path / "sec", nodes, **SECURE, **dp), nodes)
    plain, sec = _final(tmp_path / "plain"), _final(tmp_path / "sec")
    rel = float((sec - plain).norm() / plain.norm())
    print(f"\ncentral DP on the secure sum vs in the clear: relative difference {rel:.2e}")
    assert all(r["aggregated"] for r in h_sec[1:]) and rel <= 1e-3


class OffsetGrid(LocalGrid):
    """Node ``attacker`` adds ``offset`` (mod M) to every coordinate of its masked vector, round after round: the
    masks hide it, only the unmasked sum shows it."""

    def __init__(self, *args, attacker: int, offset: int, **kw):
        super().__init__(*args, **kw)
        self.attacker, self.offset = attacker, offset

    def push_messages(self, messages):
        messages = list(messages)
        stages = [_stage(m) for m in messages]
        ids = list(super().push_messages(messages))
        for msg, mid, stage in zip(messages, ids, stages):
            if stage == Stage.COLLECT_MASKED_VECTORS and msg.metadata.dst_node_id == self.attacker:
                conf = self._replies[mid].content.config_records[RECORD_KEY_CONFIGS]
                factor, vector = [bytes_to_ndarray(b) for b in conf[Key.MASKED_PARAMETERS]]
                vector = ((vector.astype(np.int64) + self.offset) % 2**32).astype(vector.dtype)
                conf[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(factor), ndarray_to_bytes(vector)]
        return ids


@pytest.mark.integration
def test_an_offset_masked_vector_is_caught_in_the_unmasked_sum_and_its_round_skipped(tmp_path, tiny_model_dir,
                                                                                     sst2_dir):
    """Each client clips to [-c, c]: an honest mean never leaves it. An offset hidden under the masks moved every
    coordinate of the mean by +66.7 before this check; now the round is skipped and the state kept."""
    nodes = 3
    cfg = _config(tiny_model_dir, sst2_dir, tmp_path / "sec", nodes, **SECURE, **{"num-server-rounds": 2})
    grid = OffsetGrid(client_app, cfg, nodes, error_replies=True, attacker=1001, offset=2**30)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    history = json.loads((tmp_path / "sec" / "history.json").read_text())
    for rec in history[1:]:
        assert not rec["aggregated"] and any("outside [0, 3 x 16777216]" in r for r in rec["rejected_reasons"])
    values = load_file(str(tmp_path / "sec" / "delta.safetensors"))["values"]
    assert torch.count_nonzero(values) == 0  # the merged state is the untouched start
