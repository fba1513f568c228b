"""The indexed hand-out of the Simulation Engine's in-memory LinkState: same messages, same order, O(own).

Set up as Flower's ``_main_loop`` does (a run pre-registered in an InMemoryLinkState, nodes registered
by ``_register_nodes``, messages pushed through ``InMemoryGrid``), then Flower's sweep
(``add_messages_to_queue``) runs against the patched state.
"""

from __future__ import annotations

import threading
import time
from queue import Queue

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from server import linkstate_index


@pytest.fixture()
def federation():
    assert linkstate_index.install()  # server_app installs it on import; idempotent
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=7)
    run.primary_task_id, run.federation_id = 11, NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[11] = Task(task_id=11, run_id=run.run_id)
    nodes = vce_api._register_nodes(num_nodes=300, state_factory=factory)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run.run_id, SUPERLINK_NODE_ID, 11
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return state, grid, nodes


def _msgs(nodes, tag: str) -> list[Message]:
    return [Message(RecordDict({"c": ConfigRecord({"tag": tag})}), dst_node_id=n, message_type="query")
            for n in nodes]


def test_a_node_gets_its_own_messages_in_order_once(federation):
    state, grid, nodes = federation
    ids = list(nodes)
    first = list(grid.push_messages(_msgs(ids[:50], "a")))
    second = list(grid.push_messages(_msgs(ids[:2], "b")))
    assert len(first) == 50 and len(second) == 2
    got = state.get_message_ins(node_id=ids[0], limit=1)
    assert [m.metadata.message_id for m in got] == [first[0]]
    assert got[0].metadata.delivered_at != ""
    got = state.get_message_ins(node_id=ids[0], limit=None)
    assert [m.metadata.message_id for m in got] == [second[0]]
    assert state.get_message_ins(node_id=ids[0], limit=1) == []
    assert state.get_message_ins(node_id=ids[299], limit=1) == []  # nothing for it
    assert [m.metadata.message_id for m in state.get_message_ins(node_id=ids[1], limit=None)] == [first[1], second[1]]


def test_a_lookup_checks_only_the_nodes_own_messages(federation, monkeypatch):
    state, grid, nodes = federation
    ids = list(nodes)
    grid.push_messages(_msgs(ids[:200], "a"))
    checked = []
    original = InMemoryLinkState._check_stored_messages
    monkeypatch.setattr(InMemoryLinkState, "_check_stored_messages",
                        lambda self, message_ids, run_id=None: (checked.append(len(message_ids)),
                                                                original(self, message_ids, run_id))[1])
    for n in ids:  # one sweep of every node, as Flower's engine does
        state.get_message_ins(node_id=n, limit=1)
    assert sum(checked) == 200  # one check per message, not one per (node, message) pair = 60,000


def test_flowers_sweep_delivers_every_message_exactly_once(federation):
    state, grid, nodes = federation
    ids = list(nodes)
    pushed = set(grid.push_messages(_msgs(ids[::3], "a")))
    queue: Queue = Queue()
    stop = threading.Event()
    sweep = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, queue, nodes, stop))
    sweep.start()
    time.sleep(0.5)
    pushed |= set(grid.push_messages(_msgs(ids[:5], "b")))  # arrivals while the sweep runs
    time.sleep(0.5)
    stop.set()
    sweep.join()
    got = [queue.get_nowait().metadata.message_id for _ in range(queue.qsize())]
    assert sorted(got) == sorted(pushed) and len(got) == len(set(got))


def test_pulled_or_expired_messages_leave_the_index(federation):
    state, grid, nodes = federation
    ids = list(nodes)
    (mid,) = grid.push_messages(_msgs(ids[:1], "a"))
    state.delete_messages({mid})  # what pulling the reply does
    assert state.get_message_ins(node_id=ids[0], limit=1) == []
    assert ids[0] not in state.__dict__["_fedsparse_by_dst"]
