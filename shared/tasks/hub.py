"""A task's data from the Hugging Face Hub through ``datasets.load_dataset``, and our splits from what it returns.

Without a route to the Hub (HF offline mode, or no connection) only the local cache can serve, so a run fails in
one line instead of after the library's retries.
"""

from __future__ import annotations

import os
import socket

from datasets import Dataset

from shared.tasks.base import HubSource, Task, TaskError
from shared.tasks.labels import conform_labels


class HubUnavailable(TaskError):
    """The Hub copy cannot be loaded; the message is a phrase: "is not in the local Hugging Face cache and ..."."""


def fetch(hub: HubSource):
    """The ``DatasetDict`` of ``load_dataset(hub.path[, hub.config])`` (the local cache only when offline)."""
    from datasets import load_dataset

    args = (hub.path, hub.config) if hub.config else (hub.path,)
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if offline or not _hub_reachable():  # only the local cache can serve; fail in one line, not after retries
        why = "HF offline mode is set" if offline else "the Hugging Face Hub cannot be reached from here"
        try:
            return _load_cached(args)
        except Exception as exc:  # noqa: BLE001 - any cache miss
            raise HubUnavailable(f"is not in the local Hugging Face cache and {why} ({_reason(exc)})") from None
    try:
        return load_dataset(*args)
    except Exception as exc:  # network errors come in many types
        raise HubUnavailable(f"cannot be loaded from the Hugging Face Hub ({_reason(exc)})") from exc


def _reason(exc: Exception, limit: int = 240) -> str:
    """``exc`` in one short line (``datasets`` writes several: "Config name is missing. Please pick one ...")."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def hub_splits(task: Task, ds, source: str = "") -> dict[str, Dataset]:
    """Our splits from a Hub ``DatasetDict``: the task's split names and columns, renamed to ours, labels in the
    task's form (:func:`shared.tasks.labels.conform_labels`; ``source`` says where the class names came from)."""
    out = {}
    for ours, theirs in task.hub.splits.items():
        if theirs not in ds:
            raise TaskError(f"the Hub copy of {task.name!r} ({task.hub.path}) has no split {theirs!r} "
                            f"(it has {sorted(ds)})")
        split = ds[theirs]
        missing = [c for c in task.hub.columns.values() if c not in split.column_names]
        if missing:
            raise TaskError(f"split {theirs!r} of {task.hub.path} lacks column(s) {missing} task {task.name!r} reads "
                            f"(it has {split.column_names})")
        split = split.select_columns(list(task.hub.columns.values()))
        split = split.rename_columns({v: k for k, v in task.hub.columns.items() if k != v})
        if task.hub.convert is not None:
            out[ours] = task.hub.convert(split)
            continue
        out[ours] = conform_labels(split, task, lambda i, s=theirs: f"split {s!r} of {task.hub.path}, row {i + 1}",
                                   source)
    return out


def _load_cached(hub_path: tuple[str, ...]):  # (path[, config])
    """``load_dataset`` from the local cache only (offline for this call)."""
    import datasets
    import huggingface_hub.constants as hub

    from datasets import load_dataset

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        return load_dataset(*hub_path)
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def hub_usable() -> bool:
    """Whether the Hub may be asked: no offline mode set, and its host accepts a connection."""
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    return not offline and _hub_reachable()


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hub's host resolves and accepts a connection (HF_ENDPOINT if set)."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True
