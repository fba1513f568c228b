"""Flower-record edge of the protocol: numpy dicts <-> records, and measured message sizes."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from wire.protocol import ARRAYS, CONFIG, METRICS


def to_recorddict(arrays: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None,
                  metrics: Mapping[str, Any] | None = None) -> RecordDict:
    """Wrap plain parts into a RecordDict with the protocol's record names."""
    records: dict[str, Any] = {ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})}
    if config is not None:
        records[CONFIG] = ConfigRecord(dict(config))
    if metrics is not None:
        records[METRICS] = MetricRecord(dict(metrics))
    return RecordDict(records)


def message_parts(msg: Message) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """(arrays, metrics, config) of a reply; missing records come back empty."""
    content = msg.content
    arrays = {k: a.numpy() for k, a in content[ARRAYS].items()} if ARRAYS in content.array_records else {}
    metrics = dict(content[METRICS]) if METRICS in content.metric_records else {}
    config = dict(content[CONFIG]) if CONFIG in content.config_records else {}
    return arrays, metrics, config


def message_bytes(msg: Message) -> int:
    """Bytes of a message as Flower serializes it: every object of its tree, deflated, summed.

    This is what is pushed/pulled between ServerApp, SuperLink and SuperNode (content-addressed
    objects: message, record dict, records, arrays and their chunks), measured, not estimated.
    """
    return int(sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values()))


# ---- secure aggregation: the legacy layout Flower's ``secaggplus_mod`` reads from the train handler ----
SECURE_METRICS = "fitres.metrics"  # the clear part of a masked reply (ConfigRecord)


def secure_train_reply(vector: np.ndarray, metrics: Mapping[str, Any]) -> RecordDict:
    """The train handler's reply under secure aggregation: one flat float64 vector as a legacy ``FitRes``.

    ``secaggplus_mod`` quantizes and masks ``vector`` and clears the arrays before the reply leaves the
    node; ``metrics`` (fingerprint, diagnostics) travel in the clear. ``num_examples`` is 1: every client
    weighs the same, so no example count is sent.
    """
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.ascontiguousarray(vector, np.float64)]), 1,
                    dict(metrics))
    return fitres_to_recorddict(fitres, keep_input=True)


def metrics_of_secure_reply(msg: Message) -> dict[str, Any]:
    """The clear metrics of a masked-stage reply ({} if it has none)."""
    records = msg.content.config_records
    return dict(records[SECURE_METRICS]) if SECURE_METRICS in records else {}
