"""Tests of the fake OpenAI server itself, driven by the real ``openai`` SDK and raw sockets."""

from __future__ import annotations

import gc
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fake_openai import BLACKLIST, FakeOpenAI, Reply, TaskGenerator, format_tasks

MODEL = "fake-model"
BLOCK = re.compile(r"^(\d+)\. Instruction: (.*)\n\1\. Input:\n(.*)\n\1\. Output:\n(.*)$")


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake
        assert fake.internal_errors == []


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=20) as c:
        yield c


def parse_blocks(text: str) -> list[tuple[int, str, str, str]]:
    """Strictly parse the block format: (number, instruction, input, output) per block."""
    blocks = []
    for chunk in text.split("\n###\n"):
        match = BLOCK.match(chunk)
        assert match, f"not a well-formed block: {chunk!r}"
        number, instruction, input_, output = match.groups()
        blocks.append((int(number), instruction, "" if input_ == "<noinput>" else input_, output))
    return blocks


def chat(client: openai.OpenAI, content: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=kwargs.pop("model", MODEL), messages=[{"role": "user", "content": content}], **kwargs
    )


# -- raw HTTP helpers ---------------------------------------------------------------------------


def connect(server: FakeOpenAI) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=20)


def send(sock: socket.socket, method: str, path: str, body: bytes = b"", headers: str = "") -> None:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    sock.sendall(head.encode() + body)


def receive(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response; status 0 when the server closed the connection without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            assert data == b"", f"connection closed inside a response head: {data!r}"
            return 0, {}, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def post_json(
    sock: socket.socket, path: str, payload: Any, headers: str = ""
) -> tuple[int, dict[str, str], Any]:
    send(
        sock,
        "POST",
        path,
        json.dumps(payload).encode(),
        "Content-Type: application/json\r\n" + headers,
    )
    status, response_headers, body = receive(sock)
    return status, response_headers, json.loads(body) if body else None


# -- endpoints and format -----------------------------------------------------------------------


def test_models_list_and_retrieve() -> None:
    with (
        FakeOpenAI(models=("alpha", "beta")) as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as c,
    ):
        assert [m.id for m in c.models.list()] == ["alpha", "beta"]
        assert c.models.retrieve("beta").id == "beta"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("gamma")
        assert [r.kind for r in fake.requests] == ["models", "models", "error"]
        assert fake.completion_requests() == []  # /v1/models is not a completion request


def test_chat_default_answer_continues_numbering_from_the_cue(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    prompt = "We are putting together 8 varied tasks.\n1. Instruction: a\n###\n4. Instruction:"
    response = chat(client, prompt)
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert response.model == MODEL and response.object == "chat.completion"
    blocks = parse_blocks(choice.message.content)
    assert [b[0] for b in blocks] == [4, 5, 6, 7, 8]  # up to the total the prompt names
    assert [b[1:] for b in blocks] == server.emitted
    for instruction, input_, output in server.emitted:
        assert instruction[0].isascii() and instruction[0].isalpha()
        assert 8 <= len(instruction.split()) <= 16
        assert output and "<noinput>" not in input_
    record = server.requests[-1]
    assert (record.status, record.kind, record.source, record.number) == (
        200,
        "tasks",
        "default",
        0,
    )


def test_chat_without_cue_starts_at_one_with_default_count(client: openai.OpenAI) -> None:
    blocks = parse_blocks(chat(client, "Give me some tasks please.").choices[0].message.content)
    assert [b[0] for b in blocks] == [1, 2, 3, 4, 5]


def test_requested_count_is_capped_at_twenty(client: openai.OpenAI) -> None:
    blocks = parse_blocks(chat(client, "Write 50 tasks.").choices[0].message.content)
    assert len(blocks) == 20


def test_completions_continue_the_prompt_without_repeating_the_header(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    tasks = [("Name a fruit that is red.", "", "An apple."), ("Add two numbers.", "2 and 3", "5")]
    server.enqueue(Reply.tasks(tasks))
    response = client.completions.create(model=MODEL, prompt="demo blocks...\n###\n7. Instruction:")
    text = response.choices[0].text
    assert response.object == "text_completion"
    assert text == (
        " Name a fruit that is red.\n7. Input:\n<noinput>\n7. Output:\nAn apple.\n"
        "###\n8. Instruction: Add two numbers.\n8. Input:\n2 and 3\n8. Output:\n5"
    )
    assert text == format_tasks(tasks, 7, continuation=True)
    # Gluing prompt cue and answer back together gives well-formed blocks.
    assert parse_blocks("7. Instruction:" + text) == [(7, *tasks[0]), (8, *tasks[1])]
    assert server.emitted == tasks


def test_completions_default_answer_and_list_prompts(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    response = client.completions.create(
        model=MODEL, prompt=["Make 6 tasks\n5. Instruction:", "Make 3 tasks\n1. Instruction:"]
    )
    first, second = (
        parse_blocks(f"{n}. Instruction:" + c.text) for n, c in zip((5, 1), response.choices)
    )
    assert [b[0] for b in first] == [5, 6] and [b[0] for b in second] == [1, 2, 3]
    assert [c.index for c in response.choices] == [0, 1]
    assert len(server.emitted) == 5


def test_usage_counts_whitespace_words_and_is_never_zero(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    server.enqueue(Reply.text(""), Reply.text("one two  three\nfour"))
    empty = chat(client, "hello there")
    assert empty.choices[0].message.content == ""
    assert (empty.usage.prompt_tokens, empty.usage.completion_tokens, empty.usage.total_tokens) == (
        2,
        1,
        3,
    )
    four = client.completions.create(model=MODEL, prompt="   ")
    assert (four.usage.prompt_tokens, four.usage.completion_tokens, four.usage.total_tokens) == (
        1,
        4,
        5,
    )
    default = chat(client, "Write 3 tasks")
    assert default.usage.completion_tokens == len(default.choices[0].message.content.split())


def test_stop_sequences_cut_the_answer_and_what_is_recorded(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    tasks = [(f"Instruction number {i} goes here.", "", f"Output {i}.") for i in range(1, 5)]
    server.enqueue(Reply.tasks(tasks), Reply.tasks(tasks))
    response = chat(client, "x", stop=["###\n3.", "never appears"])
    text = response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"
    assert text.endswith("2. Output:\nOutput 2.\n") and "3." not in text
    assert server.emitted == tasks[:2]
    # A stop string inside an output cuts that task: it is not recorded.
    response = client.completions.create(model=MODEL, prompt="x", stop="Output 2")
    assert response.choices[0].text.endswith("2. Output:\n")
    assert server.emitted == tasks[:2] + tasks[:1]


def test_n_choices_each_get_fresh_tasks(server: FakeOpenAI, client: openai.OpenAI) -> None:
    response = chat(client, "Write 2 tasks", n=3)
    assert [c.index for c in response.choices] == [0, 1, 2]
    contents = [c.message.content for c in response.choices]
    assert len(set(contents)) == 3
    assert len(server.emitted) == 6 and len(set(server.emitted)) == 6


def test_text_reply_is_sent_verbatim_and_records_nothing(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    raw = "Sure! Here are your tasks:\n**Instruction:** Do a thing\n```\nnot a block\n```"
    server.enqueue(Reply.text(raw, finish_reason="length"))
    choice = chat(client, "x").choices[0]
    assert (choice.message.content, choice.finish_reason) == (raw, "length")
    assert server.emitted == []
    assert server.requests[-1].kind == "text" and server.requests[-1].source == "queue"


def test_truncated_reply_cuts_the_last_output(server: FakeOpenAI, client: openai.OpenAI) -> None:
    tasks = [
        ("First task to do now.", "", "Done."),
        ("Second task to do now.", "in", "alpha beta gamma delta"),
    ]
    server.enqueue(Reply.truncated(tasks))
    choice = chat(client, "x").choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content.endswith("2. Output:\nalpha beta")
    assert server.emitted == tasks[:1]
    assert server.requests[-1].kind == "truncated"


def test_max_tokens_enforced_only_when_asked() -> None:
    with (
        FakeOpenAI(enforce_max_tokens=True) as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as c,
    ):
        fake.enqueue(Reply.tasks([("one two three four", "", "five six seven eight nine")]))
        choice = chat(c, "x", max_tokens=5).choices[0]
        assert choice.finish_reason == "length"
        assert choice.message.content == "1. Instruction: one two three"
        assert fake.emitted == []
        assert chat(c, "Write 2 tasks", max_tokens=1000).choices[0].finish_reason == "stop"


# -- faults -------------------------------------------------------------------------------------


def test_rate_limit_carries_retry_after(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.enqueue(Reply.error(429, headers={"Retry-After": "1"}))
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, "x")
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert server.requests[-1].status == 429 and server.requests[-1].kind == "error"


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors(server: FakeOpenAI, client: openai.OpenAI, status: int) -> None:
    server.enqueue(Reply.error(status, "boom"))
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model=MODEL, prompt="x")
    assert info.value.status_code == status
    assert info.value.body == {
        "message": "boom",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    # The connection stays usable and the queue moved on to the default answer.
    assert chat(client, "Write 1 tasks").choices[0].finish_reason == "stop"


def test_dropped_connection_raises_connection_error(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    server.enqueue(Reply.drop())
    with pytest.raises(openai.APIConnectionError):
        chat(client, "x")
    record = server.requests[-1]
    assert (record.status, record.kind) == (0, "drop")
    assert server.emitted == []
    assert chat(client, "Write 1 tasks").choices[0].finish_reason == "stop"


def test_drop_closes_the_raw_socket_without_any_byte(server: FakeOpenAI) -> None:
    server.enqueue(Reply.drop())
    with connect(server) as sock:
        status, _, body = post_json(
            sock,
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        assert (status, body) == (0, None)


def test_slow_reply_waits_then_answers(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.enqueue(Reply.slow(0.05, Reply.slow(0.05, Reply.text("late"))))
    assert chat(client, "x").choices[0].message.content == "late"
    assert server.requests[-1].delay == pytest.approx(0.1)
    assert server.requests[-1].kind == "text"


def test_slow_reply_beyond_client_timeout(server: FakeOpenAI) -> None:
    server.enqueue(Reply.slow(60, Reply.text("too late")))
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=0.2) as c:
        with pytest.raises(openai.APITimeoutError):
            chat(c, "x")
    server.wait_until(lambda s: s.serving == 1)
    # stop() (fixture teardown) cancels the sleeping request instead of waiting for it.


def test_unknown_model_is_404_with_openai_error_json(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, "x", model="gpt-9")
    assert info.value.body == {
        "message": "The model `gpt-9` does not exist",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    with connect(server) as sock:
        status, _, body = post_json(sock, "/v1/completions", {"model": "nope", "prompt": "x"})
    assert status == 404
    assert body["error"]["message"] == "The model `nope` does not exist"
    assert server.queued == 0 and server.emitted == []


def test_wrong_api_key_is_401_and_key_is_never_stored() -> None:
    with FakeOpenAI(api_key="s3cret-key") as fake:
        with openai.OpenAI(base_url=fake.base_url, api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as info:
                chat(bad, "x")
            assert info.value.body["code"] == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        with openai.OpenAI(base_url=fake.base_url, api_key="s3cret-key", max_retries=0) as good:
            assert chat(good, "Write 1 tasks").choices[0].finish_reason == "stop"
        assert [r.status for r in fake.requests] == [401, 401, 200]
        assert all("authorization" not in r.headers for r in fake.requests)
        assert "s3cret-key" not in repr(fake.requests) and "wrong" not in repr(fake.requests)


def test_malformed_json_is_400_and_the_connection_stays_open(server: FakeOpenAI) -> None:
    with connect(server) as sock:
        send(
            sock, "POST", "/v1/chat/completions", b"{not json", "Content-Type: application/json\r\n"
        )
        status, headers, body = receive(sock)
        assert status == 400 and headers["connection"] == "keep-alive"
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        # Same socket, next request: keep-alive works.
        status, _, answer = post_json(
            sock, "/v1/completions", {"model": MODEL, "prompt": "Write 2 tasks"}
        )
        assert status == 200 and len(answer["choices"]) == 1
    assert [r.status for r in server.requests] == [400, 200]


def test_invalid_requests_are_rejected(server: FakeOpenAI) -> None:
    with connect(server) as sock:
        assert post_json(sock, "/v1/chat/completions", [1, 2])[0] == 400
        assert post_json(sock, "/v1/chat/completions", {"model": MODEL})[0] == 400
        assert (
            post_json(sock, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0})[0]
            == 400
        )
        assert post_json(sock, "/v1/completions", {"model": MODEL, "prompt": "x", "n": 0})[0] == 400
        assert post_json(sock, "/v1/embeddings", {"model": MODEL})[0] == 404
        send(sock, "GET", "/v1/chat/completions")
        assert receive(sock)[0] == 405


def test_connection_close_and_chunked_bodies(server: FakeOpenAI) -> None:
    body = json.dumps({"model": MODEL, "prompt": "Write 1 tasks"}).encode()
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, body[:5], len(body) - 5, body[5:])
    with connect(server) as sock:
        head = (
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + chunked)
        status, headers, _ = receive(sock)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(1) == b""  # the server closed its end


def test_llama_quirks() -> None:
    with (
        FakeOpenAI(llama_quirks=True) as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as c,
    ):
        assert len(chat(c, "Write 2 tasks", n=3).choices) == 1  # n is ignored
        for bad in (0, -1, 2.5, "ten"):
            with connect(fake) as sock:
                status, _, body = post_json(
                    sock, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": bad}
                )
            assert status == 500, bad
            assert body["error"]["type"] == "server_error"
        with pytest.raises(openai.InternalServerError):
            chat(c, "x", max_tokens=0)


# -- misbehaving modes --------------------------------------------------------------------------

CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}


def test_raw_reply_is_sent_verbatim(server: FakeOpenAI) -> None:
    server.enqueue(
        Reply.raw("{broken", headers={"X-Extra": "1"}),
        Reply.raw(b"<html>ui</html>", 202, "text/html"),
        Reply.json(["not", "an", "object", "\ud83d"]),
    )
    with connect(server) as sock:
        send(sock, "POST", "/v1/chat/completions", json.dumps(CHAT_BODY).encode())
        status, headers, body = receive(sock)
        assert (status, body, headers["x-extra"]) == (200, b"{broken", "1")
        send(sock, "POST", "/v1/chat/completions", json.dumps(CHAT_BODY).encode())
        status, headers, body = receive(sock)
        assert (status, headers["content-type"], body) == (202, "text/html", b"<html>ui</html>")
        send(sock, "POST", "/v1/chat/completions", json.dumps(CHAT_BODY).encode())
        _, _, body = receive(sock)
        assert body == b'["not", "an", "object", "\\ud83d"]'  # a lone surrogate, escaped
    assert [r.kind for r in server.requests] == ["raw", "raw", "raw"]
    assert [r.status for r in server.requests] == [200, 202, 200]


def test_reply_constructors_validate() -> None:
    with pytest.raises(ValueError):
        Reply.trickle(Reply.text("x"), -1)
    with pytest.raises(ValueError):
        Reply.trickle(Reply.text("x"), 0.1, part="tail")
    slow_trickle = Reply.slow(0.5, Reply.trickle(Reply.slow(0.25, Reply.text("x")), 0.1))
    reply, delay, trickle = slow_trickle.peel()
    assert (reply.kind, delay, trickle is not None and trickle.part) == ("text", 0.75, "body")
    assert slow_trickle.unwrap() == (slow_trickle.inner, 0.5)  # unwrap stops at trickle, as before


@pytest.mark.parametrize("part", ["body", "head"])
def test_trickle_sends_the_whole_response_byte_by_byte(server: FakeOpenAI, part: str) -> None:
    server.enqueue(Reply.trickle(Reply.text("hello"), 0.001, part=part))
    server.enqueue(Reply.trickle(Reply.error(503), 0.0, part=part))
    with connect(server) as sock:
        status, _, body = post_json(sock, "/v1/chat/completions", CHAT_BODY)
        assert status == 200 and body["choices"][0]["message"]["content"] == "hello"
        status, _, body = post_json(sock, "/v1/chat/completions", CHAT_BODY)  # still keep-alive
        assert status == 503 and body["error"]["type"] == "server_error"
    assert [r.kind for r in server.requests] == ["text", "error"]


def test_client_hanging_up_during_a_trickle_is_harmless(server: FakeOpenAI) -> None:
    server.enqueue(Reply.trickle(Reply.text("x" * 1000), 0.01))
    with connect(server) as sock:
        send(sock, "POST", "/v1/chat/completions", json.dumps(CHAT_BODY).encode())
        assert sock.recv(10)  # the answer has started
    with connect(server) as sock:  # the server is still fine
        assert post_json(sock, "/v1/chat/completions", CHAT_BODY)[0] == 200
    # The fixture checks internal_errors is empty; stop() cancels a trickle still running.


@pytest.mark.parametrize(
    ("reply", "status", "body"),
    [
        (Reply.raw("<!doctype html><html></html>", content_type="text/html"), 200, b"<!doctype html><html></html>"),
        (Reply.json(["m1", "m2"]), 200, b'["m1", "m2"]'),
        (Reply.json({"models": [{"name": "m1", "model": "m1"}]}), 200, b'{"models": [{"name": "m1", "model": "m1"}]}'),
        (Reply.raw("404 page not found", 404, "text/plain"), 404, b"404 page not found"),
        (Reply.trickle(Reply.json(["m"]), 0.001, part="head"), 200, b'["m"]'),
    ],
    ids=["html", "bare_list", "ollama", "no_route", "trickle"],
)
def test_models_reply_replaces_the_model_list(reply: Reply, status: int, body: bytes) -> None:
    with FakeOpenAI(models_reply=reply) as fake:
        with connect(fake) as sock:
            send(sock, "GET", "/v1/models")
            assert receive(sock)[::2] == (status, body)
        fake.models_reply = None
        with connect(fake) as sock:
            send(sock, "GET", "/v1/models")
            assert json.loads(receive(sock)[2])["data"][0]["id"] == "fake-model"
        assert fake.completion_requests() == [] and fake.internal_errors == []


def test_models_reply_error_and_drop_and_auth() -> None:
    with FakeOpenAI(models_reply=Reply.error(500), api_key="key") as fake:
        with openai.OpenAI(base_url=fake.base_url, api_key="key", max_retries=0) as c:
            with pytest.raises(openai.InternalServerError):
                c.models.list()
            fake.models_reply = Reply.drop()
            with pytest.raises(openai.APIConnectionError):
                c.models.list()
        with openai.OpenAI(base_url=fake.base_url, api_key="wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError):  # auth comes first
                c.models.list()
        assert [r.status for r in fake.requests] == [500, 0, 401]


# -- handler, queue and records -----------------------------------------------------------------


def test_handler_decides_first_then_queue_then_default(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    seen: list[tuple[int, int, str]] = []

    def handler(ctx: Any) -> Reply | None:
        seen.append((ctx.number, ctx.in_flight, ctx.path))
        assert "authorization" not in ctx.headers and ctx.model == MODEL
        if ctx.number == 0:
            return Reply.error(503)
        if "handler please" in ctx.prompt:
            return Reply.text("from handler")
        return None

    server.set_handler(handler)
    server.enqueue(Reply.text("from queue"))
    with pytest.raises(openai.InternalServerError):
        chat(client, "x")
    assert server.queued == 1  # the handler answered; the queue was not touched
    assert chat(client, "handler please").choices[0].message.content == "from handler"
    assert client.completions.create(model=MODEL, prompt="x").choices[0].text == "from queue"
    assert parse_blocks(chat(client, "Write 2 tasks").choices[0].message.content)
    assert seen == [
        (0, 1, "/v1/chat/completions"),
        (1, 1, "/v1/chat/completions"),
        (2, 1, "/v1/completions"),
        (3, 1, "/v1/chat/completions"),
    ]
    assert [r.source for r in server.requests] == ["handler", "handler", "queue", "default"]


def test_handler_can_ask_for_a_slow_default_answer(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    server.set_handler(lambda ctx: Reply.slow(0.01, Reply.default(count=3)))
    blocks = parse_blocks(chat(client, "Write 10 tasks").choices[0].message.content)
    assert len(blocks) == 3 and server.requests[-1].source == "handler"


def test_handler_exception_becomes_500_and_is_reported() -> None:
    def broken(ctx: Any) -> Reply:
        raise RuntimeError("handler bug")

    with (
        FakeOpenAI() as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as c,
    ):
        fake.set_handler(broken)
        with pytest.raises(openai.InternalServerError):
            chat(c, "x")
        assert len(fake.internal_errors) == 1 and "handler bug" in fake.internal_errors[0]


def test_records_and_concurrency_log(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.enqueue(Reply.error(500), Reply.tasks([("Do one thing well today.", "", "ok")]))
    with pytest.raises(openai.InternalServerError):
        chat(client, "x", temperature=0.5)
    chat(client, "y")
    client.models.list()
    first, second, models = server.requests
    assert first.body["temperature"] == 0.5 and first.number == 0 and second.number == 1
    assert models.number is None
    assert first.finish >= first.arrival and second.contents == [
        format_tasks([("Do one thing well today.", "", "ok")])
    ]
    assert second.finish_reasons == ["stop"]
    # Two completion requests: one arrival and one departure entry each.
    assert [n for _, n in server.concurrency_log] == [1, 0, 1, 0]
    assert server.in_flight == 0 and server.serving == 0


# -- capacity, latency and concurrency ----------------------------------------------------------


def test_capacity_limits_serving_but_not_arrivals() -> None:
    with (
        FakeOpenAI(latency=0.05, capacity=2) as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0, timeout=20) as c,
    ):
        fake.pause()  # hold arrivals so all six are in flight before any is served
        results: list[str] = []
        errors: list[BaseException] = []

        def call(i: int) -> None:
            try:
                results.append(chat(c, f"Write 1 tasks ({i})").choices[0].finish_reason)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        fake.wait_until(lambda s: s.in_flight == 6)
        assert fake.serving == 0
        fake.resume()
        for t in threads:
            t.join(timeout=30)
        assert errors == [] and results == ["stop"] * 6
        assert fake.max_in_flight == 6
        assert fake.max_serving == 2
        assert max(n for _, n in fake.serving_log) == 2
        assert max(n for _, n in fake.concurrency_log) == 6
        assert len(fake.serving_log) == 12 and len(fake.concurrency_log) == 12
        assert all(r.started is not None and r.finish >= r.started for r in fake.requests)


def test_batch_slowdown_makes_latency_grow_with_the_batch() -> None:
    fake = FakeOpenAI(latency=1.0, batch_slowdown=8, capacity=128)
    assert [fake.service_time(n) for n in (1, 8, 128)] == [1.125, 2.0, 17.0]
    # Throughput (serving / service time) still rises all the way to the capacity.
    rates = [n / fake.service_time(n) for n in (1, 8, 64, 128)]
    assert rates == sorted(rates)
    assert FakeOpenAI(latency=0.5).service_time(100) == 0.5  # fixed latency without it
    with pytest.raises(ValueError):
        FakeOpenAI(latency=1.0, batch_slowdown=0)


def test_batch_slowdown_serves_requests() -> None:
    with (
        FakeOpenAI(latency=0.01, batch_slowdown=2, capacity=4) as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0, timeout=20) as c,
    ):
        assert parse_blocks(chat(c, "Write 2 tasks").choices[0].message.content)
        assert fake.stats()["batch_slowdown"] == 2


def test_two_hundred_concurrent_connections() -> None:
    count = 200
    body = json.dumps({"model": MODEL, "prompt": "Write 1 tasks\n1. Instruction:"}).encode()
    with FakeOpenAI(latency=0.05) as fake:
        fake.pause()
        sockets = [connect(fake) for _ in range(count)]
        try:
            for sock in sockets:
                send(sock, "POST", "/v1/completions", body)
            fake.wait_until(lambda s: s.in_flight == count)
            fake.resume()
            statuses = [receive(sock)[0] for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        assert statuses == [200] * count
        assert fake.max_in_flight == count and fake.max_serving == count
        assert len(fake.emitted) == count


def test_stop_while_connections_arrive_leaks_no_socket() -> None:
    body = json.dumps({"model": MODEL, "prompt": "x"}).encode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(10):
            fake = FakeOpenAI().start()
            opened: list[socket.socket] = []

            def hammer(port: int = fake.port) -> None:
                for _ in range(40):
                    try:
                        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    except OSError:
                        return
                    opened.append(sock)
                    try:
                        send(sock, "POST", "/v1/completions", body)
                    except OSError:
                        return

            thread = threading.Thread(target=hammer)
            thread.start()
            fake.wait_until(lambda s: len(s.requests) >= 3)
            fake.stop()  # while connections are still being accepted
            thread.join(timeout=30)
            for sock in opened:
                sock.close()
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- default generator --------------------------------------------------------------------------


def test_generated_instructions_pass_filters_and_are_dissimilar() -> None:
    from rapidfuzz.distance import LCSseq
    from rouge_score import tokenize
    from selfinstruct.filters import check_candidate
    from selfinstruct.records import Candidate

    generator = TaskGenerator(seed=7)
    tasks = generator.tasks(400)
    assert len({t[0] for t in tasks}) == 400
    for instruction, input_, output in tasks:
        assert check_candidate(Candidate(instruction, input_, output)) is None, instruction
        assert not any(re.search(rf"\b{w}\b", instruction, re.I) for w in BLACKLIST)
    assert 0.3 < sum(1 for t in tasks if t[1] == "") / len(tasks) < 0.7

    token_lists = [tokenize.tokenize(t[0], None) for t in tasks]
    worst = 0.0
    for i, a in enumerate(token_lists):
        for b in token_lists[i + 1 :]:
            lcs = LCSseq.similarity(a, b)
            if lcs:
                worst = max(worst, 2 * lcs / (len(a) + len(b)))  # ROUGE-L F1
    assert worst < 0.7


def test_generator_is_deterministic_per_seed() -> None:
    assert TaskGenerator(1).tasks(5) == TaskGenerator(1).tasks(5)
    assert TaskGenerator(1).tasks(5) != TaskGenerator(2).tasks(5)


# -- standalone mode ----------------------------------------------------------------------------


def test_standalone_server_runs_and_reports_stats() -> None:
    script = Path(__file__).with_name("fake_openai.py")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--port",
            "0",
            "--latency",
            "0.01",
            "--capacity",
            "4",
            "--batch-slowdown",
            "8",
            "--model",
            "m1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        base_url = match.group(1)
        with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0) as c:
            assert [m.id for m in c.models.list()] == ["m1"]
            assert parse_blocks(chat(c, "Write 3 tasks", model="m1").choices[0].message.content)
        with urllib.request.urlopen(
            base_url.replace("/v1", "/_fake/stats"), timeout=10
        ) as response:
            stats = json.load(response)
        assert (
            stats["completion_requests"] == 1 and stats["emitted"] == 3 and stats["capacity"] == 4
        )
        assert stats["batch_slowdown"] == 8
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert json.loads(proc.stderr.read().strip().splitlines()[-1])["answered"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
