"""The task registry: every task the product fine-tunes on, one folder per task family (contract: ``base.py``).

Registering a built-in family is one line in :data:`BUILTIN` (its folder's ``TASKS``); a task defined elsewhere is
added with :func:`register`. Like the methods, the families are imported on first use. The server, the client and
the methods ask the task (``num_labels``, ``problem_type``, ``pair``, ``score``, ``headline``), never its name.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from shared.registry import Registry
from shared.tasks.base import HubSource, Task, TaskError
from shared.tasks.metrics import score_of, short_name

__all__ = ["CUSTOM", "HubSource", "Task", "TaskError", "get_task", "read_local", "register", "score_of", "short_name",
           "task_of", "tasks"]

CUSTOM = "custom"  # dataset='custom': the user's own data, described by run-config keys (shared/tasks/custom)

BUILTIN = (  # shared.tasks.<folder>: one line per family
    "glue",
    "text_classification",
    "causal_lm",
)

_REGISTRY: Registry[Task] = Registry("shared.tasks", BUILTIN, lambda module: module.TASKS)


def register(task: Task) -> Task:
    """Add ``task`` under ``task.name`` (a second task of the same name is refused)."""
    return _REGISTRY.register(task)


def tasks() -> dict[str, Task]:
    """Name -> task, built-ins first (loaded on the first call)."""
    return _REGISTRY.all()


def get_task(name: str) -> Task:
    """The registered task ``name``; :class:`TaskError` naming the registered ones otherwise."""
    known = tasks()
    if name not in known:
        raise TaskError(f"unknown dataset {name!r}; use one of {sorted(known)} (run-config key 'dataset')")
    return known[name]


def task_of(cfg) -> Task:
    """The task of a run (a :class:`shared.config.RunConfig`): the registered task ``dataset``, or for
    ``dataset='custom'`` the task its ``text-columns``, ``label-column``, ``task-type`` and ``task-metrics`` describe
    (built once per description, registered under a name derived from it)."""
    if cfg.dataset == CUSTOM:
        from shared.tasks.custom import custom_task

        return _register_once(custom_task(cfg))
    return get_task(cfg.dataset)


def _register_once(task: Task) -> Task:
    """``task``, registered under its name unless the very same task is (a custom task, asked for again)."""
    existing = tasks().get(task.name)
    return existing if existing == task else register(task)


def read_local(task: Task, folder: Path) -> dict[str, Dataset]:
    """The task's splits from a local folder in its layout (checked: the columns every split must have)."""
    splits = task.read_local(task, Path(folder).expanduser())
    for name, split in splits.items():
        missing = [c for c in task.required_columns if c not in split.column_names]
        if missing:
            raise TaskError(f"split {name!r} of {folder} lacks column(s) {missing} that task {task.name!r} needs")
    return splits
