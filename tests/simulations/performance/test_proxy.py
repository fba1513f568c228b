"""The counting proxy forwards bytes unchanged and counts each direction exactly."""

from __future__ import annotations

import socket
import threading

from simulations.engines import free_port
from simulations.performance.lib.proxy import CountingProxy, wait_for


def _upstream(port: int, trailer: bytes, ready: threading.Event) -> None:
    """Accept one connection; echo everything, then send ``trailer`` when the client is done."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(1)
        ready.set()
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.sendall(trailer)


def test_proxy_counts_both_directions_and_forwards_unchanged():
    up_port, proxy_port = free_port(), free_port()
    ready = threading.Event()
    threading.Thread(target=_upstream, args=(up_port, b"t" * 1000, ready), daemon=True).start()
    assert ready.wait(5)
    payload = bytes(range(256)) * 400  # 102,400 bytes
    with CountingProxy(proxy_port, up_port, lifetime_s=30) as proxy:
        with socket.create_connection(("127.0.0.1", proxy_port)) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := c.recv(65536):
                received += chunk
        assert wait_for(lambda: proxy.snapshot() == (len(payload), len(received)), 5)
        assert proxy.counts.connections == 1
    assert received == payload + b"t" * 1000


def test_proxy_stops_by_itself_after_its_lifetime():
    proxy = CountingProxy(free_port(), free_port(), lifetime_s=0.5)
    with proxy:
        assert wait_for(lambda: not proxy._thread.is_alive(), 5)
