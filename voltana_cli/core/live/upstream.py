"""The router's upstream HTTP/1.1 client: keep-alive connections to the instances, for the per-request path.

Each request the router proxies makes two upstream posts (prefill and decode). Measured under load on two
cores (``benchmarks/router_overhead.py``), aiohttp's general-purpose client spent more CPU per post than the
rest of the router together: building a ``ClientRequest``, payload objects, cookie and redirect handling,
a task per body write, timeouts rescheduled per chunk. The router needs far less: POST bytes to a known
host, read a status, then the body whole or as it streams. This client does only that, on asyncio
protocols, with httptools (llhttp, the parser uvicorn serves SGLang with) reading the responses:
content-length and chunked bodies, keep-alive as the server says, pipelining never.

Semantics the router relies on:

- A connection goes back to the pool only after its response ended and the server keeps it alive; a
  response closed early closes its connection, so the instance sees its client go (SGLang aborts the
  request then).
- Idle connections older than ``IDLE_S`` are not reused: uvicorn closes a keep-alive connection after 5 s
  idle, and a post written into one that the server is closing would be lost.
- A reused connection that fails before the first byte of its response is retried once on a new
  connection (the server closed it between our check and our write); nothing else is retried.
- Every failure (refused, reset, closed early, a malformed response, a timeout) is an ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

#: Idle seconds after which a pooled connection is closed rather than reused (servers' keep-alive: uvicorn 5 s).
IDLE_S = 2.0
#: Idle connections kept per backend.
MAX_IDLE_PER_BACKEND = 512
#: Buffered response bytes above which reading pauses until the consumer catches up.
HIGH_WATER = 1 << 20


def self_connected(sock: Any) -> bool:
    """Whether ``sock`` (a socket, or asyncio's view of one) is connected to itself. A connect to a loopback port
    that nobody listens on yet, when the port lies in the ephemeral range (Linux: 32768-60999), can be given that
    very port as its source and open to itself (TCP simultaneous open): it then echoes what it sends, and it
    holds the port the server is about to bind. ``None`` (a transport without a socket) is not."""
    if sock is None:
        return False
    try:
        return bool(sock.getsockname() == sock.getpeername())
    except OSError:
        return False


class UpstreamError(Exception):
    """A backend did not answer properly: refused, reset, closed early, malformed, or timed out."""


class _Conn(asyncio.Protocol):
    """One connection and the response being read on it (httptools' parser calls the ``on_*`` methods)."""

    __slots__ = ("transport", "parser", "status", "keep_alive", "complete", "chunks", "buffered", "waiter",
                 "error", "got_bytes", "idle_since", "paused", "key")

    def __init__(self, key: tuple[str, int]):
        import httptools

        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.keep_alive = False
        self.complete = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.got_bytes = False
        self.idle_since = 0.0
        self.paused = False

    # ---- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        import httptools

        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed response: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.complete:
            self._fail(UpstreamError("the connection closed before the response ended"
                                     + (f" ({exc.__class__.__name__})" if exc else "")))

    # ---- httptools callbacks ---------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # ---- helpers ---------------------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    async def wait(self, timeout_s: float) -> None:
        """Until the parser reports progress (headers, a body chunk, the end), a failure, or ``timeout_s``."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        self.waiter = w = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, w, timeout_s)
        try:
            await w
        finally:
            timer.cancel()
            self.waiter = None

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


def _expire(w: asyncio.Future[None], timeout_s: float) -> None:
    if not w.done():
        w.set_exception(UpstreamError(f"no answer within {timeout_s:g} s"))


class Response:
    """An upstream response: ``status``, then the body with ``read()`` or ``chunks()``; ``close()`` always
    (``async with`` does it): the connection goes back to the pool only when the response was read to its
    end."""

    __slots__ = ("status", "_conn", "_pool", "_read_timeout_s")

    def __init__(self, conn: _Conn, pool: Upstream, read_timeout_s: float):
        self.status = conn.status
        self._conn: _Conn | None = conn
        self._pool = pool
        self._read_timeout_s = read_timeout_s

    async def read(self) -> bytes:
        parts = []
        async for c in self.chunks():
            parts.append(c)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked transfer decoded)."""
        conn = self._conn
        if conn is None:
            return
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.complete:
                self.close()
                return
            await conn.wait(self._read_timeout_s)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Upstream:
    """A pool of keep-alive connections per backend, and ``post``.

    Args:
        connect_timeout_s: to open a connection.
        read_timeout_s: to the response's headers, and between two pieces of its body.
    """

    def __init__(self, connect_timeout_s: float = 10.0, read_timeout_s: float = 600.0):
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._heads: dict[tuple[str, int, str], bytes] = {}

    async def post(self, host: str, port: int, path: str, body: bytes,
                   content_type: str = "application/json") -> Response:
        """POST ``body`` to ``http://host:port/path``; returns once the response's headers are in."""
        key = (host, port)
        head = self._heads.get((host, port, path))
        if head is None:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 literal is bracketed
            head = self._heads[(host, port, path)] = (
                f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\n"
                "Content-Length: ").encode()
        request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        conn, reused = self._take(key), True
        if conn is None:
            conn, reused = await self._connect(key), False
        try:
            return await self._send(conn, request)
        except UpstreamError:
            if not reused or conn.got_bytes:
                raise
        # The server closed the idle connection as we wrote into it: once more, on a new one.
        return await self._send(await self._connect(key), request)

    async def _send(self, conn: _Conn, request: bytes) -> Response:
        self._busy.add(conn)
        try:
            assert conn.transport is not None
            conn.transport.write(request)
            while not conn.status:
                await conn.wait(self.read_timeout_s)
        except BaseException:
            self._busy.discard(conn)
            if conn.transport is not None:
                conn.transport.close()
            raise
        return Response(conn, self, self.read_timeout_s)

    def _take(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_ok = time.monotonic() - IDLE_S
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing() and conn.idle_since >= oldest_ok:
                conn.status, conn.complete, conn.got_bytes, conn.keep_alive = 0, False, False, False
                return conn
            if conn.transport is not None:
                conn.transport.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Conn(key), key[0], key[1])
        except TimeoutError:
            raise UpstreamError(f"could not connect within {self.connect_timeout_s:g} s") from None
        except OSError as exc:
            raise UpstreamError(f"could not connect: {exc.strerror or exc}") from None
        transport = conn.transport
        if transport is not None and self_connected(transport.get_extra_info("socket")):
            # Nothing listens there: the request would come back as its own answer.
            transport.close()
            raise UpstreamError("could not connect: nothing listens there (the connection reached itself)")
        return conn

    def release(self, conn: _Conn) -> None:
        """Pool ``conn`` if its response ended and the server keeps it open; close it otherwise."""
        self._busy.discard(conn)
        if conn.transport is None:
            return
        if not (conn.complete and conn.keep_alive and conn.error is None) or conn.chunks:
            conn.transport.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_BACKEND:
            conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)  # its parser reads the next response on this connection (llhttp resets per message)

    def close(self) -> None:
        """Close every connection, idle or busy."""
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
        for conn in list(self._busy):
            if conn.transport is not None:
                conn.transport.close()
        self._busy.clear()

