"""Unit tests of selfinstruct.llm: AIMD limit, error classification, Retry-After, redaction,
answer parsing. No server; see test_pool_hostile.py for the pool against a real loopback server."""

from __future__ import annotations

import asyncio
import gzip
import heapq
import json
import logging
from collections.abc import Iterator
from email.utils import format_datetime
from datetime import datetime, timezone
from typing import Any

import openai
import pytest

from selfinstruct import llm
from selfinstruct.llm import (
    MAX_CONCURRENCY_PER_ENDPOINT,
    AdaptiveLimit,
    EndpointPool,
    GenerationRequest,
    RequestFailed,
    redact_url,
)

http = llm._http_module()
URL = "http://127.0.0.1:9/v1"


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool() -> Iterator[EndpointPool]:
    p = EndpointPool([URL], api_key="sk-test-secret-key-123", model="m")
    yield p
    asyncio.run(p.aclose())


# -- AdaptiveLimit ----------------------------------------------------------------------------


class SimServer:
    """A deterministic server: ``arrive(now)`` returns when that request's answer is complete."""

    def arrive(self, now: float) -> float:
        raise NotImplementedError


class FixedSlots(SimServer):
    """``slots`` requests served at once for ``service`` seconds each; the rest queue (FIFO)."""

    def __init__(self, slots: int, service: float) -> None:
        self.free = [0.0] * slots
        self.service = service

    def arrive(self, now: float) -> float:
        start = max(now, heapq.heappop(self.free))
        heapq.heappush(self.free, start + self.service)
        return start + self.service


class ContinuousBatching(SimServer):
    """Latency ``base × (1 + in_service/slowdown)`` set at admission, up to ``capacity`` at once."""

    def __init__(self, base: float, slowdown: float, capacity: int) -> None:
        self.base, self.slowdown, self.capacity = base, slowdown, capacity
        self.busy: list[float] = []

    def arrive(self, now: float) -> float:
        while self.busy and self.busy[0] <= now:
            heapq.heappop(self.busy)
        start = now if len(self.busy) < self.capacity else heapq.heappop(self.busy)
        done = start + self.base * (1 + (len(self.busy) + 1) / self.slowdown)
        heapq.heappush(self.busy, done)
        return done

    def full_batch_throughput(self) -> float:
        return self.capacity / (self.base * (1 + self.capacity / self.slowdown))


class InstantServer(SimServer):
    """Answers after a fixed round trip; each answer then costs the client ``cpu`` seconds of
    its one event loop, so the client itself is the bottleneck."""

    def __init__(self, round_trip: float, cpu: float) -> None:
        self.round_trip, self.cpu, self.loop_free = round_trip, cpu, 0.0

    def arrive(self, now: float) -> float:
        self.loop_free = max(now + self.round_trip, self.loop_free) + self.cpu
        return self.loop_free


def simulate(server: SimServer, seconds: float, maximum: int = 128, initial: int = 4) -> tuple[AdaptiveLimit, float]:
    """A client that always has work keeps ``limit.value`` requests in flight for ``seconds``;
    returns the controller and the answers/s over the last quarter."""
    clock = Clock()
    limit = AdaptiveLimit(initial=initial, maximum=maximum, clock=clock)
    pending: list[tuple[float, int, float]] = []
    serial = 0
    answered_late = 0
    while clock.now < seconds:
        while len(pending) < limit.value:
            limit.on_send()
            serial += 1
            heapq.heappush(pending, (server.arrive(clock.now), serial, clock.now))
        done, _, sent = heapq.heappop(pending)
        clock.now = done
        limit.on_success(done - sent)
        limit.on_done()
        if done >= 0.75 * seconds:
            answered_late += 1
    return limit, answered_late / (0.25 * seconds)


def test_fixed_slots_settle_at_the_slot_count_not_beyond() -> None:
    limit, throughput = simulate(FixedSlots(32, 0.5), seconds=300)
    assert throughput >= 0.95 * 64
    assert 32 <= limit.value <= 48, limit.value  # more would only queue on the server
    assert limit.cuts == 0


def test_continuous_batching_server_is_driven_near_full_batch() -> None:
    # Latency per request grows with the batch by design; throughput keeps rising up to 128.
    server = ContinuousBatching(1.0, 8, 128)
    limit, throughput = simulate(server, seconds=900)
    assert throughput >= 0.9 * server.full_batch_throughput(), (limit.value, throughput)
    assert limit.value >= 48 and limit.cuts == 0


def test_instant_server_with_a_client_bound_loop_keeps_a_pipeline_full() -> None:
    # 0.5 ms round trip, 1 ms of client CPU per answer: at most 1000 answers/s, 667 at limit 1.
    limit, throughput = simulate(InstantServer(0.0005, 0.001), seconds=60)
    assert throughput >= 0.95 * 1000
    assert 2 <= limit.value <= 16, limit.value  # more would only wait for the event loop


def test_controller_follows_a_server_that_gets_more_slots() -> None:
    class Growing(SimServer):
        def __init__(self) -> None:
            self.small, self.large = FixedSlots(16, 0.2), FixedSlots(64, 0.2)

        def arrive(self, now: float) -> float:
            return (self.small if now < 100 else self.large).arrive(now)

    limit, throughput = simulate(Growing(), seconds=400)
    assert throughput >= 0.9 * 64 / 0.2 and limit.value >= 64


def test_limit_never_exceeds_maximum_and_fixed_never_moves() -> None:
    limit, _ = simulate(FixedSlots(1000, 0.1), seconds=60, maximum=6)
    assert limit.peak == 6 and limit.value >= 5  # 5 only while probing below the maximum
    fixed = AdaptiveLimit(fixed=3, clock=Clock())
    fixed.on_overload()
    fixed.on_success(100.0)
    assert fixed.value == 3 and fixed.maximum == 3 and fixed.cuts == 0


def test_overload_halves_once_per_round_trip_and_sets_ssthresh_at_episode_start() -> None:
    clock = Clock(0.0)  # a clock starting at 0 must still allow the first cut
    limit = AdaptiveLimit(initial=64, maximum=64, clock=clock)
    limit.on_success(2.0)  # best latency 2 s: one round trip
    limit.on_overload()
    assert limit.value == 32 and limit.ssthresh == 32 and limit.cuts == 1
    limit.on_overload()  # same round trip: one burst counts once
    assert limit.value == 32 and limit.cuts == 1
    clock.now = 2.5  # next round trip, same storm: lower the limit, keep ssthresh
    limit.on_overload()
    assert limit.value == 16 and limit.ssthresh == 32
    clock.now = 100.0  # a new episode, long after: ssthresh moves again
    limit.on_overload()
    assert limit.value == 8 and limit.ssthresh == 8
    for _ in range(10):
        limit.on_overload()
        clock.now += 3
    assert limit.value == 1  # never below one


def test_after_a_cut_each_answer_adds_one_back_to_ssthresh_then_probing_resumes() -> None:
    clock = Clock(0.0)
    limit = AdaptiveLimit(initial=64, maximum=128, clock=clock)
    limit.on_success(1.0)
    limit.on_overload()
    clock.now = 1.5
    limit.on_overload()  # 16, ssthresh 32
    assert (limit.value, limit.ssthresh, limit.phase) == (16, 32, "recover")
    for _ in range(16):  # one round trip of answers: doubled, without waiting for a measurement
        limit.on_success(1.0)
    assert limit.value == 32 and limit.phase == "hold"
    for _ in range(50):
        limit.on_success(1.0)
    assert limit.value == 32  # not past the known-good level without measuring


def test_a_slower_token_is_not_overload() -> None:
    # The old controller cut by 10 % when latency per token tripled; a batching server does that.
    clock = Clock(10.0)
    limit = AdaptiveLimit(initial=20, maximum=20, clock=clock)
    limit.on_success(1.0)
    clock.now = 20.0
    limit.on_success(50.0)
    assert limit.cuts == 0 and limit.value == 20


def test_a_client_with_too_little_to_send_does_not_raise_the_limit() -> None:
    clock = Clock()
    limit = AdaptiveLimit(initial=8, maximum=128, clock=clock)
    limit.on_send()  # only ever one request in flight
    for _ in range(500):
        clock.now += 0.1
        limit.on_success(0.1)
        limit.on_done()
        limit.on_send()
    assert limit.value == 8


# -- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # ms wins
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # bad ms falls back
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after-ms": "-3"}, None),
        ({"x-other": "1"}, None),
        ({}, None),
    ],
)
def test_retry_after_values(headers: dict[str, str], expected: float | None) -> None:
    assert llm._parse_retry_after(headers) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=timezone.utc), usegmt=True)
    assert llm._parse_retry_after({"Retry-After": date}, now=lambda: now) == pytest.approx(30)
    past = format_datetime(datetime.fromtimestamp(now - 30, tz=timezone.utc), usegmt=True)
    assert llm._parse_retry_after({"Retry-After": past}, now=lambda: now) == 0.0
    # A date without a zone is read as GMT, as RFC 9110 says.
    assert llm._parse_retry_after(
        {"Retry-After": date.replace(" GMT", "")}, now=lambda: now
    ) == pytest.approx(30)


def test_retry_after_read_from_httpx_headers_case_insensitively() -> None:
    headers = http.Headers({"RETRY-AFTER": "7"})
    assert llm._parse_retry_after(headers) == 7.0


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "code", "kind"),
    [
        (400, "Bad request.", None, "http_400"),
        (422, "Unprocessable.", None, "http_422"),
        (400, "Requested tokens (3000) exceed context window of 2048", "context_length_exceeded", "context_length"),
        (400, "whatever", "context_length_exceeded", "context_length"),  # llama.cpp: the code says it
        (
            400,
            "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens",
            None,
            "context_length",
        ),  # vLLM / OpenAI
        (422, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048", None, "context_length"),  # TGI
        (400, "the request exceeds the available context size, try increasing it", "exceed_context_size_error", "context_length"),
        (500, "prompt is too long", None, "context_length"),  # some servers send it as a 500
        (401, "Incorrect API key provided.", "invalid_api_key", "http_401"),
        (403, "Forbidden.", None, "http_403"),
        (404, "The model `x` does not exist", "model_not_found", "model_not_found"),
        (404, "Not Found", None, "http_404"),
        (429, "Rate limit: too many tokens per minute", None, "http_429"),  # not a context error
        (500, "oops", None, "http_500"),
        (503, "overloaded", None, "http_503"),
    ],
)
def test_status_kind(status: int, message: str, code: str | None, kind: str) -> None:
    assert llm._status_kind(status, message, code) == kind


def status_error(status: int, body: Any = None, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = http.Request("POST", URL + "/chat/completions")
    response = http.Response(status, request=request, headers=headers or {}, json=body)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize(
    ("status", "retry"),
    [(400, False), (413, False), (422, False), (401, True), (403, True), (404, True),
     (408, True), (409, True), (425, True), (429, True), (500, True), (501, False),
     (502, True), (503, True), (504, True), (505, False), (529, True)],
)  # fmt: skip
def test_classify_status_errors(pool: EndpointPool, status: int, retry: bool) -> None:
    # 401/403/404 are retried elsewhere: they say something about the endpoint, not the request.
    body = {"error": {"message": "server says no", "type": "x", "code": None}}
    failure = pool._classify(status_error(status, body), pool._endpoints[0])
    assert failure.retry is retry
    assert failure.kind == f"http_{status}"
    assert failure.message == f"HTTP {status}: server says no"
    assert failure.endpoint == URL


def test_classify_reads_retry_after_and_odd_error_bodies(pool: EndpointPool) -> None:
    endpoint = pool._endpoints[0]
    failure = pool._classify(status_error(429, {"error": "slow down"}, {"Retry-After": "12"}), endpoint)
    assert (failure.kind, failure.retry_after, failure.message) == ("http_429", 12.0, "HTTP 429: slow down")
    failure = pool._classify(status_error(422, {"detail": "Template not found"}), endpoint)  # TGI / FastAPI
    assert failure.message == "HTTP 422: Template not found"
    failure = pool._classify(status_error(502, None), endpoint)
    assert failure.kind == "http_502" and failure.message.startswith("HTTP 502: ")
    # A context error is the request's fault whatever the status: retrying cannot fix it.
    failure = pool._classify(status_error(500, {"error": {"message": "prompt is too long"}}), endpoint)
    assert (failure.kind, failure.retry) == ("context_length", False)
    failure = pool._classify(status_error(400, {"error": {"message": "need x < 5 and y > 3"}}), endpoint)
    assert failure.message == "HTTP 400: need x < 5 and y > 3"


def test_classify_transport_and_parse_failures(pool: EndpointPool) -> None:
    endpoint = pool._endpoints[0]
    request = http.Request("POST", URL)
    cases = [
        (openai.APITimeoutError(request=request), "timeout"),
        (TimeoutError(), "timeout"),  # the whole-request deadline
        (openai.APIConnectionError(request=request), "connection"),
        (ValueError("Expecting value: line 1 column 1"), "malformed_answer"),  # JSON body undecodable
        (llm._AnswerTooLarge("too big"), "malformed_answer"),
        (RuntimeError("odd"), "error"),
    ]
    for exc, kind in cases:
        failure = pool._classify(exc, endpoint)
        assert (failure.kind, failure.retry) == (kind, True), exc


def test_error_messages_are_one_line_without_secrets(pool: EndpointPool) -> None:
    text = (
        "bad\nthings <b>happened</b> at http://bob:hunter2@10.0.0.1:8000/v1?api_key=abc123 "
        "with key sk-test-secret-key-123 and Authorization: Bearer tok-987654321 \ud83d" + "x" * 1000
    )
    clean = pool._scrub(text)
    assert "\n" not in clean and len(clean) <= 300
    for secret in ("hunter2", "bob", "abc123", "sk-test-secret-key-123", "tok-987654321", "<b>"):
        assert secret not in clean
    assert "http://10.0.0.1:8000/v1?api_key=REDACTED" in clean
    clean.encode("utf-8")  # lone surrogate replaced


# -- redact_url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://alice:p@ssWORD@host/v1", "http://host/v1"),
        ("http://alice:secret@host:8000/v1", "http://host:8000/v1"),
        ("http://alice@host/v1", "http://host/v1"),
        ("https://host/v1", "https://host/v1"),
        ("http://u:p@[::1]:8000/v1", "http://[::1]:8000/v1"),
        ("http://alice:p/ss@host/v1", "http://host/v1"),  # raw '/' in the password
        ("http://alice:p?ss@host/v1", "http://host/v1"),  # raw '?' in the password
        ("http://alice:123/4@host/v1", "http://host/v1"),  # digits look like a port
        ("http://host/v1?api_key=sk-1&x=2", "http://host/v1?api_key=REDACTED&x=2"),
        ("http://host/v1?key=a&token=b&access_token=c&sig=d", "http://host/v1?key=REDACTED&token=REDACTED&access_token=REDACTED&sig=REDACTED"),
        ("http://host/v1?API-KEY=a&model=m", "http://host/v1?API-KEY=REDACTED&model=m"),
        ("http://u:p@host/v1?x=1#frag", "http://host/v1?x=1#frag"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_unparseable_keeps_nothing_of_the_password() -> None:
    redacted = redact_url("http://alice:pa55word@[::1/v1?token=xyz")  # unclosed bracket
    assert "pa55word" not in redacted and "alice" not in redacted and "xyz" not in redacted


# -- answers and model lists ------------------------------------------------------------------


def test_read_answer_cleans_text_and_usage() -> None:
    data = {
        "choices": [{"message": {"content": "a\ud83db"}, "finish_reason": 7}],
        "usage": {"prompt_tokens": "12", "completion_tokens": -1},
    }
    assert llm._read_answer(data, "chat") == ("a\ufffdb", None, 0, 0)
    data = {"choices": [{"text": None, "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": True}}
    assert llm._read_answer(data, "completions") == ("", "length", 3, 0)
    assert llm._read_answer({"choices": [{"message": None}], "usage": []}, "chat") == ("", None, 0, 0)


@pytest.mark.parametrize(
    "data",
    [None, [], "text", 5, {}, {"choices": []}, {"choices": {}}, {"choices": [None]},
     {"choices": [{"message": {"content": 5}}]}, {"choices": [{"message": {"content": ["a"]}}]}],
)  # fmt: skip
def test_read_answer_rejects_unusable_shapes(data: Any) -> None:
    with pytest.raises(ValueError):
        llm._read_answer(data, "chat")


@pytest.mark.parametrize(
    ("data", "ids"),
    [
        ({"object": "list", "data": [{"id": "a"}, {"id": "b"}]}, ["a", "b"]),
        (["a", "b"], ["a", "b"]),
        ([{"id": "a"}], ["a"]),
        ({"models": [{"name": "llama3:latest", "model": "llama3:latest"}]}, ["llama3:latest"]),
        ({"models": [{"name": "x"}]}, ["x"]),
        ({"data": [{"id": "a"}, {"object": "model"}, {"id": 5}]}, ["a"]),
        ({"data": []}, []),
        ({"data": [{"object": "model"}]}, None),  # entries, none with a name
        ({"data": "a"}, None),
        ("<html>web ui</html>", None),
        ({"error": "x"}, None),
        (None, None),
    ],
)
def test_model_ids_shapes(data: Any, ids: list[str] | None) -> None:
    assert llm._model_ids(data) == ids


def test_v1_hint() -> None:
    assert llm._v1_hint("http://host:8000/v1") == ""
    assert llm._v1_hint("http://host:8000/v1/") == ""
    assert "http://host:8000/v1" in llm._v1_hint("http://host:8000")
    assert "ends in /v1" in llm._v1_hint("http://u:pw@host/api")
    assert "pw" not in llm._v1_hint("http://u:pw@host/api")


# -- answer size cap --------------------------------------------------------------------------


def test_answer_size_cap_without_content_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "MAX_ANSWER_BYTES", 100)

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 30

    async def main() -> None:
        response = http.Response(200, content=chunks())
        assert "content-length" not in response.headers
        await llm._cap_answer_size(response)
        with pytest.raises(llm._AnswerTooLarge):
            await response.aread()
        small = http.Response(200, content=b"y" * 100)
        small = http.Response(200, stream=small.stream)  # a stream without Content-Length
        await llm._cap_answer_size(small)
        assert await small.aread() == b"y" * 100
        with pytest.raises(llm._AnswerTooLarge):
            await llm._cap_answer_size(http.Response(200, headers={"Content-Length": "101"}, content=b""))

    asyncio.run(main())


def test_a_content_length_of_non_ascii_digits_is_left_to_the_streaming_cap() -> None:
    llm._refuse_declared_size("\u00b2")  # "²" passes str.isdigit() but is no number
    with pytest.raises(llm._AnswerTooLarge):
        llm._refuse_declared_size(str(llm.MAX_ANSWER_BYTES + 1))


ANSWER = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1}}


def http_reply(status: str, headers: dict[str, str], body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status}\r\n{head}connection: close\r\n\r\n".encode() + body


def canned_generate(replies: dict[str, bytes], userinfo: str = "", heads: list[list[str]] | None = None) -> Any:
    """pool.generate once against a loopback server that answers each path with fixed bytes
    (the request heads it saw go to ``heads``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        if heads is not None:
            heads.append(head)
        length = [int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:")]
        await reader.readexactly(length[0] if length else 0)
        writer.write(replies[head[0].split(" ")[1]])
        await writer.drain()
        writer.close()

    async def main() -> Any:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://{userinfo}127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        pool = EndpointPool([url], api_key="k", model="m", max_attempts=1, request_timeout=10)
        try:
            return await pool.generate(GenerationRequest("chat", [{"role": "user", "content": "x"}], 8))
        finally:
            await pool.aclose()
            server.close()

    return asyncio.run(main())


def test_streamed_answer_over_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "MAX_ANSWER_BYTES", 100)
    chunks = b"1e\r\n" + b"x" * 30 + b"\r\n"
    body = chunks * 10 + b"0\r\n\r\n"  # chunked: no Content-Length to check first
    reply = http_reply("200 OK", {"content-type": "application/json", "transfer-encoding": "chunked"}, body)
    failed = canned_generate({"/v1/chat/completions": reply})
    assert isinstance(failed, RequestFailed) and failed.kind == "malformed_answer"
    assert "larger than 100 bytes" in failed.message


def test_compressed_and_redirected_answers_are_read() -> None:
    packed = gzip.compress(json.dumps(ANSWER).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip", "content-length": str(len(packed))}
    gzipped = http_reply("200 OK", headers, packed)
    assert canned_generate({"/v1/chat/completions": gzipped}).text == "hi"
    moved = http_reply("307 Temporary Redirect", {"location": "/v2/chat/completions", "content-length": "0"}, b"")
    plain = json.dumps(ANSWER).encode()
    answer = http_reply("200 OK", {"content-type": "application/json", "content-length": str(len(plain))}, plain)
    assert canned_generate({"/v1/chat/completions": moved, "/v2/chat/completions": answer}).text == "hi"


def test_a_url_with_credentials_goes_through_the_whole_client() -> None:
    """httpx turns user:password in a URL into Basic auth; the direct path would drop it."""
    plain = json.dumps(ANSWER).encode()
    answer = http_reply("200 OK", {"content-type": "application/json", "content-length": str(len(plain))}, plain)
    heads: list[list[str]] = []
    assert canned_generate({"/v1/chat/completions": answer}, "user:pw@", heads).text == "hi"
    auth = [h.split(":", 1)[1].strip() for h in heads[0] if h.lower().startswith("authorization:")]
    assert auth == ["Basic dXNlcjpwdw=="]


# -- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"concurrency": 100_000}, {"max_concurrency": 100_000}])
def test_concurrency_is_capped_and_connection_pool_sized_to_match(
    kwargs: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="selfinstruct"):
        pool = EndpointPool([URL, URL + "2"], api_key="k", **kwargs)
    try:
        assert MAX_CONCURRENCY_PER_ENDPOINT == 512
        assert pool.max_capacity() == 2 * MAX_CONCURRENCY_PER_ENDPOINT
        assert "100000" in caplog.text and str(MAX_CONCURRENCY_PER_ENDPOINT) in caplog.text
        for endpoint in pool._endpoints:
            assert endpoint.limit.maximum == MAX_CONCURRENCY_PER_ENDPOINT
            assert connection_slots(endpoint) == MAX_CONCURRENCY_PER_ENDPOINT
            assert len(endpoint.sender.shards) > 1  # short pools: httpcore scans all per request
    finally:
        asyncio.run(pool.aclose())


def connection_slots(endpoint: Any) -> int:
    """Connections the endpoint's httpx pools (the SDK's transport, in shards) may open."""
    return sum(shard._transport._pool._max_connections for shard in endpoint.sender.shards)


def test_connection_pool_follows_a_small_limit() -> None:
    pool = EndpointPool([URL], api_key="k", concurrency=3)
    try:
        assert connection_slots(pool._endpoints[0]) == 3
    finally:
        asyncio.run(pool.aclose())


def test_request_failed_is_a_frozen_value() -> None:
    failed = RequestFailed("http_400", "HTTP 400: no", "http://h/v1")
    assert failed == RequestFailed(kind="http_400", message="HTTP 400: no", endpoint="http://h/v1")
    assert RequestFailed("timeout", "late").endpoint is None
    with pytest.raises(AttributeError):
        failed.kind = "x"  # type: ignore[misc]
    assert "RequestFailed" in llm.__all__ and "MAX_CONCURRENCY_PER_ENDPOINT" in llm.__all__
