"""The core run settings: one typed, frozen dataclass whose fields declare every core knob once.

Each field is a kebab-case key in ``[tool.flwr.app.config]`` (pyproject.toml) with its default,
accepted range and help (:func:`shared.knobs.knob`). A method's own knobs live in its settings
class (``shared/methods/<name>/config.py``); :func:`shared.settings.parse_run_config` parses both,
refuses unknown keys and validates every value before any model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from shared.device import PRECISIONS, check_device_name
from shared.drift import DRIFT_CORRECTIONS, SCAFFOLD_VARIATES, check_drift_config
from shared.faults import FAIL_MODES
from shared.knobs import ConfigError, build, knob, knobs, validate
from shared.schedule import SCHEDULES, check_schedule
from shared.training import LOCAL_LOSSES

VALUE_DTYPES = ("float32", "float16", "bfloat16", "int8")
PARTITIONERS = ("iid", "dirichlet")
MASK_SCOPES = ("global", "per-matrix")
# run-config ``aggregator`` values; server/server_opt.py's PLANS maps each to (aggregator, server optimizer)
AGGREGATORS = ("fedavg", "median", "trimmed-mean", "centered-clipping", "multi-krum", "fedavgm", "fedadam", "fedyogi")
# the aggregators that need only the (weighted) mean of the updates: what a secure sum can feed
MEAN_AGGREGATORS = ("fedavg", "fedavgm", "fedadam", "fedyogi")

__all__ = ["ConfigError", "RunConfig", "core_config"]


@dataclass(frozen=True)
class RunConfig:
    """All core settings of one federated run; ``options`` holds the method knobs (kebab keys, parsed)."""

    method: str = knob("pafi", "how the trainable set is chosen (`python -m shared.settings` lists the methods)")
    mask_density: float = knob(0.005, "fraction of candidate entries that train", low=0, high=1, low_open=True)
    mask_scope: str = knob("global", "top-k over all candidates or the same fraction per matrix", choices=MASK_SCOPES)
    sparse_grad: bool = knob(True, "masked linears form the weight gradient only at the mask (false: dense reference)")
    device: str = knob("auto", "where models, batches and value vectors live: auto (CUDA, else MPS, else CPU), cpu, "
                       "cuda, cuda:N or mps; what travels is always on the CPU")
    precision: str = knob("fp32", "training/eval compute: fp32, or bf16 autocast (values and optimizer state stay "
                          "fp32)", choices=PRECISIONS)
    num_server_rounds: int = knob(14, "federated rounds", low=0)
    fraction_train: float = knob(0.4, "share of the nodes sampled per round", low=0, high=1, low_open=True)
    min_train_replies: int = knob(1, "valid replies needed to update the global model", low=1)
    local_steps: int = knob(10, "local AdamW steps per round", low=1)
    batch_size: int = knob(32, "local batch size", low=1)
    max_length: int = knob(64, "tokens per example (truncation)", low=8)
    group_by_length: bool = knob(True, "local batches from length-sorted chunks of 50 batches, in random order "
                                 "(less padding; false: uniformly random batches)")
    lr: float = knob(0.0, "local learning rate; 0 = the method's default", low=0)
    head_lr: float = knob(0.0, "learning rate of the dense task head; 0 = the method's (or lr)", low=0)
    weight_decay: float = knob(0.0, "AdamW weight decay", low=0)
    local_loss: str = knob("auto", "local training loss: ce (the model's own: cross-entropy, MSE for a regression), "
                           "balanced (classes weighted n / (C n_c) by the client's own labels: its label skew does not "
                           "pull the global head), or auto (balanced for a classification task, ce otherwise)",
                           choices=("auto", *LOCAL_LOSSES))
    drift_correction: str = knob("none", "client-drift correction on the aligned vectors: none, or scaffold (control "
                                 "variates c and c_i of the values + head; 2x the vector each way; docs/drift.md)",
                                 choices=DRIFT_CORRECTIONS)
    scaffold_variate: str = knob("gradient", "how a SCAFFOLD client renews c_i: gradient (the mean minibatch gradient "
                                 "of its K local steps: the units the correction is added in) or option-ii (the "
                                 "paper's c_i - c + (x - y)/(K lr): exact for SGD, ~3000x the gradients under AdamW)",
                                 choices=SCAFFOLD_VARIATES)
    prox_mu: float = knob(0.0, "FedProx: each local step adds mu * (w - w_global) to the gradient of the values + "
                          "head (the term (mu/2)||w - w_global||^2); 0 = off", low=0)
    lr_schedule: str = knob("cosine", "clients' lr over the server rounds: constant, or a linear or cosine decay to 0 "
                            "(shared/schedule.py); a run extended past its rounds needs lr-decay-rounds",
                            choices=SCHEDULES)
    lr_warmup_rounds: int = knob(0, "first rounds at a rate ramping up to lr (round r: r / (W + 1))", low=0)
    lr_decay_rounds: int = knob(0, "last rounds the linear or cosine decay covers; 0 = all after the warm-up "
                                "(fewer: a constant run annealed at its end)", low=0)
    value_dtype: str = knob("float32", "codec of the value vectors on the wire", choices=VALUE_DTYPES)
    int8_block_size: int = knob(256, "values per int8 scale", low=1)
    model: str = knob("", "Hugging Face id or local folder; empty = the bundled all-MiniLM-L6-v2")
    num_labels: int = knob(0, "classes of the task; 0 = from the dataset", low=0)
    dataset: str = knob("sst2", "a registered task (shared/tasks): sst2, agnews, or a GLUE task: cola, sst2, mrpc, "
                        "stsb, qqp, mnli, qnli, rte; or 'custom': your own data, described by the text-columns, "
                        "label-column, task-type and task-metrics keys (docs/tasks.md)")
    data_dir: str = knob("", "the task's local folder in its official layout (e.g. ../shared/data/glue/RTE; custom: "
                         "train and test files as .csv, .tsv, .json or .jsonl); empty = the Hugging Face Hub")
    tasks: str = knob("", "many tasks, one mask: 'task:nodes,...' (e.g. mnli:3,qnli:2,sst2:2,rte:1,mrpc:1,cola:1) "
                      "assigns partitions to tasks in that order; each node trains its task's data (data-dir/<the "
                      "task's folder>, e.g. ../shared/data/glue) and head, all nodes the one value vector; empty = "
                      "the one task 'dataset' (docs/multitask.md)")
    init_values: str = knob("", "start the value vector from another run of the same mask: its output-dir (or its "
                            "checkpoint.safetensors); e.g. a multi-task run's shared values for a task it never saw "
                            "(docs/multitask.md); empty = the method's initial values")
    freeze_values: bool = knob(False, "train the task head only: the value vector stays as it starts (its rate is 0 on "
                               "every client and the server applies no values step)")
    task_sampling: str = knob("stratified", "tasks: each round samples fraction-train of every task's nodes "
                              "(stratified: every task trains every round) or of all nodes at once (proportional)",
                              choices=("stratified", "proportional"))
    hub_dataset: str = knob("", "dataset='custom' from the Hub: the id passed to datasets.load_dataset (empty: read "
                            "data-dir)")
    hub_config: str = knob("", "dataset='custom' from the Hub: the dataset's configuration name, if it has several")
    text_columns: str = knob("text", "dataset='custom': the input column, or two comma-separated for a sentence pair")
    label_column: str = knob("label", "dataset='custom': the target column (class index or name; a number for a "
                             "regression)")
    task_type: str = knob("classification", "dataset='custom': classification or regression",
                          choices=("classification", "regression"))
    task_metrics: str = knob("", "dataset='custom': comma-separated metrics, the first the headline (accuracy, f1, "
                             "matthews, pearson, spearman); empty = accuracy (classification) or spearman,pearson")
    label_names: str = knob("", "dataset='custom': the classes in index order, comma-separated; empty = the sorted "
                            "distinct labels of the train split")
    partitioner: str = knob("dirichlet", "how the train split is divided among the nodes", choices=PARTITIONERS)
    dirichlet_alpha: float = knob(0.5, "label skew of the dirichlet partitioner (smaller = more skewed)", low=0,
                                  low_open=True)
    seed: int = knob(42, "seed of partitions, sampling, batches, heads and noise", low=0)
    output_dir: str = knob("outputs/run", "folder of history.json, summary.json, model/ and the checkpoint")
    aggregator: str = knob("fedavg", "aggregation of the aligned deltas (robust means, server optimizers)",
                           choices=AGGREGATORS)
    server_lr: float = knob(1.0, "server learning rate", low=0, low_open=True)
    server_momentum: float = knob(0.9, "FedAvgM momentum", low=0, high=1, high_open=True)
    server_beta1: float = knob(0.9, "FedAdam/FedYogi first-moment decay", low=0, high=1, high_open=True)
    server_beta2: float = knob(0.99, "FedAdam/FedYogi second-moment decay", low=0, high=1, high_open=True)
    server_tau: float = knob(1e-3, "FedAdam/FedYogi adaptivity", low=0, low_open=True)
    trim_fraction: float = knob(0.1, "trimmed-mean: share cut at each end per coordinate (at least 1 if > 0)",
                                low=0, high=0.5, high_open=True)
    cc_tau: float = knob(0.0, "centered-clipping: clipping radius; 0 = the median distance of the replies to the start",
                         low=0)
    cc_iterations: int = knob(3, "centered-clipping: clipping iterations from the round's coordinate median", low=1,
                              high=100)
    krum_f: int = knob(1, "multi-krum: attackers assumed per round; needs more than 2*krum-f + 2 replies", low=0)
    krum_m: int = knob(0, "multi-krum: lowest-scored replies averaged; 0 = n - krum-f", low=0)
    max_update_norm: float = knob(0.0, "bound on each client's update L2 norm (values + head); 0 = none", low=0)
    update_norm_multiple: float = knob(0.0, "bound each update's norm at this multiple of the round's median norm; "
                                       "0 = none", low=0)
    norm_policy: str = knob("clip", "an update over a norm bound is clipped to it or rejected", choices=("clip", "reject"))
    update_bound: str = knob("adaptive", "default bound on each update's L2 norm: 'adaptive' = update-bound-multiple "
                             "x a trusted scale (the server's own reference update on trusted-examples training "
                             "rows, then the bounded norms of past rounds, moving at most 1.5x a round); 'none' = "
                             "only max-update-norm / update-norm-multiple (not applied under secure-aggregation)",
                             choices=("adaptive", "none"))
    update_bound_multiple: float = knob(3.0, "update-bound='adaptive': the bound as a multiple of the trusted scale",
                                        low=1.0)
    trusted_examples: int = knob(256, "training rows the server's reference update trains on (update-bound, "
                                 "trust-weighting)", low=1)
    trust_weighting: str = knob("auto", "'cosine': weigh each update by the cosine of its direction with the server's "
                                "own reference update of the round, 0 where it is not positive (FLTrust, Cao et al., "
                                "2021; one local training on trusted-examples rows per round on the server); 'none' = "
                                "weights as 'weighting' says; 'auto' = cosine wherever it can act (a weighted-mean "
                                "aggregator, no central DP, no secure-aggregation), else none",
                                choices=("auto", "cosine", "none"))
    state_loss_ratio: float = knob(10.0, "a new global state whose server-side evaluation loss exceeds this multiple of "
                                   "the last adopted state's is not adopted (the round is skipped; honest rounds of "
                                   "the paper record rise at most 5.75x); 0 = adopt every finite state", low=0)
    weighting: str = knob("examples", "FedAvg weights: num-examples (capped at the handshake's declaration) or "
                          "uniform", choices=("examples", "uniform"))
    examples_cap_multiple: float = knob(10.0, "cap each node's declared num-examples at this multiple of the median "
                                        "declaration (honest Dirichlet partitions stay under 8x); 0 = no cap beyond "
                                        "the declaration", low=0)
    dp_clip_norm: float = knob(0.0, "central DP: L2 bound of each client's update; 0 = no clipping", low=0)
    dp_noise_multiplier: float = knob(0.0, "central DP: noise std z*C/n on the mean; 0 = no noise", low=0)
    secure_aggregation: bool = knob(False, "train rounds through SecAgg+ (Flower's): the server learns only the sum "
                                    "of the aligned updates; uniform weights")
    secagg_num_shares: float = knob(1.0, "SecAgg+ shares per secret (neighbours incl. itself): <= 1 = that share of "
                                    "the round's sampled nodes, > 2 = a count", low=0, low_open=True)
    secagg_reconstruction_threshold: float = knob(0.6, "SecAgg+ shares needed to rebuild a secret: <= 1 = that "
                                                  "share of secagg-num-shares (at least 2), >= 2 = a count", low=0,
                                                  low_open=True)
    secagg_clipping_range: float = knob(1.0, "SecAgg+: each client clips every coordinate of its update into "
                                        "[-c, c] before quantization", low=0, low_open=True)
    secagg_quantization_range: int = knob(2**24, "SecAgg+: integers per clipping range (quantization step "
                                          "2c/Q); sampled nodes x Q must stay below the modulus", low=2,
                                          high=2**31 - 1)
    secagg_modulus_range: int = knob(2**32, "SecAgg+: modulus of the masked sums, a power of two above the "
                                     "quantization range", low=4, high=2**32)
    resume: bool = knob(False, "continue from output-dir's last checkpoint")
    crash_after_round: int = knob(0, "tests only: exit hard after this round's checkpoint; 0 = never", low=0)
    fail_rate: float = knob(0.0, "fault injection: share of client rounds that fail", low=0, high=1)
    fail_mode: str = knob("raise", "fault injection: how a client fails", choices=FAIL_MODES)
    eval_split: str = knob("test", "split the server scores on: test (SST-2: the GLUE dev set papers report) or "
                           "validation (the data's own validation split, else validation-fraction of train "
                           "carved under the seed: choose learning rates here)",
                           choices=("test", "validation"))
    validation_fraction: float = knob(0.1, "eval-split='validation' where the data has no validation split: this "
                                      "share of train is held out under the seed (never trained on) and scored",
                                      low=0, high=0.5, low_open=True, high_open=True)
    max_eval_examples: int = knob(500, "server-side evaluation rows each round (the first of the held-out split); "
                                   "0 = the whole split", low=0)
    final_eval: str = knob("full", "summary.json's final metrics: on the max-eval-examples slice every round is "
                           "scored on (slice), or on the whole held-out split (full: one more evaluation at the end; "
                           "history.json keeps the slices)", choices=("slice", "full"))
    eval_batch_size: int = knob(64, "evaluation batch size", low=1)
    num_beams: int = knob(1, "causal-LM generation tasks: beams of the search (1 = greedy; the E2E papers decode with "
                          "beams, e.g. 10)", low=1, high=64)
    max_new_tokens: int = knob(64, "causal-LM generation tasks (e2e, instruction): most tokens generated per prompt "
                               "(greedy, KV cache) when the held-out slice is scored", low=1)
    round_timeout: float = knob(3600.0, "seconds to wait for a round's replies", low=0, low_open=True)
    min_available_nodes: int = knob(2, "nodes to wait for before the handshake", low=1)
    node_wait_timeout: float = knob(300.0, "seconds to wait for min-available-nodes", low=0, low_open=True)
    max_reply_mb: float = knob(512.0, "largest reply accepted, in MiB", low=0, low_open=True)
    options: Mapping[str, Any] = field(default_factory=dict)  # method knobs by kebab key (see shared.settings)

    def __post_init__(self) -> None:
        validate(self)
        check_device_name(self.device)  # availability is checked where the device is used (resolve_device)
        if self.dp_noise_multiplier > 0 and self.dp_clip_norm <= 0:
            raise ConfigError("run-config key 'dp-noise-multiplier' > 0 needs dp-clip-norm > 0 "
                              "(the noise std is z*C/n); set dp-clip-norm")
        if self.secure_aggregation:
            check_secure_aggregation(self)
        check_aggregator(self)
        check_trust(self)
        check_drift_config(self.drift_correction, self.secure_aggregation, self.dp_noise_multiplier)
        check_schedule(self.lr_schedule, self.num_server_rounds, self.lr_warmup_rounds, self.lr_decay_rounds)

    @property
    def max_reply_bytes(self) -> int:
        return int(self.max_reply_mb * 2**20)

    @property
    def trusts(self) -> bool:
        """trust-weighting resolved: 'cosine', or 'auto' where updates are weighed in a mean the server sees."""
        if self.trust_weighting != "auto":
            return self.trust_weighting == "cosine"
        return self.aggregator in MEAN_AGGREGATORS and self.dp_clip_norm <= 0 and not self.secure_aggregation

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def check_aggregator(cfg: RunConfig) -> None:
    """One-line :class:`ConfigError` for aggregator settings that cannot work in a round the run may aggregate.

    Multi-Krum scores each reply by its distances to its n - f - 2 nearest others, so it needs n > 2f + 2 replies;
    a run that may aggregate fewer (``min-train-replies``) would fail in its first short round. (Trimmed mean's
    fraction is checked by its knob's range, [0, 0.5).)
    """
    need = 2 * cfg.krum_f + 3
    if cfg.aggregator == "multi-krum" and cfg.min_train_replies < need:
        raise ConfigError(f"aggregator='multi-krum' with krum-f={cfg.krum_f} needs min-train-replies >= {need} (it "
                          f"scores each reply against its n - f - 2 nearest, so n > 2f + 2): set "
                          f"min-train-replies={need} with enough nodes sampled, or lower krum-f")


def check_trust(cfg: RunConfig) -> None:
    """One-line :class:`ConfigError` where ``trust-weighting = "cosine"`` cannot act: it sets each update's weight in a
    weighted mean, which a per-coordinate robust aggregator, central DP (equal weights by its sensitivity argument) and
    a secure sum (no update is seen) do not have."""
    if cfg.trust_weighting != "cosine":  # auto turns itself off where it cannot act (RunConfig.trusts)
        return
    if cfg.aggregator not in MEAN_AGGREGATORS:
        raise ConfigError(f"trust-weighting='cosine' sets the weights of a weighted mean; aggregator "
                          f"'{cfg.aggregator}' has none: use one of {', '.join(MEAN_AGGREGATORS)}, or "
                          f"trust-weighting='none'")
    if cfg.dp_clip_norm > 0:
        raise ConfigError("trust-weighting='cosine' weighs updates unequally, and central DP (dp-clip-norm) needs equal "
                          "weights for its sensitivity bound: use one of them")
    if cfg.secure_aggregation:
        raise ConfigError("trust-weighting='cosine' needs each update's direction, and secure-aggregation shows the "
                          "server only their sum: use one of them")


def check_secure_aggregation(cfg: RunConfig) -> None:
    """One-line :class:`ConfigError` for a setting that cannot run on a secure sum or a bad SecAgg+ range.

    The server sees only the sum of the updates: no aggregator or guard that looks at each update can run.
    Per-client DP clipping moves to the client (each clips its own update before masking).
    """
    if cfg.aggregator not in MEAN_AGGREGATORS:
        raise ConfigError(f"secure-aggregation=true cannot run aggregator '{cfg.aggregator}': it needs each "
                          f"client's update and the server sees only their sum; use one of "
                          f"{', '.join(MEAN_AGGREGATORS)}")
    for key, value in (("max-update-norm", cfg.max_update_norm), ("update-norm-multiple", cfg.update_norm_multiple)):
        if value > 0:
            raise ConfigError(f"secure-aggregation=true cannot run '{key}' (a per-client norm policy): the server "
                              f"never sees a client's update; set {key}=0 (secagg-clipping-range bounds each "
                              f"coordinate on the client, dp-clip-norm each client's L2 norm)")
    shares, threshold = cfg.secagg_num_shares, cfg.secagg_reconstruction_threshold
    if shares > 1 and (shares != int(shares) or shares <= 2):
        raise ConfigError(f"run-config key 'secagg-num-shares' must be a share in (0, 1] or an integer count > 2, "
                          f"got {shares!r}")
    if threshold > 1 and (threshold != int(threshold) or threshold < 2):
        raise ConfigError(f"run-config key 'secagg-reconstruction-threshold' must be a share in (0, 1] or an "
                          f"integer count >= 2, got {threshold!r}")
    if shares > 1 and threshold > 1 and threshold >= shares:
        raise ConfigError(f"run-config key 'secagg-reconstruction-threshold' ({threshold:g}) must be below "
                          f"secagg-num-shares ({shares:g})")
    q, m = cfg.secagg_quantization_range, cfg.secagg_modulus_range
    if m & (m - 1):
        raise ConfigError(f"run-config key 'secagg-modulus-range' must be a power of two, got {m}")
    if 2 * q >= m:  # a round has at least 2 clients; the exact n x Q < M check runs once the nodes are known
        raise ConfigError(f"run-config key 'secagg-modulus-range' ({m}) must exceed 2 x secagg-quantization-range "
                          f"({q}) so a sum of quantized updates cannot wrap; raise the modulus or lower the range")


CORE_KEYS = frozenset(knobs(RunConfig))

# Knobs whose default changed, with the value a run made before the change ran with (its checkpoint may hold that
# value, or lack the key where the knob is newer). A resumed run keeps it unless the resuming run sets the key to
# something other than today's default: a changed default never changes what a run of record trains with.
CHANGED_DEFAULTS: dict[str, Any] = {"examples-cap-multiple": 0.0, "state-loss-ratio": 0.0, "update-bound": "none",
                                     "local-loss": "ce", "trust-weighting": "none", "fraction-train": 0.5,
                                     "num-server-rounds": 10, "lr-schedule": "constant", "max-eval-examples": 0,
                                     "final-eval": "slice",  # session 23: the first run's defaults (issue 42)
                                     "lora-target-modules": "query,value"}  # (a method's knob: lora's, now "auto")


def core_config(run_config: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from Flower's flat ``run_config`` (core keys; others are ignored here)."""
    return build(RunConfig, run_config, options=dict(options or {}))
