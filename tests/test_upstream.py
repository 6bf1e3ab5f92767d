"""The router's upstream client against real servers on loopback: keep-alive, streaming, early close,
failures of every kind, and the one retry it allows."""

from __future__ import annotations

import asyncio
import time

import pytest

from voltana_cli.core.live import upstream as up
from voltana_cli.core.live.upstream import Upstream, UpstreamError


async def _aiohttp_server(handlers: dict, **kw: object):
    from aiohttp import web

    app = web.Application()
    for path, h in handlers.items():
        app.router.add_post(path, h)
    runner = web.AppRunner(app, access_log=None, **kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def _raw_server(answer):
    """A TCP server whose ``answer(n_request_on_this_connection, n_connection)`` returns the bytes to send back
    (``None``: close the connection without a word; ``(bytes, "close")``: send them, then close)."""
    conns = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        k = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                out = answer(k, len(conns))
                k += 1
                if out is None:
                    writer.close()
                    return
                writer.write(out[0] if isinstance(out, tuple) else out)
                await writer.drain()
                if isinstance(out, tuple):
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], conns


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_posts_reuse_one_keep_alive_connection_and_read_whole_bodies():
    async def main() -> None:
        from aiohttp import web

        peers = set()

        async def echo(request: web.Request) -> web.Response:
            peers.add(request.transport.get_extra_info("peername"))
            return web.Response(body=await request.read(), content_type="application/json")

        runner, port = await _aiohttp_server({"/generate": echo})
        client = Upstream()
        try:
            for i in range(20):
                body = b'{"i": %d, "pad": "%s"}' % (i, b"x" * (i * 1000))
                async with await client.post("127.0.0.1", port, "/generate", body) as r:
                    assert r.status == 200 and await r.read() == body
            assert len(peers) == 1
        finally:
            client.close()
            await runner.cleanup()

    asyncio.run(main())


def test_a_stream_arrives_chunk_by_chunk_and_an_early_close_reaches_the_server():
    async def main() -> None:
        from aiohttp import web

        release, gone = asyncio.Event(), asyncio.Event()

        async def stream(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                await resp.write(b"data: 1\n\n")
                await release.wait()  # the client must see chunk 1 before chunk 2 exists
                await resp.write(b"data: 2\n\n")
                for _ in range(200):
                    await asyncio.sleep(0.01)
                    await resp.write(b"data: more\n\n")
            except (ConnectionError, asyncio.CancelledError):
                gone.set()
                raise
            return resp

        runner, port = await _aiohttp_server({"/s": stream}, handler_cancellation=True)
        client = Upstream()
        try:
            async with await client.post("127.0.0.1", port, "/s", b"{}") as r:
                got = []
                async for chunk in r.chunks():
                    got.append(chunk)
                    if len(got) == 1:
                        assert chunk == b"data: 1\n\n"
                        release.set()
                    if b"data: 2" in b"".join(got):
                        break  # leave early: the connection closes
            await asyncio.wait_for(gone.wait(), 5)
        finally:
            client.close()
            await runner.cleanup()

    asyncio.run(main())


@pytest.mark.parametrize("answer,message", [
    (lambda k, n: None, "closed before the response ended"),
    (lambda k, n: b"HELLO THERE\r\n\r\n", "malformed response"),
    (lambda k, n: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":", "close"),
     "closed before the response ended"),
])
def test_a_backend_that_fails_is_an_upstream_error(answer, message):
    async def main() -> None:
        server, port, _ = await _raw_server(answer)
        client = Upstream()
        try:
            with pytest.raises(UpstreamError, match=message):
                async with await client.post("127.0.0.1", port, "/generate", b"{}") as r:
                    await r.read()
        finally:
            client.close()
            server.close()

    asyncio.run(main())


def test_refused_and_silent_backends_are_upstream_errors_in_bounded_time():
    async def main() -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        client = Upstream(connect_timeout_s=1.0, read_timeout_s=0.3)
        with pytest.raises(UpstreamError, match="could not connect"):
            await client.post("127.0.0.1", free, "/generate", b"{}")

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(10)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        t = time.monotonic()
        with pytest.raises(UpstreamError, match="no answer within 0.3 s"):
            await client.post("127.0.0.1", server.sockets[0].getsockname()[1], "/generate", b"{}")
        assert time.monotonic() - t < 2
        server.close()
        client.close()

    asyncio.run(main())


def test_a_reused_connection_the_server_dropped_is_retried_once_and_a_fresh_one_never():
    async def main() -> None:
        # Connection 1 answers its first request, then drops the second unanswered; later connections answer.
        server, port, conns = await _raw_server(lambda k, n: None if (n == 1 and k == 1) else OK)
        client = Upstream()
        for _ in range(2):
            async with await client.post("127.0.0.1", port, "/generate", b"{}") as r:
                assert r.status == 200 and await r.read() == b"{}"
        assert len(conns) == 2  # the retry opened the second connection
        server.close()

        # A new connection that fails is not retried: the request may have reached the server.
        server2, port2, conns2 = await _raw_server(lambda k, n: None)
        with pytest.raises(UpstreamError):
            await client.post("127.0.0.1", port2, "/generate", b"{}")
        assert len(conns2) == 1
        server2.close()
        client.close()

    asyncio.run(main())


def test_connection_close_and_long_idle_connections_are_not_reused(monkeypatch):
    async def main() -> None:
        close = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        server, port, conns = await _raw_server(lambda k, n: close if n == 1 else OK)
        client = Upstream()
        for _ in range(2):
            async with await client.post("127.0.0.1", port, "/generate", b"{}") as r:
                await r.read()
        assert len(conns) == 2  # the server said close: a new connection
        monkeypatch.setattr(up, "IDLE_S", 0.05)
        await asyncio.sleep(0.1)
        async with await client.post("127.0.0.1", port, "/generate", b"{}") as r:
            await r.read()
        assert len(conns) == 3  # idle too long: not reused (a server's keep-alive may be closing it)
        async with await client.post("127.0.0.1", port, "/generate", b"{}") as r:
            await r.read()
        assert len(conns) == 3
        server.close()
        client.close()

    asyncio.run(main())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_request_names_its_host_and_an_ipv6_literal_in_brackets(host):
    import socket

    async def main() -> None:
        heads: list[bytes] = []

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            writer.write(OK)
            await writer.drain()

        try:
            server = await asyncio.start_server(on_conn, host, 0)
        except OSError:
            pytest.skip(f"{host} is not available here")
        port = server.sockets[0].getsockname()[1]
        client = Upstream()
        async with await client.post(host, port, "/generate", b"{}") as r:
            assert await r.read() == b"{}"
        want = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        assert f"\r\nHost: {want}\r\n".encode() in heads[0]
        assert heads[0].startswith(b"POST /generate HTTP/1.1\r\n")
        client.close()
        server.close()

    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    asyncio.run(main())
