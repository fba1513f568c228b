"""An in-process Grid: delivers each message to the ClientApp's handler functions in this process.

Only the transport is replaced (no SuperLink, no Ray): the real ServerApp ``main``, strategy,
client handlers, codec, checkpointing and outputs run unchanged. Lets a test run a whole
federated run on the tiny model in seconds, and crash it in a child process.
"""

from __future__ import annotations

import uuid
from typing import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client import client_app


class LocalGrid(Grid):
    """``num_nodes`` virtual nodes (ids 1000+i, partition i) that answer synchronously."""

    def __init__(self, run_config: dict, num_nodes: int):
        # Messages read their sender's identity from here; a running ServerApp process sets it.
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 1, 1
        self.contexts = {1000 + i: Context(run_id=1, node_id=1000 + i, state=RecordDict(), run_config=run_config,
                                           node_config={"partition-id": i, "num-partitions": num_nodes})
                         for i in range(num_nodes)}
        self._replies: dict[str, Message] = {}
        self.handlers = {"train": client_app.train, "evaluate": client_app.evaluate, "query": client_app.query}

    def set_run(self, run) -> None:  # noqa: D102 - not needed in-process
        pass

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: D102
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each message's handler on its node now; an exception becomes an error reply, as in Flower."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # the SuperLink would assign it
            msg.metadata.__dict__["_src_node_id"] = 1
            try:
                reply = self.handlers[msg.metadata.message_type](msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - the client's failure travels back as an Error
                reply = Message(Error(code=1, reason=f"{exc.__class__.__name__}: {exc}"), reply_to=msg)
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Deliver and collect at once (no network)."""
        return list(self.pull_messages(self.push_messages(messages)))
