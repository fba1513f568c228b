"""Many tasks, one mask: which task each node trains, and each task's own settings (``tasks`` in the run-config).

PaFi's mask comes from the pre-trained weights alone, so every task's nodes derive the same one and their value
vectors line up coordinate by coordinate. ``tasks = "mnli:3,qnli:2,rte:1"`` hands partition ids 0-2 to MNLI, 3-4 to
QNLI and 5 to RTE, in the order written; a node's share of its task is its rank among that task's nodes (MNLI's data
is divided in 3, QNLI's in 2). Every node trains the one value vector and its task's head; the server keeps one
vector and one head per task (``server/multitask.py``). A task's settings are the run's with ``dataset`` its name and
``data-dir`` its folder under the run's ``data-dir`` (GLUE's layout: ``glue/MNLI``; else a folder named as the task).

Plain functions of the run's settings: the server and every node compute the same assignment, so nothing about it
travels but the handshake's check of it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared.config import RunConfig
from shared.knobs import ConfigError

__all__ = ["TaskSlot", "check_tasks", "node_task", "parse_tasks", "task_config", "task_configs", "total_nodes"]


@dataclass(frozen=True)
class TaskSlot:
    """One task of a multi-task run: its name, the first global partition id it owns and how many nodes it has."""

    name: str
    first: int
    count: int


@functools.lru_cache(maxsize=32)
def parse_tasks(spec: str) -> tuple[TaskSlot, ...]:
    """The slots of ``tasks = "name:nodes,..."``; () for an empty spec. :class:`ConfigError` in one line for an item
    that is not ``name:count`` with a registered classification or regression task and a count >= 1, or a repeat."""
    from shared.tasks import TaskError, get_task

    if not spec.strip():
        return ()
    out, first = [], 0
    for item in spec.split(","):
        name, sep, count = item.strip().partition(":")
        name = name.strip().lower()
        if not sep or not name or not count.strip().isdigit() or int(count) < 1:
            raise ConfigError(f"run-config key 'tasks': {item.strip()!r} is not task:nodes (e.g. tasks='mnli:3,rte:1': "
                              f"a registered task and its node count >= 1, comma-separated)")
        try:
            task = get_task(name)
        except TaskError as exc:
            raise ConfigError(f"run-config key 'tasks': {exc}") from None
        if task.model_kind != "sequence-classification":
            raise ConfigError(f"run-config key 'tasks': task {name!r} is a {task.kind} task; a multi-task federation "
                              f"trains classification and regression heads over one encoder (run {name} alone with "
                              f"dataset='{name}')")
        if any(s.name == name for s in out):
            raise ConfigError(f"run-config key 'tasks': task {name!r} is listed twice; give it once with all its "
                              f"nodes ({name}:N)")
        out.append(TaskSlot(name, first, int(count)))
        first += int(count)
    if len(out) < 2:
        raise ConfigError(f"run-config key 'tasks' names one task ({out[0].name}); a multi-task federation needs two "
                          f"or more (for one task use dataset='{out[0].name}' and leave tasks empty)")
    return tuple(out)


def total_nodes(cfg: RunConfig) -> int:
    """Nodes a multi-task run's assignment covers (its SuperNodes' ``num-partitions``); 0 for a single task."""
    return sum(s.count for s in parse_tasks(cfg.tasks))


def node_task(cfg: RunConfig, partition_id: int, num_partitions: int) -> tuple[TaskSlot, int]:
    """(the slot of the task global partition ``partition_id`` trains, its rank among that task's nodes).
    :class:`ConfigError` where the node's ``num-partitions`` is not the assignment's total."""
    slots = parse_tasks(cfg.tasks)
    total = sum(s.count for s in slots)
    if num_partitions != total:
        raise ConfigError(f"this node has num-partitions={num_partitions} but tasks={cfg.tasks!r} assigns {total} "
                          f"nodes; start the SuperNodes with num-partitions={total} (or fix the counts in tasks)")
    for slot in slots:
        if slot.first <= partition_id < slot.first + slot.count:
            return slot, partition_id - slot.first
    raise ConfigError(f"partition-id {partition_id} is outside 0..{total - 1}, the nodes tasks={cfg.tasks!r} assigns")


def task_folder(data_dir: str, name: str) -> str:
    """The folder of task ``name`` under a multi-task run's ``data-dir``: the task's folder in its benchmark's layout
    (GLUE: ``MNLI``, ``SST-2``) where it exists, else one named as the task; '' (the Hub) for an empty data-dir."""
    from shared.tasks import get_task

    if not data_dir:
        return ""
    root = Path(data_dir).expanduser()
    folder = get_task(name).folder or name
    for candidate in (root / folder, root / name):
        if candidate.is_dir():
            return str(candidate)
    return str(root / folder)  # missing: the data check names it


def task_config(cfg: RunConfig, name: str) -> RunConfig:
    """The settings task ``name`` trains and is scored with: the run's, on that task's data."""
    return cfg.replace(dataset=name, data_dir=task_folder(cfg.data_dir, name), tasks="")


def task_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """Task name -> its settings, in the order of ``tasks``."""
    return {slot.name: task_config(cfg, slot.name) for slot in parse_tasks(cfg.tasks)}


def check_tasks(cfg: RunConfig, check_task: Callable[[RunConfig], None]) -> None:
    """One-line :class:`ConfigError` for a multi-task run this product cannot make: a bad ``tasks`` item, a method whose
    mask or updates are not shared by every task, or a setting that is one task's (``num-labels``). A task's own
    refusals (a regression's balanced loss, through ``check_task``: ``shared.settings.check_task``) name the task."""
    from shared.methods import get_method

    slots = parse_tasks(cfg.tasks)
    if not slots:
        return
    method = get_method(cfg.method)
    if method.select is not None:
        raise ConfigError(f"tasks=... cannot run method '{cfg.method}': its mask is selected from the clients' data "
                          f"(a selection phase), so it would be one task's or a blend, not the task-agnostic mask every "
                          f"task shares; use a mask from the base weights (pafi, magnitude, random, bitfit, dsee, "
                          f"hiwi, lora, full)")
    if not method.aligned:
        raise ConfigError(f"tasks=... cannot run method '{cfg.method}': its updates carry their own positions, so "
                          f"tasks would not share one value vector; use an aligned method (e.g. pafi)")
    if cfg.num_labels:
        raise ConfigError(f"num-labels={cfg.num_labels} is one task's; with tasks=... every task's head has its own "
                          f"classes: leave num-labels=0")
    for name, sub in task_configs(cfg).items():
        try:
            check_task(sub)
        except ConfigError as exc:
            raise ConfigError(f"task {name}: {exc}") from None
