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
