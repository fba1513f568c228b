"""The server's side of many tasks over one mask: one global value vector, one head per task.

The global state keeps the heads end to end in the order of ``tasks`` (:class:`HeadLayout`): ``GlobalState.head`` is
their concatenation, so checkpoints, resume and the guards see one vector as in a single-task run. A node receives the
values and its task's head only and answers with deltas of both; the server widens its head delta to the whole layout
(zeros on the other tasks' heads: the norm of the row is unchanged) so every norm bound and weight cap applies as
before. The step (:func:`multitask_step`) then aggregates the values over every reply, and each task's head over
that task's replies only; a task without a reply this round keeps its head (and its optimizer state) bit for bit.

Central DP stays one client's sensitivity ``dp-clip-norm``: each whole row (values + its task's head) is clipped
once, then the values' mean gets noise z*C/n and a task's head's mean z*C/n_t (the Gaussian mechanism on the sum
vector, whose entries a client moves by at most C in L2 norm, divided per block: post-processing). Each block draws its
own noise stream.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

import torch

from server.aggregation import AggregationError
from server.privacy import clip_rows
from server.server_opt import OptState, ServerSettings, server_step
from shared.config import RunConfig
from shared.data import data_fingerprint
from shared.device import to_cpu
from shared.multitask import task_configs
from shared.runtime import Runtime, extra_held_out, get_runtime, test_split
from shared.tasks import task_of
from shared.training import Evaluation, evaluate
from wire.protocol import flatten_head, unflatten_head

HEAD_STATE = "head."  # a task's server-optimizer state in the checkpoint: opt.head.<task>.<name>


@dataclass(frozen=True)
class HeadLayout:
    """Where each task's head lies in the global head vector: tasks in the order of ``tasks``, sizes in values."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def span(self, name: str) -> slice:
        """Task ``name``'s slice of the global head vector."""
        i = self.names.index(name)
        start = sum(self.sizes[:i])
        return slice(start, start + self.sizes[i])

    def size(self, name: str) -> int:
        return self.sizes[self.names.index(name)]

    def widen(self, name: str, head: torch.Tensor) -> torch.Tensor:
        """Task ``name``'s head vector (or delta) placed in a zero vector of the whole layout."""
        out = torch.zeros(self.total, dtype=head.dtype)
        out[self.span(name)] = head
        return out


def multitask_step(stack: torch.Tensor, weights: torch.Tensor, row_tasks: list[str], layout: HeadLayout, k: int,
                   opt_state: OptState, hp: ServerSettings, server_round: int,
                   secure_counts: Mapping[str, int] | None = None) -> tuple[torch.Tensor, OptState, list[str]]:
    """The update (k + H,) of a round from widened rows (n, k + H) whose row i is a reply of task ``row_tasks[i]``:
    ``server_step`` on the values over all rows, and on each task's head span over that task's rows; (update, the
    optimizer state after it, a note per task whose head stayed because its aggregator could not run on its rows).
    :class:`AggregationError` only where the values' own aggregation fails (the round is skipped).

    A secure round (``secure_counts``: survivors per task) has one row, the survivors' mean: the values step from it
    over all n survivors, a task's head from its span x n / n_t (the mean over that task's survivors, whose vectors
    are zero on every other task's span) with the DP noise of n_t clients; a task without survivors keeps its head."""
    n = None if secure_counts is None else sum(secure_counts.values())
    if secure_counts is None and hp.dp_clip_norm > 0:  # one client's whole row (values + its head) bounded by C, once
        stack = clip_rows(stack, hp.dp_clip_norm)
    mine = {key: v for key, v in opt_state.items() if not key.startswith(HEAD_STATE)}
    values_step, values_state = server_step(stack[:, :k], weights, mine, hp, server_round, n)
    step = torch.zeros(stack.shape[1], dtype=torch.float32)
    step[:k] = values_step
    new_state, notes = dict(values_state), []
    for i, name in enumerate(layout.names):
        prefix = f"{HEAD_STATE}{name}."
        theirs = {key[len(prefix):]: v for key, v in opt_state.items() if key.startswith(prefix)}
        if secure_counts is None:
            rows = [r for r, task in enumerate(row_tasks) if task == name]
        else:  # the one mean row, where the task has survivors
            rows = [0] if secure_counts.get(name, 0) > 0 else []
        span = layout.span(name)
        if rows:
            block = stack[rows][:, k + span.start:k + span.stop]
            count = None
            if secure_counts is not None:
                count = secure_counts[name]
                block = block.double() * (n / count)
            try:
                head_step, theirs = server_step(block, weights[rows], theirs, hp, server_round, count, stream=i + 1)
                step[k + span.start:k + span.stop] = head_step
            except AggregationError as exc:
                notes.append(f"task {name}'s head unchanged: {exc}")
        new_state.update({prefix + key: v for key, v in theirs.items()})
    return step, new_state, notes


def multitask_fingerprint(cfg: RunConfig) -> str:
    """What a multi-task run's data is: every task's data fingerprint by name (the run identity's ``data``)."""
    h = hashlib.sha256()
    for name, sub in task_configs(cfg).items():
        h.update(f"|{name}|{data_fingerprint(sub.data_dir)}|".encode())
    return h.hexdigest()


class TaskSuite:
    """Every task of a multi-task run on the server: its settings, its runtime (one per head shape, shared by the
    tasks of that shape) and its held-out split; the global head's layout; evaluation of a global state on every
    task (each task's head loaded beside the one value vector)."""

    def __init__(self, cfg: RunConfig):
        self.cfgs = task_configs(cfg)
        self.rts = {name: get_runtime(sub, len(self.cfgs)) for name, sub in self.cfgs.items()}
        for rt in {id(rt): rt for rt in self.rts.values()}.values():
            rt.reset()  # a cached runtime may hold an earlier run's state
        self.layout = HeadLayout(tuple(self.cfgs), tuple(rt.tuner.head_size for rt in self.rts.values()))
        self.tasks = {name: task_of(sub) for name, sub in self.cfgs.items()}
        self.tests = {name: test_split(sub, self.rts[name].base.tokenizer) for name, sub in self.cfgs.items()}

    @property
    def first(self) -> str:
        return self.layout.names[0]

    def initial_head(self) -> torch.Tensor:
        """The global head at round 0: every task's head as its runtime built it, in layout order (on the CPU)."""
        return torch.cat([flatten_head(to_cpu(rt.tuner.head_state()), rt.base.head_names) for rt in self.rts.values()])

    def load(self, name: str, values: torch.Tensor, head: torch.Tensor) -> Runtime:
        """Task ``name``'s runtime holding ``values`` and its span of the global ``head``."""
        rt = self.rts[name]
        rt.tuner.load(values, unflatten_head(head[self.layout.span(name)], rt.tuner.head_state(), rt.base.head_names))
        return rt

    def evaluate(self, values: torch.Tensor, head: torch.Tensor, splits: dict | None = None) -> Evaluation:
        """Every task scored on its held-out split (or ``splits[name]``): metrics by task name, the mean loss."""
        metrics, losses = {}, []
        for name, sub in self.cfgs.items():
            data = (splits or self.tests).get(name)
            if data is None:
                continue
            rt = self.load(name, values, head)
            ev = evaluate(rt.base.model, data, self.tasks[name], sub.eval_batch_size, sub.precision,
                          sub.max_new_tokens, sub.num_beams)
            metrics[name] = ev.metrics
            losses.append(ev.loss)
        return Evaluation(loss=sum(losses) / max(1, len(losses)), metrics=metrics)

    def average(self, metrics: dict) -> float:
        """The mean of the tasks' headline metrics (``final_score`` and each round's ``score``)."""
        return sum(metrics[name][self.tasks[name].headline] for name in self.cfgs) / len(self.cfgs)

    def whole_tests(self) -> dict:
        """Every task's whole held-out split (``final-eval = "full"``), tokenized."""
        return {name: test_split(sub.replace(max_eval_examples=0), self.rts[name].base.tokenizer)
                for name, sub in self.cfgs.items()}

    def extra_held_out(self, whole: bool = False) -> dict[str, dict]:
        """Split suffix -> {task: the task's further held-out split} (MNLI's mismatched dev set), scored at the end
        (``whole``: all its rows, else the rounds' ``max-eval-examples``)."""
        out: dict[str, dict] = {}
        for name, sub in self.cfgs.items():
            sub = sub.replace(max_eval_examples=0) if whole else sub
            for split, data in extra_held_out(sub, self.rts[name].base.tokenizer).items():
                out.setdefault(split.removeprefix("test_"), {})[name] = data
        return out
