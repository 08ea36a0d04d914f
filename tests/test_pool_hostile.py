"""The real EndpointPool against the real fake server over 127.0.0.1, misbehaving on purpose.

Every server reply is untrusted: whatever the fake sends, the pool answers with a Completion, a
RequestFailed, or (only where every further request would fail too) a ClientError with a clear
message. Never a traceback, never a hang (each test has a hard timeout).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from fake_openai import FakeOpenAI, Reply

from selfinstruct import llm
from selfinstruct.errors import AuthError, BadRequest, ModelNotFound, ServerUnreachable
from selfinstruct.llm import (
    MAX_CONCURRENCY_PER_ENDPOINT,
    Completion,
    EndpointPool,
    GenerationRequest,
    RequestFailed,
)

pytestmark = pytest.mark.timeout(30)

MODEL = "fake-model"
CHAT = GenerationRequest("chat", [{"role": "user", "content": "Write 2 tasks"}], 64)
T = TypeVar("T")


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server
        assert server.internal_errors == []


def make_pool(*urls: str, **kwargs: Any) -> EndpointPool:
    settings: dict[str, Any] = {
        "api_key": "sk-test-key-0123456789",
        "request_timeout": 2.0,
        "backoff_base": 0.01,
        "backoff_cap": 0.02,
        "max_attempts": 3,
        "give_up_after": 60.0,
    }
    settings.update(kwargs)
    return EndpointPool(list(urls), **settings)


def run(pool: EndpointPool, body: Callable[[EndpointPool], Awaitable[T]], resolve: bool = True) -> T:
    """Run ``body(pool)`` on a fresh event loop, after resolve_model(); always close the pool."""

    async def main() -> T:
        try:
            if resolve:
                await pool.resolve_model()
            return await body(pool)
        finally:
            await pool.aclose()

    return asyncio.run(main())


def chat_answer(content: Any = "1. Instruction: Do it.", usage: Any = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", **choice}],
        "usage": usage if usage is not None else {"prompt_tokens": 5, "completion_tokens": 7},
    }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- A: a bad request is not a bad job ----------------------------------------------------------


def test_http_400_returns_request_failed_at_once(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply.error(400, "'messages' is malformed here"))

    async def body(pool: EndpointPool) -> tuple[Any, Any]:
        return await pool.generate(CHAT), await pool.generate(CHAT)

    failed, ok = run(make_pool(fake.base_url), body)
    assert failed == RequestFailed("http_400", "HTTP 400: 'messages' is malformed here", fake.base_url)
    assert isinstance(ok, Completion)
    assert len(fake.completion_requests()) == 2  # no retry of the 400


@pytest.mark.parametrize(
    "reply",
    [
        Reply.error(400, "Requested tokens (2100) exceed context window of 2048", code="context_length_exceeded"),
        Reply.error(400, "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens."),
        Reply.error(422, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048."),
    ],
    ids=["llama.cpp", "vllm", "tgi"],
)
def test_context_length_is_one_failed_request(fake: FakeOpenAI, reply: Reply) -> None:
    fake.enqueue(reply)
    failed = run(make_pool(fake.base_url), lambda pool: pool.generate(CHAT))
    assert isinstance(failed, RequestFailed) and failed.kind == "context_length"
    assert len(fake.completion_requests()) == 1


def test_same_bad_request_many_times_in_a_row_stops_the_job(fake: FakeOpenAI) -> None:
    fake.set_handler(lambda ctx: Reply.error(400, "maximum context length is 2048 tokens"))

    async def body(pool: EndpointPool) -> tuple[list[Any], BaseException, BaseException]:
        results = [await pool.generate(CHAT) for _ in range(2)]
        with pytest.raises(BadRequest) as third:
            await pool.generate(CHAT)
        with pytest.raises(BadRequest) as later:  # the pool stays stopped for every caller
            await pool.generate(CHAT)
        return results, third.value, later.value

    results, error, later = run(make_pool(fake.base_url, max_consecutive_bad_requests=3), body)
    assert [r.kind for r in results] == ["context_length"] * 2
    message = str(error)
    assert "maximum context length is 2048 tokens" in message
    assert "--max-tokens" in message and "--num-prompt-instructions" in message
    assert str(later) == message
    assert len(fake.completion_requests()) == 3


def test_a_success_or_another_kind_resets_the_streak(fake: FakeOpenAI) -> None:
    fake.enqueue(
        Reply.error(400, "bad"), Reply.error(400, "bad"), Reply.default(1),
        Reply.error(400, "bad"), Reply.error(400, "bad"), Reply.error(422, "odd"),
        Reply.error(400, "bad"), Reply.error(400, "bad"),
    )  # fmt: skip

    async def body(pool: EndpointPool) -> list[str]:
        return [type(await pool.generate(CHAT)).__name__ for _ in range(8)]

    names = run(make_pool(fake.base_url, max_consecutive_bad_requests=3), body)
    assert names == ["RequestFailed"] * 2 + ["Completion"] + ["RequestFailed"] * 5


def test_every_attempt_failing_returns_the_last_kind(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply.error(500), Reply.drop(), Reply.error(503))
    failed = run(make_pool(fake.base_url), lambda pool: pool.generate(CHAT))
    assert isinstance(failed, RequestFailed) and failed.kind == "http_503"
    assert failed.endpoint == fake.base_url and "overloaded" in failed.message
    assert [r.status for r in fake.completion_requests()] == [500, 0, 503]


def test_dropped_connection_is_kind_connection(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply.drop())
    failed = run(make_pool(fake.base_url, max_attempts=1), lambda pool: pool.generate(CHAT))
    assert isinstance(failed, RequestFailed) and failed.kind == "connection"


def test_401_on_one_endpoint_rests_it_while_the_other_carries_on() -> None:
    with FakeOpenAI(api_key="another-key") as locked, FakeOpenAI() as good:

        async def body(pool: EndpointPool) -> list[Any]:
            return list(await asyncio.gather(*(pool.generate(CHAT) for _ in range(40))))

        pool = make_pool(locked.base_url, good.base_url, model=MODEL, initial_concurrency=4)
        results = run(pool, body)
        assert all(isinstance(r, Completion) for r in results)
        assert {r.endpoint for r in results} == {good.base_url}
        # Only requests already in flight when the first 401 came back reached it.
        assert 1 <= len(locked.completion_requests()) <= 4
        assert pool.stats()[locked.base_url]["errors"].get("http_401", 0) >= 1


def test_401_on_every_endpoint_raises_auth_error() -> None:
    with FakeOpenAI(api_key="a-key") as one, FakeOpenAI(api_key="b-key") as two:

        async def body(pool: EndpointPool) -> BaseException:
            with pytest.raises(AuthError) as info:
                await pool.generate(CHAT)
            return info.value

        error = run(make_pool(one.base_url, two.base_url, model=MODEL), body)
        message = str(error)
        assert "--api-key" in message and "sk-test-key-0123456789" not in message
        assert len(one.completion_requests()) + len(two.completion_requests()) == 2


def test_unknown_model_listed_by_the_server_fails_fast(fake: FakeOpenAI) -> None:
    # /v1/models lists a model the completions endpoint then does not know.
    fake.models_reply = Reply.json({"object": "list", "data": [{"id": "ghost"}]})

    async def body(pool: EndpointPool) -> BaseException:
        with pytest.raises(ModelNotFound) as info:
            await pool.generate(CHAT)
        return info.value

    message = str(run(make_pool(fake.base_url), body))
    assert "'ghost'" in message and "listed it first" in message and "--model" in message
    assert "None" not in message and "run without --model" not in message


def test_unknown_model_given_by_the_user(fake: FakeOpenAI) -> None:
    fake.models_reply = Reply.raw("404 page not found", 404, "text/plain")  # no list to check

    async def body(pool: EndpointPool) -> BaseException:
        with pytest.raises(ModelNotFound) as info:
            await pool.generate(CHAT)
        return info.value

    message = str(run(make_pool(fake.base_url, model="nope"), body))
    assert "'nope'" in message and "--model" in message and "None" not in message


# -- B: malformed answers ------------------------------------------------------------------------


RETRIED = {
    "malformed_json": Reply.raw('{"choices": [{"message": '),
    "not_json": Reply.raw(b"\xff\xfe\x00 garbage"),
    "html_200": Reply.raw("<!doctype html><html><body>Loading</body></html>", content_type="text/html"),
    "json_list": Reply.json([1, 2, 3]),
    "json_string": Reply.json("ok"),
    "json_null": Reply.json(None),
    "no_choices": Reply.json({"id": "x"}),
    "choices_empty": Reply.json({"choices": []}),
    "choices_not_list": Reply.json({"choices": {"0": {}}}),
    "choice_not_object": Reply.json({"choices": ["text"]}),
    "content_number": Reply.json(chat_answer(content=42)),
    "error_in_200": Reply.json({"error": {"message": "internal"}}),
    "huge_body": Reply.json(chat_answer(content="a" * (llm.MAX_ANSWER_BYTES + 10))),
}


@pytest.mark.parametrize("name", list(RETRIED))
def test_malformed_answer_is_retried_then_reported(fake: FakeOpenAI, name: str) -> None:
    fake.enqueue(RETRIED[name], Reply.default(1), RETRIED[name], RETRIED[name])

    async def body(pool: EndpointPool) -> tuple[Any, Any]:
        return await pool.generate(CHAT), await pool.generate(CHAT)

    ok, failed = run(make_pool(fake.base_url, max_attempts=2), body)
    assert isinstance(ok, Completion) and ok.attempts == 2
    assert isinstance(failed, RequestFailed) and failed.kind == "malformed_answer", failed
    assert "\n" not in failed.message and len(failed.message) <= 300


def test_malformed_answer_message_on_a_huge_body(fake: FakeOpenAI) -> None:
    fake.enqueue(RETRIED["huge_body"])
    failed = run(make_pool(fake.base_url, max_attempts=1), lambda pool: pool.generate(CHAT))
    assert isinstance(failed, RequestFailed) and "bytes" in failed.message


@pytest.mark.parametrize(
    ("answer", "text", "tokens"),
    [
        (chat_answer(content=None), "", (5, 7)),
        (chat_answer(content="smile \ud83d please"), "smile \ufffd please", (5, 7)),
        (chat_answer(content="pair \ud83d\ude00 ok"), "pair \U0001f600 ok", (5, 7)),
        (chat_answer(usage={"prompt_tokens": "12", "completion_tokens": -3}), "1. Instruction: Do it.", (0, 0)),
        (chat_answer(usage={"prompt_tokens": 1.5, "completion_tokens": None}), "1. Instruction: Do it.", (0, 0)),
        (chat_answer(usage="lots"), "1. Instruction: Do it.", (0, 0)),
        (chat_answer(usage={"prompt_tokens": True, "completion_tokens": 9}), "1. Instruction: Do it.", (0, 9)),
    ],
    ids=["content_null", "lone_surrogate", "surrogate_pair", "usage_strings", "usage_float", "usage_str", "usage_bool"],
)
def test_odd_but_usable_answers_are_cleaned(
    fake: FakeOpenAI, answer: dict[str, Any], text: str, tokens: tuple[int, int]
) -> None:
    fake.enqueue(Reply.json(answer))
    result = run(make_pool(fake.base_url), lambda pool: pool.generate(CHAT))
    assert isinstance(result, Completion) and result.attempts == 1
    assert result.text == text and (result.prompt_tokens, result.completion_tokens) == tokens
    result.text.encode("utf-8")


def test_odd_finish_reason_and_completions_api(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply.json({"choices": [{"text": None, "finish_reason": {"odd": 1}}]}))
    request = GenerationRequest("completions", "Write 1 tasks\n1. Instruction:", 32)
    result = run(make_pool(fake.base_url), lambda pool: pool.generate(request))
    assert isinstance(result, Completion) and result.text == "" and result.finish_reason is None


# -- C: /v1/models ---------------------------------------------------------------------------------

HTML = Reply.raw("<!DOCTYPE html><html><head><title>Open WebUI</title></head></html>", content_type="text/html")
NO_MODELS_ROUTE = Reply.raw("404 page not found", 404, "text/plain")


@pytest.mark.parametrize(
    "reply",
    [HTML, NO_MODELS_ROUTE, Reply.raw("{broken", 200), Reply.json({"data": [{"object": "model"}]}), Reply.error(500)],
    ids=["html", "no_route", "bad_json", "no_ids", "http_500"],
)
def test_unreadable_model_list_with_a_model_given_proceeds(
    fake: FakeOpenAI, reply: Reply, caplog: pytest.LogCaptureFixture
) -> None:
    fake.models_reply = reply

    async def body(pool: EndpointPool) -> tuple[str, Any]:
        return await pool.resolve_model(), await pool.generate(CHAT)

    with caplog.at_level(logging.WARNING, logger="selfinstruct"):
        model, result = run(make_pool(fake.base_url, model=MODEL), body, resolve=False)
    assert model == MODEL and isinstance(result, Completion)
    assert "could not read the model list" in caplog.text and MODEL in caplog.text


@pytest.mark.parametrize(
    ("reply", "expected"),
    [(HTML, "HTML"), (NO_MODELS_ROUTE, "404"), (Reply.json({"data": [{"object": "model"}]}), "without a model list")],
    ids=["html", "no_route", "no_ids"],
)
def test_unreadable_model_list_without_a_model(fake: FakeOpenAI, reply: Reply, expected: str) -> None:
    fake.models_reply = reply

    async def body(pool: EndpointPool) -> BaseException:
        with pytest.raises(ModelNotFound) as info:
            await pool.resolve_model()
        return info.value

    message = str(run(make_pool(fake.base_url), body, resolve=False))
    assert expected in message and "--model" in message and "None" not in message


@pytest.mark.parametrize(
    ("reply", "ids"),
    [
        (Reply.json(["m1", "m2"]), ["m1", "m2"]),
        (Reply.json({"models": [{"name": "llama3:latest", "model": "llama3:latest", "size": 1}]}), ["llama3:latest"]),
        (Reply.json({"data": [{"object": "model"}, {"id": "m2"}]}), ["m2"]),
        (None, [MODEL]),
    ],
    ids=["bare_list", "ollama", "some_without_id", "openai"],
)
def test_model_list_shapes(fake: FakeOpenAI, reply: Reply | None, ids: list[str]) -> None:
    fake.models_reply = reply
    assert run(make_pool(fake.base_url), lambda pool: pool.list_models(), resolve=False) == ids


def test_ollama_tag_given_without_latest(caplog: pytest.LogCaptureFixture) -> None:
    with FakeOpenAI(models=("llama3", "llama3:latest")) as fake:
        fake.models_reply = Reply.json({"models": [{"name": "llama3:latest"}]})
        assert run(make_pool(fake.base_url, model="llama3"), lambda pool: pool.resolve_model(), resolve=False) == "llama3"


def test_empty_model_list_without_a_model(fake: FakeOpenAI) -> None:
    fake.models_reply = Reply.json({"object": "list", "data": []})

    async def body(pool: EndpointPool) -> BaseException:
        with pytest.raises(ModelNotFound) as info:
            await pool.resolve_model()
        return info.value

    assert "lists no models; pass --model NAME" in str(run(make_pool(fake.base_url), body, resolve=False))


def test_base_url_without_v1_gets_a_hint(fake: FakeOpenAI) -> None:
    root = fake.base_url[: -len("/v1")]  # the fake answers 404 to /models here

    async def body(pool: EndpointPool) -> BaseException:
        with pytest.raises(ModelNotFound) as info:
            await pool.resolve_model()
        return info.value

    message = str(run(make_pool(root), body, resolve=False))
    assert "usually ends in /v1" in message and f"{root}/v1" in message


@pytest.mark.parametrize("model", [None, MODEL])
def test_nobody_listening_is_server_unreachable(model: str | None) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"

    async def body(pool: EndpointPool) -> BaseException:
        with pytest.raises(ServerUnreachable) as info:
            await pool.resolve_model()
        return info.value

    message = str(run(make_pool(url, model=model), body, resolve=False))
    assert "cannot reach" in message and url in message


def test_auth_error_on_the_model_list_without_a_model() -> None:
    with FakeOpenAI(api_key="other") as fake:

        async def body(pool: EndpointPool) -> BaseException:
            with pytest.raises(AuthError) as info:
                await pool.resolve_model()
            return info.value

        message = str(run(make_pool(fake.base_url), body, resolve=False))
        assert "--api-key" in message and "sk-test-key-0123456789" not in message


# -- D: deadlines ------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["body", "head"])
def test_trickling_server_cannot_defeat_the_request_timeout(fake: FakeOpenAI, part: str) -> None:
    # One byte every 0.1 s never trips a 0.5 s per-read timeout; the answer would take a minute.
    fake.enqueue(Reply.trickle(Reply.text("x" * 300), 0.1, part=part))

    async def body(pool: EndpointPool) -> tuple[Any, Any]:
        return await pool.generate(CHAT), await pool.generate(CHAT)

    failed, ok = run(make_pool(fake.base_url, request_timeout=0.5, max_attempts=1), body)
    assert isinstance(failed, RequestFailed) and failed.kind == "timeout"
    assert isinstance(ok, Completion)  # the pool is fine afterwards


def test_trickling_model_list_is_bounded(fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    fake.models_reply = Reply.trickle(Reply.json(["m"]), 0.1, part="head")

    async def body(pool: EndpointPool) -> tuple[str, BaseException]:
        model = await pool.resolve_model()  # model given: warn and go on
        pool.model = None
        with pytest.raises(ServerUnreachable) as info:  # no model: nothing readable came back
            await pool.resolve_model()
        return model, info.value

    with caplog.at_level(logging.WARNING, logger="selfinstruct"):
        model, error = run(make_pool(fake.base_url, model=MODEL, request_timeout=0.3), body, resolve=False)
    assert model == MODEL and "timeout" in caplog.text and "timeout" in str(error)


# -- E: Retry-After ------------------------------------------------------------------------------


def test_retry_after_pauses_that_endpoint_only() -> None:
    with FakeOpenAI() as limited, FakeOpenAI() as other:
        limited.set_handler(lambda ctx: Reply.error(429, headers={"Retry-After": "300"}))

        async def body(pool: EndpointPool) -> list[Any]:
            return list(await asyncio.gather(*(pool.generate(CHAT) for _ in range(30))))

        pool = make_pool(limited.base_url, other.base_url, model=MODEL, concurrency=2)
        results = run(pool, body)
        assert all(isinstance(r, Completion) and r.endpoint == other.base_url for r in results)
        # Only the requests in flight when the first 429 arrived went there.
        assert 1 <= len(limited.completion_requests()) <= 2
        stats = pool.stats()[limited.base_url]
        assert stats["rests"] == 0  # flow control, not a broken endpoint


def test_retry_after_is_honoured_for_the_whole_endpoint_and_capped(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply.error(429, headers={"Retry-After": "100000"}))

    async def body(pool: EndpointPool) -> tuple[Any, float]:
        first = await pool.generate(CHAT)
        second = asyncio.ensure_future(pool.generate(CHAT))
        done, _ = await asyncio.wait({second}, timeout=0.5)
        assert not done  # it waits for the pause; nothing was sent
        paused_for = pool._endpoints[0].rested_until - time.monotonic()
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        return first, paused_for

    pool = make_pool(fake.base_url, concurrency=4, max_attempts=1)
    first, paused_for = run(pool, body)
    assert isinstance(first, RequestFailed) and first.kind == "http_429"
    assert len(fake.completion_requests()) == 1
    assert llm.MAX_RETRY_AFTER - 10 < paused_for <= llm.MAX_RETRY_AFTER
    assert pool.stats()[fake.base_url]["errors"] == {"http_429": 1}


def test_429_cuts_the_limit(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply.error(429), Reply.error(429))

    async def body(pool: EndpointPool) -> Any:
        return await pool.generate(CHAT)

    pool = make_pool(fake.base_url, initial_concurrency=8)
    result = run(pool, body)
    assert isinstance(result, Completion) and result.attempts == 3
    stats = pool.stats()[fake.base_url]
    assert stats["concurrency_cuts"] >= 1 and stats["rests"] == 0


# -- F: limits -----------------------------------------------------------------------------------


@pytest.fixture
def many_sockets() -> Iterator[None]:
    """Client and server sockets of ~550 connections live in this one process."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * MAX_CONCURRENCY_PER_ENDPOINT
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("many_sockets")
def test_huge_concurrency_is_capped_end_to_end(fake: FakeOpenAI) -> None:
    count = MAX_CONCURRENCY_PER_ENDPOINT + 40
    fake.pause()  # hold every arrival so the number in flight is only the client's doing

    async def body(pool: EndpointPool) -> list[Any]:
        tasks = [asyncio.ensure_future(pool.generate(CHAT)) for _ in range(count)]
        await asyncio.to_thread(fake.wait_until, lambda s: s.in_flight >= MAX_CONCURRENCY_PER_ENDPOINT, 20)
        assert pool.in_flight() == MAX_CONCURRENCY_PER_ENDPOINT
        fake.resume()
        return list(await asyncio.gather(*tasks))

    results = run(make_pool(fake.base_url, concurrency=100_000, request_timeout=20), body)
    assert all(isinstance(r, Completion) for r in results)
    assert fake.max_in_flight == MAX_CONCURRENCY_PER_ENDPOINT


# -- G: secrets in URLs ----------------------------------------------------------------------------


def test_credentials_in_the_base_url_never_show(fake: FakeOpenAI) -> None:
    url = fake.base_url.replace("http://", "http://alice:p@ssWORD@")
    upstream = url + "/x?api_key=sk-query-secret"
    fake.set_handler(lambda ctx: Reply.error(500, f"upstream {upstream} failed"))

    async def body(pool: EndpointPool) -> Any:
        return await pool.generate(CHAT)

    pool = make_pool(url, model=MODEL, max_attempts=1)
    failed = run(pool, body, resolve=False)
    shown = repr(failed) + repr(pool.stats()) + str(pool._last_error)
    assert isinstance(failed, RequestFailed) and failed.kind == "http_500"
    for secret in ("alice", "ssWORD", "sk-query-secret"):
        assert secret not in shown
    assert failed.endpoint == fake.base_url
    assert f"upstream {fake.base_url}/x?api_key=REDACTED failed" in failed.message

