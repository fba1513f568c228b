"""A counting TCP proxy on 127.0.0.1: forwards bytes unchanged and counts them per direction.

Put it between SuperNodes and the SuperLink's Fleet API to measure what really crosses the
socket (HTTP framing, protobuf envelopes, heartbeats, polling included). Bounded: loopback only,
at most ``max_connections`` at once, fixed-size reads, and it stops by itself after ``lifetime_s``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass
class Counts:
    """Bytes forwarded so far: ``up`` = client -> upstream, ``down`` = upstream -> client."""

    up: int = 0
    down: int = 0
    connections: int = 0


class CountingProxy:
    """``with CountingProxy(listen_port, upstream_port) as proxy: ... proxy.counts``."""

    def __init__(self, listen_port: int, upstream_port: int, max_connections: int = 64,
                 lifetime_s: float = 1800.0):
        self.listen_port, self.upstream_port = listen_port, upstream_port
        self.max_connections, self.lifetime_s = max_connections, lifetime_s
        self.counts = Counts()
        self._open = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="counting-proxy", daemon=True)

    def snapshot(self) -> tuple[int, int]:
        """(up, down) bytes so far (read from another thread: ints are replaced atomically)."""
        return self.counts.up, self.counts.down

    def __enter__(self) -> "CountingProxy":
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError(f"counting proxy did not start on 127.0.0.1:{self.listen_port}")
        return self

    def __exit__(self, *exc) -> None:
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10.0)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)
        self._ready.set()
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=self.lifetime_s)
        except asyncio.TimeoutError:
            pass  # lifetime over: stop by itself
        server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.max_connections:
            writer.close()
            return
        self._open += 1
        self.counts.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self._open -= 1
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer, "up"), self._pipe(up_reader, writer, "down"))
        finally:
            self._open -= 1
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while data := await reader.read(CHUNK):
                if direction == "up":
                    self.counts.up += len(data)
                else:
                    self.counts.down += len(data)
                writer.write(data)
                await writer.drain()  # back-pressure: never buffer more than the peer accepts
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
