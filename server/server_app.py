"""Flower ServerApp: build the shared state, run the sparse strategy, evaluate, write the outputs."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.checkpoint import CheckpointError
from server.handshake import HandshakeError
from server.linkstate_index import install as install_linkstate_index
from server.multitask import TaskSuite, multitask_fingerprint
from server.outputs import save_final_model, write_json
from server.reference import reference_update, trusted_sample
from server.recovery import (checkpoint_round, kept_defaults, prepare_output_dir, resolved_settings,
                             resume_from_checkpoint, run_identity, saved_selection, start_values)
from server.secagg import secure_summary
from server.selection import run_selection
from server.strategy import GlobalState, RoundLog, SparseStrategy
from server.validation import Expected
from shared.config import ConfigError, RunConfig
from shared.data import DataLoadError, data_fingerprint, held_out, run_splits
from shared.device import resolve_device, to_cpu
from shared.masks import MaskError
from shared.model import ModelLoadError
from shared.runtime import Runtime, extra_held_out, get_runtime, test_split
from shared.schedule import describe
from shared.multitask import parse_tasks, task_configs
from shared.settings import parse_run_config
from shared.tasks import score_of, short_name, task_of
from shared.tasks.metrics import higher_is_better
from shared.training import Evaluation, evaluate
from wire.protocol import BYTES_PER_VALUE, flatten_head, unflatten_head

install_linkstate_index()  # the Simulation Engine's hand-out: O(messages), not O(nodes x messages)
app = ServerApp()
log = logging.getLogger("fedsparse.server")


class RunRecorder:
    """Evaluates the global model after each round and keeps history.json up to date.

    Every round's record carries every metric of the task (``metrics``), its headline value (``score``) and, where
    the task has accuracy, ``accuracy`` as before, so tools that read accuracy keep reading it. Which way the
    headline is better is the task's metric's (``higher_is_better`` in the summary: perplexity is lower-better). A
    generation task's few generated samples per round go to ``samples.jsonl`` (one JSON object per line)."""

    def __init__(self, cfg: RunConfig, rt: Runtime, out: Path, suite: TaskSuite | None = None):
        self.cfg, self.rt, self.out, self.suite = cfg, rt, out, suite
        # a multi-task run (suite): every task scored, the headline is the mean of the tasks' headlines
        self.task = task_of(cfg) if suite is None else None
        self.headline = "average" if suite is not None else self.task.headline
        self.test = test_split(cfg, rt.base.tokenizer) if suite is None else None
        if not cfg.resume:  # a new run in this folder: its samples only
            (out / "samples.jsonl").unlink(missing_ok=True)
        self.history: list[dict] = []
        self.t_start = time.perf_counter()
        self._last: tuple[GlobalState, Evaluation, float] | None = None  # the last state evaluated, figures, seconds
        self.reference_seconds: dict[int, float] = {}  # round -> seconds of the server's reference update

    def evaluate(self, state: GlobalState) -> Evaluation:
        """Loss and metrics of ``state`` on the held-out split; a state vetted before adoption is not evaluated
        twice (the strategy's ``vet`` and the round's record share the figures of the same state object)."""
        if self._last is not None and self._last[0] is state:
            return self._last[1]
        t0 = time.perf_counter()
        if self.suite is not None:
            out = self.suite.evaluate(state.values, state.head)
        else:
            head = unflatten_head(state.head, self.rt.tuner.head_state(), self.rt.base.head_names)
            self.rt.tuner.load(state.values, head)
            out = self.score(self.rt.base.model, self.test)  # on the device
        self._last = (state, out, time.perf_counter() - t0)
        return out

    def headline_of(self, ev: Evaluation) -> float:
        """A state's headline value: the task's headline metric, or the mean of the tasks' (a multi-task run)."""
        return self.suite.average(ev.metrics) if self.suite is not None else ev.metrics[self.task.headline]

    def score(self, model, data) -> Evaluation:
        return evaluate(model, data, self.task, self.cfg.eval_batch_size, self.cfg.precision, self.cfg.max_new_tokens,
                        self.cfg.num_beams)

    def record(self, rl: RoundLog, state: GlobalState, seconds: float) -> dict:
        ev = self.evaluate(state)  # where the time of a round goes: its evaluation, the server's reference update
        score = self.headline_of(ev)
        rec = {"round": rl.round, **({"accuracy": ev.metrics["accuracy"]} if "accuracy" in ev.metrics else {}),
               "score": score, "metrics": ev.metrics, "loss": ev.loss, "train_loss": rl.train_loss,
               "sampled": rl.sampled, "replied": rl.replied, "rejected": rl.rejected, "failed": rl.failed,
               "rejected_reasons": rl.reasons, "aggregated": rl.aggregated,
               "bytes_up": rl.bytes_up, "bytes_down": rl.bytes_down, "codec_rel_error": rl.codec_rel_error,
               "round_seconds": seconds, "train_seconds": rl.train_seconds, "worker_nodes": rl.worker_nodes,
               "norm_bound": rl.norm_bound, "norm_median": rl.norm_median, "trust_scores": rl.trust_scores,
               "eval_seconds": self._last[2], "reference_seconds": self.reference_seconds.pop(rl.round, 0.0)}
        if rl.secagg is not None:
            rec["secagg"] = rl.secagg
        self.history.append(rec)
        write_json(self.out / "history.json", self.history)
        if ev.samples:
            with open(self.out / "samples.jsonl", "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"round": rl.round, **s}, ensure_ascii=False) + "\n" for s in ev.samples)
        print(f"[round {rl.round:>3}/{self.cfg.num_server_rounds}] {short_name(self.headline)} {score:.4f}  "
              f"loss {ev.loss:.4f}  replies {rl.replied}/{rl.sampled}  up {rl.bytes_up / 1e3:,.1f} kB  "
              f"down {rl.bytes_down / 1e3:,.1f} kB  {seconds:.1f}s", flush=True)
        return rec

    @property
    def whole(self) -> bool:
        """Whether the final state is scored on the whole held-out split apart from the rounds' slice."""
        return self.cfg.final_eval == "full" and self.cfg.max_eval_examples > 0

    def final_metrics(self, final: GlobalState) -> dict[str, float]:
        """The final state's metrics (``final-eval``: on the rounds' slice, or the whole split), and where the run
        scores on test, every further held-out split of the task (MNLI's mismatched dev set:
        ``accuracy_mismatched``)."""
        metrics = dict(self.evaluate(final).metrics)  # loads the final state (a vetted, refused one may be loaded)
        cfg = self.cfg.replace(max_eval_examples=0) if self.whole else self.cfg
        if self.suite is not None:  # by task: {task: {metric: value}}, each task's further splits beside
            if self.whole:
                metrics = self.suite.evaluate(final.values, final.head, self.suite.whole_tests()).metrics
            metrics = {name: dict(m) for name, m in metrics.items()}
            if self.cfg.eval_split == "test":
                for suffix, splits in self.suite.extra_held_out(self.whole).items():
                    for name, m in self.suite.evaluate(final.values, final.head, splits).metrics.items():
                        metrics[name].update({f"{metric}_{suffix}": v for metric, v in m.items()})
            return metrics
        if self.whole:
            metrics = dict(self.score(self.rt.base.model, test_split(cfg, self.rt.base.tokenizer)).metrics)
        for split, data in extra_held_out(cfg, self.rt.base.tokenizer).items():
            suffix = split.removeprefix("test_")
            metrics.update({f"{name}_{suffix}": v for name, v in self.score(self.rt.base.model, data).metrics.items()})
        return metrics

    def summary(self, strategy: SparseStrategy) -> dict:
        rounds = [r for r in self.history if r["round"] >= 1]
        up = sum(r["bytes_up"] for r in rounds) / max(1, sum(r["replied"] + r["rejected"] for r in rounds))
        down = sum(r["bytes_down"] for r in rounds) / max(1, sum(r["sampled"] for r in rounds))
        n_params = sum(p.numel() for p in self.rt.base.model.parameters())
        k, h = self.rt.tuner.k, strategy.expected.head_size
        bpv = BYTES_PER_VALUE[self.cfg.value_dtype]
        lr, head_lr = self.rt.method.learning_rates(self.cfg)
        payload = self.rt.tuner.payload_bytes(bpv)  # one upload without framing, as the method's codec counts it
        return {
            "method": self.cfg.method, "num_params": n_params, "num_trainable": k + h, "k": k, "head_size": h,
            "head_names": list(self.rt.base.head_names),  # the dense part that travels: [] for a tied, frozen LM head
            "mask_density": self.cfg.mask_density, "value_dtype": self.cfg.value_dtype,
            "bytes_up_per_client_round": up, "bytes_down_per_client_round": down,
            "dense_bytes_per_client_round": n_params * 4,
            "value_bytes_per_client_round": payload,
            "headline_metric": self.headline, "higher_is_better": higher_is_better(self.headline),
            "final_score": score_of(self.history[-1]) if self.history else None,
            **({"final_accuracy": self.history[-1]["accuracy"] if self.history else None}
               if self.task is not None and "accuracy" in self.task.metrics else {}),
            "rounds": len(rounds), "wall_seconds": time.perf_counter() - self.t_start,
            "seconds_per_round": sum(r["round_seconds"] for r in rounds) / max(1, len(rounds)),
            "mask_fingerprint": self.rt.tuner.fingerprint, "model": self.rt.base.source,
            "dataset": self.cfg.tasks or self.cfg.dataset, "seed": self.cfg.seed,
            "lr": lr, "head_lr": head_lr,
            **secure_summary(self.cfg, rounds, payload),
            **(self.suite_summary(k) if self.suite is not None else {}),
        }

    def whole_final(self, summary: dict) -> None:
        """With ``final-eval = "full"``: the summary's final figures are the whole split's (``metrics``), the rounds'
        slice's beside them (``final_score_slice``)."""
        summary["final_eval"] = "full" if self.whole else "slice"
        if not self.whole:
            return
        metrics = summary["metrics"]
        summary["final_score_slice"] = summary["final_score"]
        summary["final_score"] = (self.suite.average(metrics) if self.suite is not None
                                  else metrics[self.task.headline])
        if "final_accuracy" in summary:
            summary["final_accuracy"] = metrics["accuracy"]

    def suite_summary(self, k: int) -> dict:
        """A multi-task run's own figures: each task's nodes, head and headline, and what must be stored (float32):
        one value vector and a head per task, against one vector and head per task from single-task runs."""
        layout, nodes = self.suite.layout, {slot.name: slot.count for slot in parse_tasks(self.cfg.tasks)}
        return {"tasks": {name: {"nodes": nodes[name], "head_size": layout.size(name),
                                 "headline_metric": self.suite.tasks[name].headline} for name in layout.names},
                "storage_bytes": {"multitask": 4 * (k + layout.total),
                                  "one_per_task": sum(4 * (k + size) for size in layout.sizes)}}


# Errors caused by the user's input: reported as one line that says how to fix it, not a traceback.
USER_ERRORS = (ConfigError, DataLoadError, ModelLoadError, MaskError, CheckpointError, HandshakeError)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation; a bad knob, model or dataset ends it with one clear line."""
    try:
        run(grid, parse_run_config(context.run_config), dict(context.run_config))
    except USER_ERRORS as exc:
        print(f"fedsparse: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run(grid: Grid, cfg: RunConfig, run_config: dict) -> None:
    """Handshake, the method's selection phase (if any), ``num-server-rounds`` rounds, the merged model."""
    out = Path(cfg.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepare_output_dir(cfg, out)  # before any model loads
    cfg, run_config = kept_defaults(cfg, run_config)  # a resumed run trains with the settings it was made with
    # a bad data folder or file (or a missing eval split) fails here, in one line, before any model
    for sub in (task_configs(cfg).values() if cfg.tasks else [cfg]):
        held_out(run_splits(sub), sub.eval_split, sub.data_dir)
    resolve_device(cfg.device)  # so does a device this machine lacks (device=cuda on a CPU-only host)
    suite = TaskSuite(cfg) if cfg.tasks else None  # many tasks: one runtime per head shape, every task's test split
    rt = get_runtime(cfg) if suite is None else suite.rts[suite.first]
    if suite is None:
        rt.reset()  # a cached runtime may hold an earlier run's state (a second run in one process)
    strategy = _strategy(cfg, rt, suite)
    recorder = RunRecorder(cfg, rt, out, suite)
    strategy.vet = lambda state: recorder.evaluate(state).loss  # a state is adopted only if its loss does not explode
    reference = _reference(cfg, rt, suite, recorder.reference_seconds)
    if cfg.update_bound == "adaptive" and not cfg.secure_aggregation:  # the first bound's scale: the server's own
        strategy.adaptive.reference = lambda state, rnd: float(reference(state, rnd).norm())
    if cfg.trusts:  # every round: the direction each update is weighed against
        strategy.trust = reference
    t0 = time.perf_counter()
    handshake = strategy.handshake(grid, cfg.min_available_nodes, cfg.node_wait_timeout)
    saved = saved_selection(cfg) if rt.method.select is not None else {}
    selected = run_selection(grid, cfg, rt, strategy, handshake, saved)  # kept in every checkpoint
    # After selection: the identity (and so a resumable checkpoint) includes a selected mask.
    data = multitask_fingerprint(cfg) if suite is not None else data_fingerprint(cfg.data_dir)
    identity = run_identity(strategy, rt.base.source, cfg.method, data)
    settings = resolved_settings(cfg, run_config, rt.method.learning_rates(cfg))  # every knob as it trains
    write_json(out / "settings.json", settings)
    first_round, recorder.history = resume_from_checkpoint(cfg, out, strategy, identity, run_config, settings)
    if first_round == 1:
        recorder.record(handshake, strategy.state, time.perf_counter() - t0)

    def after_round(rl: RoundLog, seconds: float) -> None:
        recorder.record(rl, strategy.state, seconds)
        checkpoint_round(cfg, out, strategy, rl.round, recorder.history, identity, settings, selected)

    final = strategy.start(grid, num_rounds=cfg.num_server_rounds, timeout=cfg.round_timeout,
                           on_round=after_round, first_round=first_round)
    _finish(cfg, rt, out, recorder, strategy, final)


def _reference(cfg: RunConfig, rt: Runtime, suite: TaskSuite | None, seconds: dict[int, float]):
    """``(state, round) -> (k + h,)``: the server's own reference update from ``state`` in ``round``
    (:mod:`server.reference`), computed once per round and state (the bound's scale and the trust weights share it).
    A multi-task run trains the first task's head on its trusted rows; the update is widened to every task's heads
    (zeros on the others: their rows are weighed by the values). ``seconds[round]``: the time each took."""
    last: dict[tuple, torch.Tensor] = {}
    own = cfg if suite is None else suite.cfgs[suite.first]  # whose recipe and trusted rows the reference uses
    sample: list = []  # the trusted rows, encoded at the first reference and reused every round after

    def reference(state: GlobalState, rnd: int) -> torch.Tensor:
        key = (rnd, id(state))
        if key not in last:
            t0 = time.perf_counter()
            if not sample:
                sample.append(trusted_sample(own, rt.base.tokenizer))
            if suite is None:
                vec = reference_update(own, rt, state.values, state.head, rnd, sample[0])
            else:
                first, k = suite.first, state.values.numel()
                vec = reference_update(own, rt, state.values, state.head[suite.layout.span(first)], rnd, sample[0])
                vec = torch.cat([vec[:k], suite.layout.widen(first, vec[k:])])
            last.clear()
            last[key] = vec
            seconds[rnd] = seconds.get(rnd, 0.0) + time.perf_counter() - t0
        return last[key]
    return reference


def _strategy(cfg: RunConfig, rt: Runtime, suite: TaskSuite | None = None) -> SparseStrategy:
    """The strategy at round 0: the tuner's initial values and head (every task's, end to end, for a multi-task
    run), and what a valid reply looks like."""
    if suite is None:
        head0 = flatten_head(to_cpu(rt.tuner.head_state()), rt.base.head_names)  # the global state lives on the CPU
    else:
        head0 = suite.initial_head()
    expected = Expected(fingerprint=rt.tuner.fingerprint, value_dtype=cfg.value_dtype, k=rt.tuner.k,
                        head_size=int(head0.numel()), block=cfg.int8_block_size, max_bytes=cfg.max_reply_bytes,
                        codec=rt.tuner.codec)
    lr, head_lr = rt.method.learning_rates(cfg)
    if cfg.secure_aggregation:
        print(f"fedsparse: secure aggregation (SecAgg+): uniform weights, each coordinate clipped to "
              f"[-{cfg.secagg_clipping_range:g}, {cfg.secagg_clipping_range:g}] on the client, quantization step "
              f"{2 * cfg.secagg_clipping_range / cfg.secagg_quantization_range:.3g}, modulus "
              f"{cfg.secagg_modulus_range}", flush=True)
    print(f"fedsparse: method={cfg.method} k={rt.tuner.k} of {sum(p.numel() for p in rt.base.model.parameters())} "
          f"parameters, mask {rt.tuner.fingerprint[:12]}, value-dtype {cfg.value_dtype}, lr {lr:g} (head {head_lr:g}), "
          f"schedule {describe(cfg.lr_schedule, cfg.num_server_rounds, cfg.lr_warmup_rounds, cfg.lr_decay_rounds)}",
          flush=True)
    if suite is not None:
        print(f"fedsparse: {len(suite.cfgs)} tasks, one value vector: " + ", ".join(
            f"{slot.name} ({slot.count} nodes, head {suite.layout.size(slot.name)})"
            for slot in parse_tasks(cfg.tasks)) + f"; sampling {cfg.task_sampling}", flush=True)
    values0 = start_values(cfg, rt.tuner.fingerprint, rt.tuner.initial_values())  # init-values: another run's
    return SparseStrategy(cfg, GlobalState(values=values0, head=head0), expected,
                          None if suite is None else suite.layout)


def _finish(cfg: RunConfig, rt: Runtime, out: Path, recorder: RunRecorder, strategy: SparseStrategy,
            final: GlobalState) -> None:
    """Merge and save the final model, run the method's final step, write summary.json (a multi-task run: one merged
    model per task, ``tasks/<task>/``, each the one value vector with its task's head)."""
    if recorder.suite is not None:
        return _finish_tasks(out, recorder, strategy, final)
    merged = save_final_model(out, cfg, rt, final.values, final.head)
    summary = recorder.summary(strategy)
    summary.update(rt.tuner.describe())  # method-specific figures (topk k, LoRA rank, ...)
    summary["metrics"] = recorder.final_metrics(final)
    recorder.whole_final(summary)
    headline = recorder.task.headline
    held = test_split(cfg.replace(max_eval_examples=0), rt.base.tokenizer) if recorder.whole else recorder.test
    score = lambda m: recorder.score(m, held).metrics[headline]  # noqa: E731  (the split the final figures are on)
    summary.update(rt.tuner.finalize(merged, final.values, score, out))  # e.g. DSEE pruning (by the headline score)
    write_json(out / "summary.json", summary)
    print(f"fedsparse: final {headline} {summary['final_score']:.4f}; "
          f"up {summary['bytes_up_per_client_round']:,.0f} B/client-round; results in {out}", flush=True)


def _finish_tasks(out: Path, recorder: RunRecorder, strategy: SparseStrategy, final: GlobalState) -> None:
    """A multi-task run's end: per task, the merged model and artifact in ``tasks/<task>/`` and the method's final
    step scored on that task; summary.json with every task's metrics and the mean of their headlines."""
    suite = recorder.suite
    summary = recorder.summary(strategy)
    summary.update(recorder.rt.tuner.describe())
    summary["metrics"] = recorder.final_metrics(final)
    recorder.whole_final(summary)
    tests = suite.whole_tests() if recorder.whole else suite.tests  # the split the final figures are on
    for name, sub in suite.cfgs.items():
        rt, folder = suite.rts[name], out / "tasks" / name
        folder.mkdir(parents=True, exist_ok=True)
        merged = save_final_model(folder, sub, rt, final.values, final.head[suite.layout.span(name)])
        headline, test = suite.tasks[name].headline, tests[name]
        score = lambda m, h=headline, t=test, task=suite.tasks[name], c=sub: evaluate(  # noqa: E731
            m, t, task, c.eval_batch_size, c.precision, c.max_new_tokens, c.num_beams).metrics[h]
        summary["tasks"][name].update(rt.tuner.finalize(merged, final.values, score, folder))
    write_json(out / "summary.json", summary)
    print(f"fedsparse: final average {summary['final_score']:.4f} over {len(suite.cfgs)} tasks ("
          + ", ".join(f"{name} {short_name(suite.tasks[name].headline)} "
                      f"{summary['metrics'][name][suite.tasks[name].headline]:.4f}" for name in suite.cfgs)
          + f"); up {summary['bytes_up_per_client_round']:,.0f} B/client-round; results in {out}", flush=True)
