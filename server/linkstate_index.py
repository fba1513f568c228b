"""Make the Simulation Engine's message hand-out cost grow with the messages, not the nodes that exist.

Flower 1.41's Simulation Engine (``flwr/server/superlink/fleet/vce/vce_api.py``,
``add_messages_to_queue``) asks the in-memory LinkState for every registered node's next message
every 0.1 s, and ``InMemoryLinkState.get_message_ins(node_id)`` answers by scanning every stored
message (with a validity check each). One sweep is O(nodes x stored messages): at 10,000 virtual
clients with 100 messages in flight that is a million checks per 0.1 s under the state's lock,
and the round-0 handshake (one message per node) is O(nodes^2).

:func:`install` replaces both with equivalents that keep an index of undelivered messages by
destination node: a node's lookup is O(its own messages), and a sweep visits only the nodes that
have a message waiting. Semantics are unchanged (insertion order, the same validity check per
message, delivered-at marking, ``limit``). It is installed when the ServerApp module is imported:
in a simulation that is the process that runs the engine; in the Deployment Engine the ServerApp
process holds no InMemoryLinkState and the patch is inert. ``FEDSPARSE_NO_LINKSTATE_INDEX=1``
keeps Flower's originals (for measuring the difference).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("fedsparse.server")
_INSTALLED = False


def _index(state) -> dict[int, list[str]]:
    """The state's dst-node -> [message id] index, built by one scan on first use."""
    index = state.__dict__.get("_fedsparse_by_dst")
    if index is None:
        index = {}
        for msg_id, msg in state.message_ins_store.items():
            if msg.metadata.delivered_at == "":
                index.setdefault(msg.metadata.dst_node_id, []).append(msg_id)
        state.__dict__["_fedsparse_by_dst"] = index
    return index


def _make_store(original):
    def store_message_ins(self, message):
        with self.lock:
            index = _index(self)
            message_id = original(self, message)
            if message_id is not None and message_id in self.message_ins_store:
                ids = index.setdefault(message.metadata.dst_node_id, [])
                if message_id not in ids[-1:]:
                    ids.append(message_id)
            return message_id
    return store_message_ins


def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None):
    """Flower's ``get_message_ins`` over the node's own undelivered messages only."""
    from flwr.supercore.date import now

    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    found = []
    with self.lock:
        index = _index(self)
        ids = index.get(node_id)
        if not ids:
            return []
        keep = []
        for msg_id in ids:
            if limit and len(found) == limit:
                keep.append(msg_id)
                continue
            self._check_stored_messages({msg_id})
            msg = self.message_ins_store.get(msg_id)
            if msg is None or msg.metadata.delivered_at != "":
                continue  # deleted (expired, pulled) or delivered: leaves the index
            if run_id is None or msg.metadata.run_id == run_id:
                found.append(msg)
            else:
                keep.append(msg_id)
        if keep:
            index[node_id] = keep
        else:
            index.pop(node_id, None)
        delivered_at = now().isoformat()
        for msg in found:
            msg.metadata.delivered_at = delivered_at
    return found


def add_messages_to_queue(state, queue, nodes_mapping, f_stop: threading.Event) -> None:
    """Flower's sweep, visiting only the nodes with a message waiting (needs the indexed state)."""
    log.info("simulation engine: indexed message sweep over %d nodes", len(nodes_mapping))
    while not f_stop.is_set():
        with state.lock:
            waiting = [n for n in _index(state) if n in nodes_mapping]
        for node_id in waiting:
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        f_stop.wait(0.1)


def install() -> bool:
    """Patch Flower's InMemoryLinkState and the engine's sweep once per process; False if skipped."""
    global _INSTALLED
    if _INSTALLED or os.environ.get("FEDSPARSE_NO_LINKSTATE_INDEX") == "1":
        return _INSTALLED
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
        from flwr.supercore.date import now  # noqa: F401 (used by get_message_ins)
    except ImportError:  # another Flower layout: keep its originals
        log.info("linkstate index not installed: this Flower has another layout")
        return False
    InMemoryLinkState.store_message_ins = _make_store(InMemoryLinkState.store_message_ins)
    InMemoryLinkState.get_message_ins = get_message_ins
    vce_api.add_messages_to_queue = add_messages_to_queue  # effective if the engine's loop has not started
    _INSTALLED = True
    return True
