"""An in-process Grid: delivers each message to the real ClientApp with a per-node Context.

Transport only (no SuperLink, no Ray, no network): the ServerApp's ``main``, the strategy, the selection
phase, checkpointing, outputs and the ClientApp handlers all run unchanged, so a whole run of any method
takes seconds on the tiny model, and a crash can be staged in a child process. Byte counts are still
measured from the real Flower messages. Used by the tests (tests/support/local_grid.py) and by the attack
benchmark's federated runs (simulations/robustness/lib/adversary.py), where a wrapper plays the attackers.
"""

from __future__ import annotations

import uuid
from typing import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 1  # the SuperLink's node id in Flower


class LocalGrid(Grid):
    """``num_nodes`` virtual nodes (ids 1001.., partition ids 0..n-1), each with its own persistent state.

    ``error_replies``: a handler's exception comes back as a Flower ``Error`` reply, as a SuperNode sends
    it (fault-injection and crash tests); otherwise it propagates to the test.
    """

    def __init__(self, app: ClientApp, run_config: dict, num_nodes: int, *, error_replies: bool = False):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE_ID, 0
        self.app, self.error_replies = app, error_replies
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
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # the SuperLink would set these
            msg.metadata.__dict__["_src_node_id"] = SERVER_NODE_ID
            self.sent_types.append(msg.metadata.message_type)
            TaskIdentity.node_id = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - with error_replies, the failure travels back as an Error
                if not self.error_replies:
                    raise
                reply = Message(Error(code=1, reason=f"{exc.__class__.__name__}: {exc}"), reply_to=msg)
            finally:
                TaskIdentity.node_id = SERVER_NODE_ID
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))
