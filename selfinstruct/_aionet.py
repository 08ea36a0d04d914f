"""An asyncio network backend for httpcore's connection pool, for plain-HTTP endpoints.

httpcore (the transport under httpx and the ``openai`` SDK) reads and writes through anyio, which
wraps every read and write in a cancel scope and builds a dict of socket attributes each time the
pool asks whether an idle connection is still usable. At 128 requests in flight that was about a
fifth of the client's CPU per request. This backend does the same I/O on an asyncio protocol:
HTTP parsing (h11), pooling, keep-alive and the error classes stay httpcore's.

It speaks plain TCP only: :func:`install` leaves pools that talk TLS or go through a proxy to
httpcore's own backend.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections import deque
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

# Unread bytes of one connection before it stops reading from the socket (the server then waits):
# an answer is read as it arrives, so only a stalled reader gets here.
_READ_HIGH_WATER = 1 << 20


class _Protocol(asyncio.Protocol):
    """Bytes received and not yet read, and the one reader or writer waiting on them."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _READ_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        _wake(self.reader)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self.reader)
        return False  # close the transport: HTTP/1.1 never half-closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        _wake(self.reader)
        _wake(self.writer)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _wake(self.writer)


async def within(awaitable: Any, seconds: float | None) -> Any:
    """Await with a deadline (None: none); TimeoutError when it passes.

    Not ``asyncio.wait_for`` on 3.11: when the task is cancelled in the same step as the awaited
    thing finishes, wait_for returns its result and the cancellation is lost (fixed in 3.12).
    A Ctrl-C that landed there left a run going with its stop ignored. ``asyncio.timeout`` lets
    the cancellation through, and costs no task per call.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # pragma: no cover - Python 3.10


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class _Stream:
    """httpcore's ``AsyncNetworkStream`` over one asyncio transport."""

    def __init__(self, backend: AsyncioBackend, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._core = backend.core
        self._socket_readable = backend.socket_readable
        self._transport = transport
        self._protocol = protocol

    async def _wait(self, slot: str, timeout: float | None, timeout_error: type[Exception]) -> None:
        protocol = self._protocol
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        setattr(protocol, slot, waiter)
        try:
            if timeout is None:
                await waiter
            else:
                await within(waiter, timeout)
        except asyncio.TimeoutError as exc:
            raise timeout_error(f"no progress in {timeout} s") from exc
        finally:
            setattr(protocol, slot, None)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        chunks = protocol.chunks
        while not chunks:
            if protocol.eof:
                if protocol.error is not None:
                    raise self._core.ReadError(str(protocol.error) or type(protocol.error).__name__)
                return b""
            await self._wait("reader", timeout, self._core.ReadTimeout)
        data = chunks.popleft()
        if len(data) > max_bytes:
            data, rest = data[:max_bytes], data[max_bytes:]
            chunks.appendleft(rest)
        protocol.buffered -= len(data)
        if protocol.reading_paused and protocol.buffered <= _READ_HIGH_WATER // 4:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if self._transport.is_closing():
            raise self._core.WriteError(str(protocol.error or "the connection is closed"))
        self._transport.write(buffer)
        while protocol.writing_paused and not protocol.eof:
            await self._wait("writer", timeout, self._core.WriteTimeout)
        if protocol.eof and protocol.error is not None:
            raise self._core.WriteError(str(protocol.error))

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        raise NotImplementedError("the asyncio backend is for plain HTTP; TLS goes through httpcore's own")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # asked of every idle connection before it is reused
            protocol = self._protocol
            return bool(protocol.chunks) or protocol.eof or self._socket_readable(self._transport.get_extra_info("socket"))
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        return None  # ssl_object: no TLS here


class AsyncioBackend:
    """httpcore's ``AsyncNetworkBackend`` on the running asyncio loop; raises ``core``'s errors."""

    def __init__(self, core: ModuleType, socket_readable: Callable[[Any], bool]) -> None:
        self.core = core
        self.socket_readable = socket_readable  # httpcore's own check: poll, or select where there is none

    async def _connect(self, opening: Any, timeout: float | None, socket_options: Iterable[Any] | None) -> _Stream:
        core = self.core
        try:
            transport, protocol = await within(opening, timeout)
        except asyncio.TimeoutError as exc:
            raise core.ConnectTimeout(f"no connection in {timeout} s") from exc
        except OSError as exc:
            raise core.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Stream(self, transport, protocol)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> _Stream:
        local = None if local_address is None else (local_address, 0)
        opening = asyncio.get_running_loop().create_connection(_Protocol, host, port, local_addr=local)
        return await self._connect(opening, timeout, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> _Stream:
        opening = asyncio.get_running_loop().create_unix_connection(_Protocol, path)
        return await self._connect(opening, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def install(pool: Any, core: ModuleType, scheme: bytes) -> None:
    """Make the connection pool ``pool`` of httpcore module ``core`` use :class:`AsyncioBackend` if
    it only ever opens plain TCP connections to the endpoint (no TLS, no proxy)."""
    if scheme != b"http" or type(pool) is not getattr(core, "AsyncConnectionPool", None):
        return
    if not hasattr(pool, "_network_backend") or isinstance(pool._network_backend, AsyncioBackend):
        return
    try:
        socket_readable = importlib.import_module(core.__name__ + "._utils").is_socket_readable
    except (ImportError, AttributeError):  # httpcore changed its internals: keep its backend
        return
    pool._network_backend = AsyncioBackend(core, socket_readable)
