"""An in-process Grid: delivers each message to the real ClientApp with a per-node Context.

Transport only (no network, no Ray): the ServerApp's ``main``, the strategy, the selection phase and
the ClientApp handlers all run unchanged, so a whole run of any method takes seconds on the tiny model.
Byte counts are still measured from the real Flower messages.
"""

from __future__ import annotations

import uuid
from typing import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    """``num_nodes`` virtual nodes (ids 1001.., partition ids 0..n-1), each with its own persistent state."""

    def __init__(self, app: ClientApp, run_config: dict, num_nodes: int):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.app = app
        self.contexts = {
            1001 + i: Context(run_id=1, node_id=1001 + i, state=RecordDict(), run_config=dict(run_config),
                              node_config={"partition-id": i, "num-partitions": num_nodes})
            for i in range(num_nodes)
        }
        self.sent_types: list[str] = []
        self._replies: dict[str, Message] = {}

    def set_run(self, run) -> None:  # pragma: no cover - not used in-process
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message at once; its reply waits to be pulled by the message id."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # the SuperLink would set it
            self.sent_types.append(msg.metadata.message_type)
            context = self.contexts[msg.metadata.dst_node_id]
            TaskIdentity.node_id = msg.metadata.dst_node_id
            try:
                self._replies[msg.metadata.message_id] = self.app(msg, context)
            finally:
                TaskIdentity.node_id = 0
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))
