"""The registries of methods and tasks: built-ins load on first use; one name, one entry."""

from __future__ import annotations

import dataclasses

import pytest

from shared.methods import methods, register as register_method
from shared.tasks import get_task, register as register_task, tasks


def test_builtins_load_and_a_taken_name_is_refused():
    assert {"pafi", "full", "lora"} <= set(methods()) and {"sst2", "rte", "mnli", "agnews"} <= set(tasks())
    register_method(methods()["pafi"])  # the same entry again: a no-op
    with pytest.raises(ValueError, match="a method named 'pafi' is already registered"):
        register_method(dataclasses.replace(methods()["pafi"]))
    with pytest.raises(ValueError, match="a task named 'rte' is already registered"):
        register_task(dataclasses.replace(get_task("rte")))


def test_a_users_task_is_one_register_call():
    from shared.tasks import _REGISTRY

    rte = get_task("rte")
    try:
        mine = register_task(dataclasses.replace(rte, name="my-entailment", help="RTE under another name"))
        assert get_task("my-entailment") is mine and tasks()["my-entailment"].num_labels == 2
    finally:
        _REGISTRY._items.pop("my-entailment", None)  # the registry is process-wide: leave it as the suite found it
