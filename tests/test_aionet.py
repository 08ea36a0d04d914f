"""The asyncio network backend under httpcore's pool (selfinstruct._aionet), on real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from selfinstruct import _aionet
from selfinstruct.llm import EndpointPool, GenerationRequest

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def route(pool: EndpointPool) -> Any:
    return pool._endpoints[0].sender._route("/chat/completions")


def route_pools(pool: EndpointPool) -> list[Any]:
    return route(pool).pools or []


def with_server(handler: Handler, body: Callable[[int], Awaitable[Any]]) -> Any:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:  # also when the loop ends first and cancels the handler
            writer.close()

    async def main() -> Any:
        server = await asyncio.start_server(closing, "127.0.0.1", 0)
        try:
            return await body(server.sockets[0].getsockname()[1])
        finally:
            server.close()

    return asyncio.run(main())


def backend() -> _aionet.AsyncioBackend:
    """The backend an endpoint pool installs (raising its httpcore's errors)."""
    pool = EndpointPool(["http://127.0.0.1:9/v1"], api_key="k", model="m")
    try:
        installed = route_pools(pool)[0]._network_backend
        assert isinstance(installed, _aionet.AsyncioBackend)
        return installed
    finally:
        asyncio.run(pool.aclose())


# -- which pools get it -------------------------------------------------------------------------


def test_plain_http_endpoints_use_it_and_tls_endpoints_keep_httpcore_s_own() -> None:
    plain = EndpointPool(["http://127.0.0.1:9/v1"], api_key="k", model="m", concurrency=8)
    tls = EndpointPool(["https://127.0.0.1:9/v1"], api_key="k", model="m", concurrency=8)
    try:
        assert route_pools(plain) and all(isinstance(p._network_backend, _aionet.AsyncioBackend) for p in route_pools(plain))
        assert route_pools(tls) and not any(isinstance(p._network_backend, _aionet.AsyncioBackend) for p in route_pools(tls))
    finally:
        asyncio.run(plain.aclose())
        asyncio.run(tls.aclose())


def test_a_pool_through_a_proxy_keeps_httpcore_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = EndpointPool(["http://10.1.2.3:8000/v1"], api_key="k", model="m")
    try:
        for pool in route_pools(proxied):
            assert not isinstance(pool._network_backend, _aionet.AsyncioBackend)
    finally:
        asyncio.run(proxied.aclose())


def test_many_requests_over_kept_alive_connections() -> None:
    """Answers come back whole and in order over reused connections, some in several reads."""
    seen: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
            prompt = json.loads(await reader.readexactly(length))["messages"][0]["content"]
            text = prompt * 5000  # ~50 kB: more than one read
            body = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
            writer.write(body[:7])
            await writer.drain()
            writer.write(body[7:])
        writer.close()

    async def body(port: int) -> list[str]:
        pool = EndpointPool([f"http://127.0.0.1:{port}/v1"], api_key="k", model="m", concurrency=4, max_attempts=1)
        try:
            async def one(i: int) -> str:
                done = await pool.generate(GenerationRequest("chat", [{"role": "user", "content": f"<{i:04d}>"}], 8))
                return done.text  # type: ignore[union-attr]

            return list(await asyncio.gather(*(one(i) for i in range(40))))
        finally:
            await pool.aclose()

    texts = with_server(handler, body)
    assert texts == [f"<{i:04d}>" * 5000 for i in range(40)]
    assert len(seen) <= 4  # 40 requests over at most 4 connections: they were kept alive


# -- the stream itself ----------------------------------------------------------------------------


def test_reads_what_was_sent_then_the_end() -> None:
    net = backend()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5) + b"-and-more")
        await writer.drain()
        writer.close()

    async def body(port: int) -> tuple[bytes, bool, bool]:
        stream = await net.connect_tcp("127.0.0.1", port, timeout=5)
        idle_readable = stream.get_extra_info("is_readable")
        await stream.write(b"hello")
        got = b""
        while chunk := await stream.read(4):
            assert len(chunk) <= 4
            got += chunk
        readable_at_end = stream.get_extra_info("is_readable")
        await stream.aclose()
        return got, idle_readable, readable_at_end

    got, idle_readable, readable_at_end = with_server(handler, body)
    assert got == b"hello-and-more"
    assert idle_readable is False  # nothing sent yet: an idle connection the pool may reuse
    assert readable_at_end is True  # closed by the server: the pool must not reuse it


def test_a_reset_connection_is_a_read_error() -> None:
    net = backend()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer.transport.abort()

    async def body(port: int) -> None:
        stream = await net.connect_tcp("127.0.0.1", port, timeout=5)
        await stream.write(b"abc")
        with pytest.raises(net.core.ReadError):
            while await stream.read(100):
                pass
        await stream.aclose()

    with_server(handler, body)


def test_a_refused_connection_is_a_connect_error() -> None:
    net = backend()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused

    async def body() -> None:
        with pytest.raises(net.core.ConnectError):
            await net.connect_tcp("127.0.0.1", port, timeout=5)

    asyncio.run(body())


def test_a_silent_server_is_a_read_timeout() -> None:
    net = backend()
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    async def body(port: int) -> None:
        stream = await net.connect_tcp("127.0.0.1", port, timeout=5)
        try:
            with pytest.raises(net.core.ReadTimeout):
                await stream.read(100, timeout=0.05)
        finally:
            release.set()
            await stream.aclose()

    with_server(handler, body)


def test_a_cancel_that_comes_with_the_data_still_cancels_the_read() -> None:
    """Bytes arrive in the same loop step as the reading task's cancel (a Ctrl-C while answers
    stream in): the cancel must win. On 3.11, asyncio.wait_for returned the data there and the
    cancel was lost, which left a run going with its stop ignored."""
    net = backend()
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()

    async def body(port: int) -> None:
        stream = await net.connect_tcp("127.0.0.1", port, timeout=5)
        try:
            for timeout in (5.0, None):
                reading = asyncio.ensure_future(stream.read(100, timeout=timeout))
                await asyncio.sleep(0)  # now waiting for bytes
                stream._protocol.data_received(b"late")  # what the loop calls when they come
                reading.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await reading
                assert await stream.read(100) == b"late"  # nothing lost: the next read gets them
        finally:
            release.set()
            await stream.aclose()

    with_server(handler, body)


def test_within_lets_a_cancel_through_when_the_awaited_thing_finishes_in_the_same_step() -> None:
    async def body() -> None:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(_aionet.within(done, 5))
        await asyncio.sleep(0)
        done.set_result(1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(TimeoutError):
            await _aionet.within(asyncio.sleep(1), 0.01)
        assert await _aionet.within(asyncio.sleep(0, "x"), None) == "x"

    asyncio.run(body())


def test_a_large_write_waits_for_the_reader_and_arrives_whole() -> None:
    net = backend()
    size = 32 << 20  # beyond any socket buffer: the transport must pause and resume writing
    received: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while total < size:
            total += len(await reader.read(1 << 16))
        received.append(total)
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    async def body(port: int) -> bytes:
        stream = await net.connect_tcp("127.0.0.1", port, timeout=5)
        await stream.write(b"x" * size)
        answer = await stream.read(10)
        await stream.aclose()
        return answer

    assert with_server(handler, body) == b"ok"
    assert received == [size]


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_a_reader_that_falls_behind_stops_the_socket_and_restarts_it() -> None:
    protocol = _aionet._Protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)
    stream = _aionet._Stream(backend(), transport, protocol)
    chunk = b"y" * (64 << 10)
    for _ in range(16):  # exactly the high-water mark: still reading
        protocol.data_received(chunk)
    assert transport.calls == []
    protocol.data_received(b"z")
    assert transport.calls == ["pause"]

    async def drain() -> bytes:
        out = b""
        while protocol.buffered:
            out += await stream.read(1 << 20)
        return out

    assert asyncio.run(drain()) == chunk * 16 + b"z"
    assert transport.calls == ["pause", "resume"]  # once, when a quarter was left
