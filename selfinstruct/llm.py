"""Talking to OpenAI-compatible model servers: one or several endpoints, many requests in flight.

Design:

* Each endpoint has its own ``openai.AsyncOpenAI`` client (the SDK's own retries are off; we retry
  with tenacity so that a retry may move to another endpoint). Its HTTP connection pool is sized
  to the endpoint's concurrency limit, capped at :data:`MAX_CONCURRENCY_PER_ENDPOINT`.
* Each endpoint has an :class:`AdaptiveLimit` that seeks the number of requests in flight giving
  the most answers per second (measured, not inferred from latency: a continuous-batching
  server gets slower per token as its batch grows while its throughput still rises); overload
  signals (429, 503, timeouts) halve it. A fixed ``--concurrency K`` pins it.
* A request goes to the endpoint with the fewest requests in flight relative to its limit.
  An endpoint that keeps failing is rested (exponential back-off) while the others carry on; one
  that sends ``Retry-After`` gets no request until then; one that rejects the key (401/403) or
  does not know the model/path (404) is rested for a long time.
* Every answer is untrusted: a whole-request deadline bounds slow servers, bodies are size-capped,
  and malformed JSON, odd shapes and lone surrogates become a retry, never a traceback.
* :meth:`EndpointPool.generate` returns a :class:`Completion` or a :class:`RequestFailed`. It raises
  a :mod:`selfinstruct.errors` exception only when every further request would fail too: the key
  is rejected or the model/path is unknown on every endpoint, the same 4xx answer came back
  ``max_consecutive_bad_requests`` times in a row, or no endpoint has answered for
  ``give_up_after`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from . import _aionet
from .errors import AuthError, BadRequest, ClientError, ModelNotFound, ServerUnreachable

__all__ = [
    "MAX_CONCURRENCY_PER_ENDPOINT",
    "AdaptiveLimit",
    "Completion",
    "EndpointPool",
    "GenerationRequest",
    "RequestFailed",
    "redact_url",
]

log = logging.getLogger("selfinstruct")

Api = Literal["chat", "completions"]

# Requests in flight to one endpoint, at most. Continuous-batching servers (vLLM, SGLang) gain
# throughput up to a few hundred concurrent sequences (vLLM batches at most max_num_seqs, a few
# hundred by default); more only queue on the server. Our side, measured against the fake
# server (0.5 s answers, 2 cores): 128 in flight cost 1.7 ms CPU per request and 66 MB RSS,
# 512 2.8 ms and 83 MB, 1024 4.6 ms and 103 MB with lower throughput than 512: the connection
# pool's bookkeeping grows with the connections. Each slot is one socket (file descriptor).
MAX_CONCURRENCY_PER_ENDPOINT = 512
# Longest Retry-After we honour: a server asking for an hour is more likely wrong than right.
MAX_RETRY_AFTER = 300.0
# Largest answer body read: a completion is at most a few hundred kB even with logprobs.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# How long an endpoint that rejects the key or does not know the model/path is left alone.
UNUSABLE_REST = 600.0
# Deadline of one /v1/models attempt: a trivial call, unlike generation.
MODELS_TIMEOUT = 60.0

# Status codes that mean "try again later" rather than "your request is wrong".
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_NOT_RETRYABLE_5XX = frozenset({501, 505})
# 401/403/404 depend on the endpoint (key, model, path), not on the request: rest the endpoint.
_UNUSABLE_KINDS = frozenset({"http_401", "http_403", "http_404", "model_not_found"})
_OVERLOAD_KINDS = frozenset({"timeout", "http_429", "http_503"})

_CONTEXT_ERROR = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|context_length_exceeded|exceed_context"
    r"|prompt is too long|too many tokens|max_new_tokens|maximum (input|sequence) length",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class GenerationRequest:
    """What to send: a chat message list or a completion prompt, and sampling settings."""

    api: Api
    prompt: str | list[dict[str, str]]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    response_format: dict[str, Any] | None = None  # structured decoding, for servers that have it


@dataclass(frozen=True)
class Completion:
    """One answer, with where it came from and what it cost."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    endpoint: str
    latency: float
    attempts: int


@dataclass(frozen=True)
class RequestFailed:
    """A request that got no usable answer; the job goes on without it.

    ``kind`` is e.g. ``http_400``, ``context_length``, ``timeout``, ``http_500``,
    ``malformed_answer``, ``connection``; ``message`` is one line with secrets removed;
    ``endpoint`` the redacted URL of the endpoint that answered last (None if none did).
    """

    kind: str
    message: str
    endpoint: str | None = None


# -- text hygiene ---------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_SECRET_PARAM = re.compile(r"key|token|secret|pass|pwd|sig|auth|cred", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z!][^<>]{0,200}>")


def _clean_text(text: str) -> str:
    """Replace lone surrogates (JSON "\\ud83d" decodes to one) so the text encodes as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def _redact_query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if sep and value and _SECRET_PARAM.search(unquote(name)):
            value = "REDACTED"
        parts.append(name + sep + value)
    return "&".join(parts)


def _bad_port(netloc: str) -> bool:
    host = netloc.rpartition("]")[2] if netloc.startswith("[") else netloc
    _, colon, port = host.rpartition(":")
    return bool(colon) and not port.isdigit()


def redact_url(url: str) -> str:
    """The URL without user:password@ and without the values of secret query parameters."""
    try:
        parts = urlsplit(url)
        if not parts.scheme or "://" not in url:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        path, query, fragment = parts.path, parts.query, parts.fragment
        after = url.split("://", 1)[1][len(parts.netloc) :]
        if "@" not in parts.netloc and "@" in after and ("@" in path or _bad_port(parts.netloc)):
            # A raw '/', '?' or '#' in the password ends the netloc early ("alice:p/ss@host"):
            # what urlsplit took for host:port is user:password; the host follows the last '@'.
            # (A base URL with a real '@' in its path is only shortened in messages.)
            return redact_url(f"{parts.scheme}://{after.rpartition('@')[2]}")
        return urlunsplit((parts.scheme, netloc, path, _redact_query(query), fragment))
    except ValueError:  # e.g. an unclosed IPv6 bracket: strip conservatively
        scheme, _, rest = url.partition("://")
        host = rest.rpartition("@")[2]
        return f"{scheme}://{host.split('?', 1)[0]}"


def _v1_hint(url: str) -> str:
    try:
        path = urlsplit(url).path.rstrip("/")
    except ValueError:
        return ""
    if path.endswith("/v1"):
        return ""
    return f"; the base URL usually ends in /v1 (e.g. {redact_url(url.rstrip('/'))}/v1)"


# -- AIMD -----------------------------------------------------------------------------------


class AdaptiveLimit:
    """How many requests one endpoint may have in flight: the level that maximises throughput.

    A batch job wants answers per second; latency does not matter. So the limit follows measured
    throughput, not latency (a continuous-batching server slows every token as its batch grows,
    by design, while its throughput still rises). Throughput is measured per window by Little's
    law, mean requests in flight ÷ mean latency, which is exact over any span, unlike counting
    answers when they come back in bursts of a whole batch. A window skips the first round trip
    after a change (answers to requests sent under the old limit), then measures one round trip
    and at least ``min_samples`` answers.

    * Start: the limit doubles per window while throughput rises by more than ``gain`` of the
      doubling (elasticity: 2**gain); when it stops, the level before the last doubling is kept.
    * Probe: try 25 % more; keep it if throughput rose by ``1.25**gain``, else go back and hold
      for ``hold`` windows (re-measuring the base), then probe downwards (keep the lower level if
      throughput fell by less than ``1.25**-gain``: the extra requests were only queueing), then up
      again, and so on, so the limit follows a server whose speed changes.
    * Overload (429, 503, timeouts): the limit halves, at most once per round trip; the first cut
      of an episode also sets ``ssthresh`` there. Below ``ssthresh`` each answer adds one (doubling
      per round trip, as TCP's slow start) back to that known-good level, then probing resumes.
    * A window where the client kept fewer requests in flight than the limit (nothing to send)
      says nothing about the limit: it is measured again.
    """

    def __init__(
        self,
        *,
        initial: int = 4,
        maximum: int = 128,
        fixed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        gain: float = 0.1,
        step: float = 1.25,
        hold: int = 4,
        min_samples: int = 8,
        settle_trips: int = 2,
    ) -> None:
        self.fixed = fixed
        self.maximum = fixed if fixed is not None else maximum
        self.limit = float(fixed if fixed is not None else min(initial, maximum))
        self.ssthresh = math.inf  # set by the first overload cut
        self.peak = self.limit
        self.cuts = 0
        self.phase = "start"  # start | probe | hold | recover (slow start back to ssthresh)
        self.throughput = 0.0  # last measured, answers/s
        self._clock = clock
        self._gain, self._step, self._hold, self._min_samples = gain, step, hold, min_samples
        self._settle_trips = settle_trips
        self._best_latency = math.inf
        self._last_cut = -math.inf
        now = clock()
        self._in_flight = 0
        self._area = 0.0  # integral of requests in flight over time
        self._mark = now
        self._base_limit = self.limit  # the level probing compares against
        self._base_throughput = 0.0
        self._holds = 0
        self._direction = 1  # next probe: +1 up, -1 down
        self._open_window(now)

    @property
    def value(self) -> int:
        return max(1, int(self.limit))

    # -- bookkeeping ------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        self._area += self._in_flight * (now - self._mark)
        self._mark = now

    def _open_window(self, now: float) -> None:
        # Round trips are chained: one ends with the first answer to a request sent after it
        # began. The first two after a change belong to the old limit and to the queue settling
        # at the new one; the third is measured.
        self._trips = 0
        self._trip_start = now
        self._w_start = now
        self._w_area = self._area
        self._w_latency = 0.0
        self._w_count = 0

    def on_send(self) -> None:
        """A request to this endpoint has started."""
        now = self._clock()
        self._advance(now)
        self._in_flight += 1

    def on_done(self) -> None:
        """A request has ended, whatever its outcome."""
        now = self._clock()
        self._advance(now)
        self._in_flight = max(0, self._in_flight - 1)

    def _set(self, limit: float) -> None:
        self.limit = max(1.0, min(float(self.maximum), limit))
        self.peak = max(self.peak, self.limit)

    def _window(self) -> float:
        return self._best_latency if math.isfinite(self._best_latency) else 1.0

    def _can_cut(self, now: float) -> bool:
        return now - self._last_cut >= self._window()

    # -- signals ----------------------------------------------------------------------------

    def on_success(self, latency: float) -> None:
        if self.fixed is not None:
            return
        now = self._clock()
        self._advance(now)
        self._best_latency = min(self._best_latency, latency)
        if self.phase == "recover":
            # Back to a level that worked before the overload: no need to measure on the way.
            self._set(self.limit + 1.0)
            if self.limit >= self.ssthresh:
                self._set(self.ssthresh)
                self._base_limit, self._base_throughput = self.limit, 0.0
                self.phase, self._holds = "hold", 0
                self._open_window(now)
            return
        if self._trips >= self._settle_trips:
            self._w_latency += latency
            self._w_count += 1
        if now - latency >= self._trip_start:
            self._trips += 1
            self._trip_start = now
            if self._trips == self._settle_trips:
                self._w_start, self._w_area = now, self._area
                self._w_latency, self._w_count = 0.0, 0
        if self._trips < self._settle_trips + 1 or self._w_count < self._min_samples:
            return
        span = now - self._w_start
        mean_in_flight = (self._area - self._w_area) / span if span > 0 else 0.0
        measured = mean_in_flight / (self._w_latency / self._w_count)
        self.throughput = measured
        if mean_in_flight < 0.75 * self.value:
            self._open_window(now)  # the client had too little to send: says nothing
            return
        self._decide(measured)
        self._open_window(now)

    def _decide(self, measured: float) -> None:
        base, base_tp = self._base_limit, self._base_throughput
        if self.phase == "start":
            if base_tp == 0.0 or measured >= base_tp * 2.0**self._gain:
                self._base_limit, self._base_throughput = self.limit, measured
                if self.limit >= self.maximum:
                    self.phase, self._holds = "hold", 0
                else:
                    self._set(min(self.limit * 2.0, self.ssthresh))
                    if self.limit >= self.ssthresh:
                        self.phase, self._holds = "hold", 0
            else:  # the doubling bought (almost) nothing: keep the level before it
                self._set(base)
                self.phase, self._holds = "hold", 0
            return
        if self.phase == "probe":
            ratio = self.limit / base
            if measured >= base_tp * ratio**self._gain:
                # Up: throughput rose enough. Down: it fell by less than the fewer requests
                # cost: the extra ones were queueing. Either way the new level is the base.
                self._base_limit, self._base_throughput = self.limit, measured
                if not self._probe():
                    self.phase, self._holds = "hold", 0
            else:
                self._set(base)
                self.phase, self._holds = "hold", 0
                self._direction = -self._direction
            return
        # hold: re-measure the base so that probes compare against today's server
        self._base_limit = self.limit
        self._base_throughput = measured if self._base_throughput == 0.0 else 0.5 * (self._base_throughput + measured)
        self._holds += 1
        if self._holds >= self._hold:
            self._holds = 0
            if self._probe():
                self.phase = "probe"

    def _probe(self) -> bool:
        """Move the limit one step in the probing direction; False when it cannot move."""
        base = self._base_limit
        if self._direction > 0:
            target = min(float(self.maximum), max(base + 1.0, math.floor(base * self._step)))
        else:
            target = max(1.0, min(base - 1.0, math.ceil(base / self._step)))
        if target == base:
            self._direction = -self._direction
            return False
        self._set(target)
        return True

    def on_overload(self) -> None:
        if self.fixed is not None:
            return
        now = self._clock()
        if not self._can_cut(now):
            return
        if now - self._last_cut > 10 * self._window():
            # First cut of an overload episode: remember half the level that worked. Later
            # cuts in the same storm lower the limit only, so that afterwards slow start
            # doubles back to that level within a few round trips instead of crawling up
            # one request per round trip (minutes when answers take tens of seconds).
            self.ssthresh = max(1.0, self.limit / 2)
        self._set(self.limit / 2)
        self._last_cut = now
        self.cuts += 1
        self.phase = "recover"
        self._direction = 1
        self._open_window(now)


# -- HTTP plumbing --------------------------------------------------------------------------


def _http_module() -> Any:
    """The httpx flavour the installed SDK is built on (``httpx``, or ``httpx2`` in newer SDKs)."""
    return sys.modules[type(openai.DEFAULT_CONNECTION_LIMITS).__module__.partition(".")[0]]


class _AnswerTooLarge(Exception):
    pass


def _refuse_declared_size(length: str) -> None:
    """Refuse an answer whose Content-Length is over the cap, before reading its body."""
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if length.isascii() and length.isdigit() and int(length) > MAX_ANSWER_BYTES:
        raise _AnswerTooLarge(f"answer body of {length} bytes (limit {MAX_ANSWER_BYTES})")


async def _capped(chunks: Any, cap: int) -> Any:
    """The byte chunks of an answer body, raising once more than ``cap`` bytes have come."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > cap:
            raise _AnswerTooLarge(f"answer body larger than {cap} bytes")
        yield chunk


_capped_stream_class: Any = None


def _capped_stream(inner: Any, cap: int) -> Any:
    """Wrap a response byte stream so that reading more than ``cap`` bytes raises."""
    global _capped_stream_class
    if _capped_stream_class is None:

        class CappedStream(_http_module().AsyncByteStream):  # type: ignore[misc]
            def __init__(self, inner: Any, cap: int) -> None:
                self._inner, self._cap = inner, cap

            async def __aiter__(self) -> Any:
                async for chunk in _capped(self._inner, self._cap):
                    yield chunk

            async def aclose(self) -> None:
                await self._inner.aclose()

        _capped_stream_class = CappedStream
    return _capped_stream_class(inner, cap)


async def _cap_answer_size(response: Any) -> None:
    """httpx response hook: refuse huge bodies before they are read into memory."""
    _refuse_declared_size(response.headers.get("content-length", ""))
    response.stream = _capped_stream(response.stream, MAX_ANSWER_BYTES)


_ssl_context: Any = None


def _http_client(connections: int) -> Any:
    global _ssl_context
    http = _http_module()
    if _ssl_context is None:
        # One for all clients: loading the CA bundle costs ~30 ms, and an endpoint has many shards.
        _ssl_context = http.create_ssl_context() if hasattr(http, "create_ssl_context") else True
    return openai.DefaultAsyncHttpxClient(
        verify=_ssl_context,
        # One connection per request in flight: the SDK default (1000 connections, 100 kept
        # alive) let 100k workers queue inside the pool; the endpoint's limit is the real bound.
        limits=http.Limits(max_connections=connections, max_keepalive_connections=connections),
        event_hooks={"response": [_cap_answer_size]},
    )


# Connections per httpx pool. httpcore scans every connection of its pool twice per request
# (to assign one, and when the answer is closed), probing each idle one's socket: 512
# connections in one pool cost more CPU than the rest of the request. 4 made ~15% fewer
# Python calls per request than 16 at 128 in flight; a shard (httpx client) costs ~3 kB.
SHARD_CONNECTIONS = 4
# Headers of the SDK's we do not send: per-request ones (length, retry count, idempotency key),
# its telemetry (x-stainless-*: OS, runtime...) and keep-alive (HTTP/1.1's default); h11
# validates every header of every request.
def _dropped_header(name: str) -> bool:
    name = name.lower()
    return name in ("content-length", "idempotency-key", "connection") or name.startswith("x-stainless-")


# The answers httpx's client follows (the SDK's clients have follow_redirects on).
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _raw_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes:
    """The first value of header ``name`` (lower case) in httpcore's raw header list."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return b""


class _Route:
    """One path of an endpoint, prepared once: URL, headers and, per shard, the connection pool
    (httpcore's, inside the shard's httpx transport) when requests can go to it directly."""

    def __init__(self, url: Any, headers: list[tuple[bytes, bytes]], pools: list[Any] | None) -> None:
        self.url = url  # httpx URL: for the SDK's error classes, and the fallback
        self.headers = headers
        self.pools = pools
        self.core: Any = None
        self.core_url: Any = None
        self.timeouts: tuple[type[BaseException], ...] = ()
        self.failures: tuple[type[BaseException], ...] = ()
        if pools:
            core = self.core = sys.modules[type(pools[0]).__module__.partition(".")[0]]  # httpcore(2)
            self.core_url = core.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
            # What httpx maps to TimeoutException and to its other RequestErrors.
            self.timeouts = (core.TimeoutException,)
            self.failures = (
                core.NetworkError, core.ProtocolError, core.ProxyError, core.UnsupportedProtocol, ssl.SSLError
            )


class _Sender:
    """POSTs JSON to one endpoint over the SDK's own httpx transports, without the SDK's
    per-request machinery (option models, header merging, response wrappers) nor httpx's client
    layer (auth flow, redirects, cookies, hooks, request and response objects): ~4x less CPU.

    The headers (auth, user agent, the SDK's platform headers) are the ones the SDK itself builds,
    taken once; errors are the SDK's classes (APIStatusError subclasses, APITimeoutError,
    APIConnectionError), so classification is unchanged. Answers that are not plain JSON (errors,
    redirects, compressed or text bodies) go through httpx's Response as before.
    """

    def __init__(self, client: openai.AsyncOpenAI, connections: int, timeout: Any) -> None:
        http = _http_module()
        self._http = http
        self._client = client
        count = max(1, math.ceil(connections / SHARD_CONNECTIONS))
        per_shard = math.ceil(connections / count)
        self.shards = [_http_client(per_shard) for _ in range(count)]
        self._busy = [0] * count
        # Connect timeout only: the whole-request deadline of _send is as long and starts
        # earlier, so httpcore's per-read/write timers would only cost a timer each.
        self._timeout = {"timeout": {**timeout.as_dict(), "read": None, "write": None, "pool": None}}
        self._routes: dict[str, _Route] = {}

    def _route(self, path: str) -> _Route:
        route = self._routes.get(path)
        if route is None:
            from openai._models import FinalRequestOptions

            built = self._client._build_request(FinalRequestOptions.construct(method="post", url=path, json_data={}))
            url = built.url
            headers = [(k, v) for k, v in built.headers.raw if not _dropped_header(k.decode("latin-1"))]
            # The transport httpx would pick (a proxy's, if the environment names one). Credentials
            # in the URL make httpx replace the key by Basic auth: left to httpx's client.
            # (a private method of httpx's client: without it, the whole client it is)
            transports: list[Any] = [getattr(shard, "_transport_for_url", lambda _url: None)(url) for shard in self.shards]
            direct = not (url.username or url.password) and all(
                isinstance(t, self._http.AsyncHTTPTransport) and hasattr(t, "_pool") for t in transports
            )
            pools = [t._pool for t in transports] if direct else None
            route = self._routes[path] = _Route(url, headers, pools)
            for pool in pools or ():
                _aionet.install(pool, route.core, url.raw_scheme)
        return route

    def _request(self, route: _Route, payload: bytes) -> Any:
        """The httpx request, as httpx's client would have sent it."""
        return self._http.Request("POST", route.url, headers=route.headers, content=payload, extensions=self._timeout)

    async def post(self, path: str, payload: bytes) -> Any:
        """The decoded JSON answer (or text, when the server says it is not JSON)."""
        route = self._route(path)
        busy = self._busy
        shard = busy.index(min(busy)) if len(busy) > 1 else 0
        busy[shard] += 1
        try:
            if route.pools is None:
                return self._answer(await self._via_client(shard, self._request(route, payload)))
            status, headers, body = await self._direct(route, route.pools[shard], payload)
            content_type = _raw_header(headers, b"content-type").split(b";", 1)[0]
            plain = _raw_header(headers, b"content-encoding") in (b"", b"identity")
            if status < 300 and plain and content_type.endswith(b"json"):
                return json.loads(body)
            request = self._request(route, payload)
            if status in _REDIRECTS and _raw_header(headers, b"location"):
                return self._answer(await self._via_client(shard, request))  # httpx follows it
            return self._answer(self._http.Response(status, headers=headers, content=body, request=request))
        finally:
            busy[shard] -= 1

    async def _direct(self, route: _Route, pool: Any, payload: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) from httpcore's pool, the body read up to MAX_ANSWER_BYTES."""
        headers = [*route.headers, (b"content-length", b"%d" % len(payload))]
        request = route.core.Request(
            b"POST", route.core_url, headers=headers, content=payload, extensions=self._timeout
        )
        try:
            response = await pool.handle_async_request(request)
            try:
                _refuse_declared_size(_raw_header(response.headers, b"content-length").decode("latin-1"))
                chunks = [chunk async for chunk in _capped(response.stream, MAX_ANSWER_BYTES)]
            finally:
                await response.aclose()  # the connection back to the pool, or closed
        except route.timeouts as exc:
            raise openai.APITimeoutError(request=self._request(route, payload)) from exc
        except route.failures as exc:
            raise openai.APIConnectionError(request=self._request(route, payload)) from exc
        return response.status, response.headers, b"".join(chunks)

    async def _via_client(self, shard: int, request: Any) -> Any:
        """The answer through httpx's whole client (size cap in its response hook)."""
        http = self._http
        try:
            return await self.shards[shard].send(request)
        except http.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except (http.RequestError, ssl.SSLError) as exc:
            raise openai.APIConnectionError(request=request) from exc

    def _answer(self, response: Any) -> Any:
        if response.status_code >= 400:
            raise self._client._make_status_error_from_response(response)
        content_type = response.headers.get("content-type", "*").split(";", 1)[0]
        if not content_type.endswith("json"):
            return response.text  # as the SDK does: the caller says what it looks like
        return json.loads(response.content)

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


# -- failures -------------------------------------------------------------------------------


class _Failure(Exception):
    """One attempt failed. ``retry``: another attempt (maybe elsewhere) may succeed."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        endpoint: str | None = None,
        retry: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.endpoint = endpoint
        self.retry = retry
        self.retry_after = retry_after


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Failure) and exc.retry


class _WaitBackoff(wait_base):
    """Exponential back-off with jitter. Retry-After pauses the endpoint itself (see _acquire),
    so a retry may go to another endpoint at once instead of sleeping out the server's wish."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = min(self.cap, self.base * 2 ** (retry_state.attempt_number - 1))
        return random.uniform(backoff / 2, backoff)


def _parse_retry_after(
    headers: Mapping[str, str] | None, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms``, ``Retry-After`` seconds or
    HTTP date), uncapped; None when absent or unreadable."""
    if not headers:
        return None
    lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    value_text = lowered.get("retry-after")
    if not value_text:
        return None
    try:
        seconds = float(value_text)
    except ValueError:
        try:
            when = parsedate_to_datetime(value_text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - now())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _error_message(exc: openai.APIStatusError) -> tuple[str, str | None]:
    """(server's message, error code) from an error answer of any shape."""
    body = exc.body
    code: Any = None
    message: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail") or inner.get("msg")
            code = inner.get("code") or inner.get("type")
        elif isinstance(inner, str):
            message = inner
        if message is None and body.get("detail") is not None:  # FastAPI / TGI
            message = body["detail"]
    elif isinstance(body, str):
        message = body
    if not message:
        message = exc.message
    return str(message), (str(code) if code is not None else None)


def _status_kind(status: int, message: str, code: str | None) -> str:
    """Failure kind of an HTTP error answer."""
    if status in (401, 403):
        return f"http_{status}"
    if status == 404:
        text = f"{message} {code or ''}".lower()
        return "model_not_found" if "model" in text else "http_404"
    if status != 429 and _CONTEXT_ERROR.search(f"{message} {code or ''}"):
        return "context_length"
    return f"http_{status}"


def _status_retryable(status: int) -> bool:
    return status in _RETRYABLE_STATUS or (status >= 500 and status not in _NOT_RETRYABLE_5XX)


def _model_ids(data: Any) -> list[str] | None:
    """Model ids from a /v1/models answer of the shapes seen in the wild; None if unreadable."""
    items: Any = None
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        for key in ("data", "models"):  # OpenAI shape; Ollama's native {"models": [...]}
            if isinstance(data.get(key), list):
                items = data[key]
                break
    if items is None:
        return None
    ids = []
    for item in items:
        if isinstance(item, str):
            name: Any = item
        elif isinstance(item, dict):
            name = next((item[k] for k in ("id", "model", "name") if isinstance(item.get(k), str)), None)
        else:
            name = None
        if name and name.strip():
            ids.append(_clean_text(name.strip()))
    if items and not ids:
        return None
    return ids


def _describe_answer(data: Any) -> str:
    if isinstance(data, str):
        looks = "HTML" if "<html" in data[:2000].lower() or "<!doctype" in data[:200].lower() else "text"
        return f"{looks}, not JSON (a web UI or another service on that port?)"
    return f"JSON {type(data).__name__} without a model list"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _read_answer(data: Any, api: Api) -> tuple[str, str | None, int, int]:
    """(text, finish_reason, prompt_tokens, completion_tokens); raises ValueError if unusable."""
    if not isinstance(data, dict):
        raise ValueError(f"answer is {_describe_answer(data)}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError(f"answer has no choices: {str(data)[:200]!r}")
    choice = choices[0]
    if api == "chat":
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if text is None:
        text = ""  # e.g. content null: the model produced no text, a valid (empty) answer
    if not isinstance(text, str):
        raise ValueError(f"answer text is a {type(text).__name__}, not a string")
    finish = choice.get("finish_reason")
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return (
        _clean_text(text),
        _clean_text(finish) if isinstance(finish, str) else None,
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
    )


# -- the pool -------------------------------------------------------------------------------


@dataclass
class _Endpoint:
    url: str
    client: openai.AsyncOpenAI  # /v1/models, and the SDK's headers and errors for `sender`
    sender: _Sender
    limit: AdaptiveLimit
    in_flight: int = 0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    rested_until: float = 0.0
    rests: int = 0  # consecutive rests, for the back-off; total_rests for the stats
    total_rests: int = 0
    unusable: ClientError | None = None  # key rejected / model or path unknown; cleared by a success
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_total: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def load(self) -> float:
        return self.in_flight / self.limit.value

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "errors": dict(sorted(self.errors.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "mean_latency_s": round(self.latency_total / self.successes, 3) if self.successes else None,
            "concurrency_limit": self.limit.value,
            "concurrency_peak": int(self.limit.peak),
            "concurrency_cuts": self.limit.cuts,
            "rests": self.total_rests,
        }


class EndpointPool:
    """Sends generation requests to one or more OpenAI-compatible endpoints (async)."""

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        api_key: str,
        model: str | None = None,
        concurrency: int | None = None,
        max_concurrency: int = 128,
        initial_concurrency: int = 4,
        request_timeout: float = 600.0,
        max_attempts: int = 8,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        give_up_after: float = 600.0,
        rest_after_failures: int = 5,
        max_consecutive_bad_requests: int = 10,
    ) -> None:
        if not base_urls:
            raise ClientError("no model server given; pass --base-url or set OPENAI_BASE_URL")
        cap = MAX_CONCURRENCY_PER_ENDPOINT
        too_many = "%s %d is above the cap of %d requests in flight per endpoint; using %d"
        if concurrency is not None and concurrency > cap:
            log.warning(too_many, "--concurrency", concurrency, cap, cap)
            concurrency = cap
        if max_concurrency > cap:
            log.warning(too_many, "--max-concurrency", max_concurrency, cap, cap)
            max_concurrency = cap
        self.model = model
        self.request_timeout = request_timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.give_up_after = give_up_after
        self.rest_after_failures = rest_after_failures
        self.max_consecutive_bad_requests = max_consecutive_bad_requests
        self._api_key = api_key
        self._endpoints: list[_Endpoint] = []
        for url in dict.fromkeys(u.rstrip("/") for u in base_urls):
            limit = AdaptiveLimit(initial=initial_concurrency, maximum=max_concurrency, fixed=concurrency)
            # Per read; the whole request has its own deadline (_send). Connecting is quick
            # or never: do not wait the full request timeout for a black-holed host.
            timeout = _http_module().Timeout(request_timeout, connect=min(request_timeout, 10.0))
            client = openai.AsyncOpenAI(
                base_url=url, api_key=api_key, max_retries=0, timeout=timeout, http_client=_http_client(4)
            )
            sender = _Sender(client, max(1, limit.maximum), timeout)
            self._endpoints.append(_Endpoint(url=url, client=client, sender=sender, limit=limit))
        self._warn_if_few_file_descriptors()
        self._changed = asyncio.Condition()
        self._last_success = time.monotonic()
        self._last_error: str | None = None
        self._model_listed = False  # self.model came from /v1/models, not from the user
        self._fatal: ClientError | None = None
        self._bad_kind: str | None = None
        self._bad_streak = 0

    @classmethod
    def for_config(cls, config: Any, base_urls: Sequence[str]) -> EndpointPool:
        """A pool with the server settings of a RunConfig or JudgeConfig (same field names)."""
        return cls(
            base_urls,
            api_key=config.api_key,
            model=config.model,
            concurrency=config.concurrency,
            max_concurrency=config.max_concurrency,
            request_timeout=config.request_timeout,
            max_attempts=config.max_attempts,
            backoff_base=config.retry_wait,
            backoff_cap=config.retry_wait_max,
            give_up_after=config.give_up_after,
            max_consecutive_bad_requests=getattr(config, "max_consecutive_bad_requests", 10),
        )

    def _warn_if_few_file_descriptors(self) -> None:
        try:
            import resource
        except ImportError:  # Windows
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self.max_capacity() + 64
        if soft != resource.RLIM_INFINITY and wanted > soft:
            log.warning(
                "up to %d connections may be open but the open-file limit is %d; "
                "raise it (ulimit -n %d) or lower --max-concurrency", wanted, soft, wanted
            )

    # -- capacity ---------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self._endpoints]

    def max_capacity(self) -> int:
        return sum(e.limit.maximum for e in self._endpoints)

    def in_flight(self) -> int:
        return sum(e.in_flight for e in self._endpoints)

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise type(self._fatal)(str(self._fatal))

    def _set_fatal(self, error: ClientError) -> ClientError:
        if self._fatal is None:
            self._fatal = error
        return error

    async def _acquire(self) -> _Endpoint:
        async with self._changed:
            while True:
                self._raise_if_fatal()
                now = time.monotonic()
                ready = [e for e in self._endpoints if e.rested_until <= now and e.in_flight < e.limit.value]
                if ready:
                    best = min(ready, key=_Endpoint.load)
                    best.in_flight += 1
                    best.requests += 1
                    best.limit.on_send()
                    return best
                # Wake when the first rest or Retry-After pause ends, even if nothing is released.
                resting = [e.rested_until for e in self._endpoints if e.rested_until > now]
                timeout = max(0.0, min(resting) - now) if resting else None
                try:
                    await _aionet.within(self._changed.wait(), timeout)  # not wait_for: see within
                except asyncio.TimeoutError:
                    pass

    async def _release(self, endpoint: _Endpoint) -> None:
        async with self._changed:
            endpoint.in_flight -= 1
            endpoint.limit.on_done()
            if self._fatal is not None:
                self._changed.notify_all()  # every waiter must see it and stop
                return
            # Wake only as many waiters as there are free slots (the limit may have grown):
            # waking all of hundreds of parked workers on every answer costs more than the answer.
            now = time.monotonic()
            free = sum(max(0, e.limit.value - e.in_flight) for e in self._endpoints if e.rested_until <= now)
            self._changed.notify(max(1, free))

    # -- classification ---------------------------------------------------------------------

    def _scrub(self, text: str, limit: int = 300) -> str:
        """One line, no secrets (URL credentials, the API key, bearer tokens), bounded length."""
        text = _clean_text(str(text))
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
        if len(self._api_key) >= 8:
            text = text.replace(self._api_key, "***")
        text = _BEARER.sub(r"\1***", text)
        if "<" in text:
            text = _TAG.sub(" ", text)
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def _classify(self, exc: BaseException, endpoint: _Endpoint) -> _Failure:
        """Turn whatever an attempt raised into a _Failure with a kind and a clean message."""
        where = redact_url(endpoint.url)
        if isinstance(exc, _Failure):
            return exc
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError, openai.APITimeoutError)):
            message = f"no complete answer within {self.request_timeout:g} s"
            return _Failure("timeout", message, endpoint=where)
        if isinstance(exc, _AnswerTooLarge) or isinstance(exc.__cause__, _AnswerTooLarge):
            return _Failure("malformed_answer", self._scrub(str(exc)), endpoint=where)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            raw_message, code = _error_message(exc)
            kind = _status_kind(status, raw_message, code)
            return _Failure(
                kind,
                f"HTTP {status}: {self._scrub(raw_message)}",
                endpoint=where,
                # 401/403/404 are retried elsewhere: they are about the endpoint, not the request.
                retry=kind != "context_length" and (_status_retryable(status) or status in (401, 403, 404)),
                retry_after=_parse_retry_after(exc.response.headers),
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            return _Failure("connection", self._scrub(detail), endpoint=where)
        if isinstance(exc, (ValueError, TypeError, UnicodeError, KeyError)):
            # Undecodable JSON body (the SDK raises json's ValueError) or an unusable shape.
            return _Failure("malformed_answer", self._scrub(f"malformed answer: {exc}"), endpoint=where)
        # Something the SDK or transport raised that we do not know: still the server's doing
        # as far as this request goes; counted under "error" in the stats.
        log.debug("unexpected error from %s", where, exc_info=exc)
        return _Failure("error", self._scrub(f"{type(exc).__name__}: {exc}"), endpoint=where)

    def _unusable_error(self, failure: _Failure, endpoint: _Endpoint) -> ClientError:
        where = redact_url(endpoint.url)
        if failure.kind in ("http_401", "http_403"):
            return AuthError(
                f"the server at {where} rejected the API key ({failure.message}); "
                "set OPENAI_API_KEY or pass --api-key"
            )
        if failure.kind == "model_not_found":
            if self._model_listed:
                advice = "its /v1/models listed it first; pass the right name with --model"
                advice += _v1_hint(endpoint.url)
            else:
                advice = "pass a model it serves with --model (its /v1/models lists them)"
            return ModelNotFound(
                f"the server at {where} does not serve model {self.model!r} ({failure.message}); {advice}"
            )
        return BadRequest(
            f"the server at {where} answered 404 Not Found ({failure.message}); "
            f"check --base-url and --api (chat or completions){_v1_hint(endpoint.url)}"
        )

    def _bad_request_error(self, failure: _Failure) -> BadRequest:
        n = self._bad_streak
        if failure.kind == "context_length":
            return BadRequest(
                f"{n} requests in a row were longer than the model's context ({failure.message}); "
                "lower --max-tokens or --num-prompt-instructions"
            )
        return BadRequest(
            f"the server rejected {n} requests in a row ({failure.message}); check --api (chat or "
            "completions), --max-tokens and --model against what the server accepts"
        )

    def _record_failure(self, endpoint: _Endpoint, failure: _Failure) -> None:
        """Bookkeeping and policy for one failed attempt; raises when the job cannot go on."""
        endpoint.failures += 1
        kind = failure.kind
        endpoint.errors[kind] = endpoint.errors.get(kind, 0) + 1
        self._last_error = f"{redact_url(endpoint.url)}: {failure.message}"
        now = time.monotonic()
        if kind in _OVERLOAD_KINDS:
            endpoint.limit.on_overload()
        if failure.retry_after is not None and failure.retry:
            # Pause the endpoint itself: no request goes there until the server's time is up.
            pause = min(failure.retry_after, MAX_RETRY_AFTER)
            endpoint.rested_until = max(endpoint.rested_until, now + pause)
        if kind in _UNUSABLE_KINDS:
            endpoint.unusable = self._unusable_error(failure, endpoint)
            endpoint.rested_until = max(endpoint.rested_until, now + UNUSABLE_REST)
            if all(e.unusable is not None for e in self._endpoints):
                error = endpoint.unusable
                if len(self._endpoints) > 1:
                    error = type(error)(f"{error} (every other endpoint is unusable too)")
                raise self._set_fatal(error)
            return
        if not failure.retry:
            # A bad request is the request's problem, unless every request is bad the same way.
            if kind == self._bad_kind:
                self._bad_streak += 1
            else:
                self._bad_kind, self._bad_streak = kind, 1
            if self._bad_streak >= self.max_consecutive_bad_requests:
                raise self._set_fatal(self._bad_request_error(failure))
            return
        if kind == "http_429":
            # Rate limiting is flow control, not a broken endpoint: the smaller limit and
            # Retry-After handle it; resting would idle a server that is working.
            return
        endpoint.consecutive_failures += 1
        if endpoint.consecutive_failures >= self.rest_after_failures:
            # Rest it: 2 s, 4 s, ... up to 2 min; the other endpoints carry on meanwhile.
            endpoint.rests += 1
            endpoint.total_rests += 1
            pause = min(120.0, 2.0 ** min(endpoint.rests, 7))
            endpoint.rested_until = max(endpoint.rested_until, now + pause)
            endpoint.consecutive_failures = 0

    # -- model discovery --------------------------------------------------------------------

    async def _discover(self) -> tuple[list[str] | None, list[_Failure]]:
        """Model ids from the first endpoint whose /v1/models can be read, and the failures."""
        failures: list[_Failure] = []
        deadline = min(self.request_timeout, MODELS_TIMEOUT)
        for endpoint in self._endpoints:
            where = redact_url(endpoint.url)
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(_is_retryable),
                    wait=_WaitBackoff(min(0.5, self.backoff_base), min(4.0, self.backoff_cap)),
                    stop=stop_after_attempt(3),
                    reraise=True,
                ):
                    with attempt:
                        try:
                            data = await _aionet.within(endpoint.client.get("/models", cast_to=object), deadline)
                        except Exception as exc:  # noqa: BLE001 - sorted out by _classify
                            failure = self._classify(exc, endpoint)
                            if not (failure.kind == "connection" or _is_transient(failure)):
                                failure.retry = False  # 401/404/unreadable: asking again changes nothing
                            if failure.kind == "model_not_found":  # "404 ... /v1/models": the route
                                failure.kind = "http_404"
                            raise failure from exc
                        ids = _model_ids(data)
                        if ids is None:
                            raise _Failure(
                                "malformed_answer",
                                self._scrub(f"/v1/models answered {_describe_answer(data)}"),
                                endpoint=where,
                                retry=False,
                            )
                        return ids, failures
            except _Failure as failure:
                failures.append(failure)
        return None, failures

    def _discovery_error(self, failures: list[_Failure]) -> ClientError:
        urls = ", ".join(redact_url(u) for u in self.urls)
        hint = _v1_hint(self.urls[0]) if len(self.urls) == 1 else "; base URLs usually end in /v1"
        detail = "; ".join(f"{f.endpoint}: {f.kind}: {f.message}" for f in failures)
        if all(f.kind in ("connection", "timeout") for f in failures):
            return ServerUnreachable(
                f"cannot reach the model server at {urls} ({detail}); start it, or pass the right "
                f"--base-url{hint or ' (it usually ends in /v1)'}"
            )
        if any(f.kind in ("http_401", "http_403") for f in failures):
            return AuthError(
                f"the server at {urls} rejected the API key ({detail}); set OPENAI_API_KEY or pass --api-key"
            )
        return ModelNotFound(
            f"could not read the list of models from {urls} ({detail}); pass --model NAME{hint}"
        )

    async def list_models(self) -> list[str]:
        """Model ids of the first endpoint that answers ``/v1/models`` readably.

        Raises ServerUnreachable (nothing answered), AuthError or ModelNotFound (no readable list).
        """
        ids, failures = await self._discover()
        if ids is None:
            raise self._discovery_error(failures)
        return ids

    async def resolve_model(self) -> str:
        """Check ``self.model`` against the server's list, or take the first model listed.

        With a model given, ``/v1/models`` is optional: some servers lack it or answer something
        else there; we then go on with the given name and let the first request judge it.
        """
        ids, failures = await self._discover()
        if self.model is not None:
            if ids is None:
                if all(f.kind == "connection" for f in failures):
                    raise self._discovery_error(failures)
                reason = "; ".join(f"{f.endpoint}: {f.kind}: {f.message}" for f in failures)
                log.warning("could not read the model list (%s); using model %r as given", reason, self.model)
                return self.model
            if ids and self.model not in ids and f"{self.model}:latest" not in ids:  # Ollama tags
                raise ModelNotFound(
                    f"the server does not serve model {self.model!r}; it has: {', '.join(ids[:50])}. "
                    "Pass one of them with --model"
                )
            return self.model
        if ids is None:
            raise self._discovery_error(failures)
        if not ids:
            urls = ", ".join(redact_url(u) for u in self.urls)
            raise ModelNotFound(f"the server at {urls} lists no models; pass --model NAME")
        self.model = ids[0]
        self._model_listed = True
        return self.model

    # -- requests ---------------------------------------------------------------------------

    async def _send(
        self, endpoint: _Endpoint, request: GenerationRequest
    ) -> tuple[str, str | None, int, int]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.api == "chat":
            body["messages"] = request.prompt
            path = "/chat/completions"
        else:
            body["prompt"] = request.prompt
            path = "/completions"
        # The SDK's typed create() spends ~3 ms a request on parameter transforms and pydantic
        # models, and even post(cast_to=object) ~1 ms on options, header merging and response
        # wrappers; _Sender keeps the SDK's httpx transport, headers and error classes without
        # that. A whole-request deadline: the timeout of httpx is per read, so a server
        # trickling one byte at a time would never trip it.
        data: Any = await _aionet.within(endpoint.sender.post(path, json.dumps(body).encode()), self.request_timeout)
        return _read_answer(data, request.api)

    async def _attempt(self, request: GenerationRequest, attempt_number: int) -> Completion:
        endpoint = await self._acquire()
        started = time.monotonic()
        try:
            try:
                text, finish_reason, prompt_tokens, completion_tokens = await self._send(endpoint, request)
            except Exception as exc:  # noqa: BLE001 - every failure is classified
                failure = self._classify(exc, endpoint)
                self._record_failure(endpoint, failure)
                raise failure from exc
            latency = time.monotonic() - started
            endpoint.successes += 1
            endpoint.consecutive_failures = 0
            endpoint.rests = 0  # a working endpoint starts its back-off afresh next time
            endpoint.unusable = None
            endpoint.prompt_tokens += prompt_tokens
            endpoint.completion_tokens += completion_tokens
            endpoint.latency_total += latency
            endpoint.limit.on_success(latency)
            self._last_success = time.monotonic()
            self._bad_streak = 0
        finally:
            # After the limit has moved, so the wake-up counts the slots it just opened.
            await self._release(endpoint)
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            endpoint=endpoint.url,
            latency=latency,
            attempts=attempt_number,
        )

    def reset_silence(self) -> None:
        """Start the "no server has answered" clock afresh: the pool was idle, not unanswered."""
        self._last_success = time.monotonic()

    def _check_alive(self) -> None:
        silent = time.monotonic() - self._last_success
        if silent > self.give_up_after:
            raise ServerUnreachable(
                f"no model server has answered for {silent:.0f} s (last error: {self._last_error}); "
                "check the server, then rerun the same command to resume"
            )

    async def generate(self, request: GenerationRequest, *, attempts: int | None = None) -> Completion | RequestFailed:
        """Send one request with up to ``attempts`` tries (default ``max_attempts``).

        Returns the Completion, or a RequestFailed when the request failed every attempt or got
        an answer retrying cannot fix (400/422, context length): one bad request is not a bad job.
        Raises a :class:`ClientError` only when every further request would fail as well (see
        the module docstring), or when no endpoint has answered for ``give_up_after`` seconds.
        """
        if self.model is None:
            raise RuntimeError("call resolve_model() before generate()")
        self._raise_if_fatal()
        attempt = 1
        while True:
            self._check_alive()
            try:
                return await self._attempt(request, attempt)
            except _Failure as failure:
                if not failure.retry or attempt >= (attempts or self.max_attempts):
                    self._check_alive()
                    return RequestFailed(failure.kind, failure.message, failure.endpoint)
            # Exponential back-off with jitter, as _WaitBackoff; a plain loop because tenacity's
            # objects per request cost as much CPU as the HTTP exchange on a fast server.
            backoff = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            attempt += 1

    def stats(self) -> dict[str, dict[str, Any]]:
        return {redact_url(e.url): e.stats() for e in self._endpoints}

    async def aclose(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.sender.aclose()
            await endpoint.client.close()


def _is_transient(failure: _Failure) -> bool:
    return failure.kind in _OVERLOAD_KINDS or failure.kind.startswith("http_5") or failure.kind == "http_408"
