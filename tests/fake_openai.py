"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI API to test ``selfinstruct``.

It answers ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` with OpenAI-shaped
JSON, from scripted replies (``enqueue``), a per-request ``handler``, or a deterministic
generator of fresh tasks in the Alpaca block format. Faults (HTTP errors, dropped connections,
slow answers, truncated answers) are scripted the same way. ``latency`` and ``capacity`` model
a server with a fixed number of slots, so a client's achieved concurrency can be measured;
``batch_slowdown=B`` models a continuous-batching server (vLLM, TGI): each request takes
``latency × (1 + serving/B)``, ``serving`` counted when it takes its slot, so per-request latency
grows with the batch while throughput keeps rising up to ``capacity``.

Misbehaving servers, for testing a client's defences:

* ``Reply.raw(body, status, content_type)`` / ``Reply.json(value)`` send any bytes or any JSON
  verbatim: malformed JSON with status 200, non-object JSON, empty ``choices``, ``content:
  null``, lone surrogates (``"\\ud83d"``), bad ``usage``, huge bodies, HTML.
* ``Reply.trickle(reply, interval, part="body"|"head")`` sends the body (or the status line and
  headers) of ``reply`` one byte every ``interval`` seconds.
* ``Reply.error(429, headers={"Retry-After": "300"})``; ``FakeOpenAI(api_key=...)`` answers 401
  to any other key, per server instance.
* ``models_reply``: what ``GET /v1/models`` answers instead of the model list, e.g.
  ``Reply.raw("<html>…", content_type="text/html")`` (a web UI on that port),
  ``Reply.json(["m1"])`` (bare list), ``Reply.json({"models": [{"name": "m1"}]})`` (Ollama's
  native shape), ``Reply.raw("404 page not found", 404, "text/plain")`` (no /v1/models), or a
  ``trickle``/``slow``/``drop``.

The server is a single asyncio event loop in a daemon thread: cheap per connection, so hundreds
of concurrent keep-alive connections cost little CPU. Everything the tests read (``requests``,
``emitted``, the counters) is only mutated on that loop thread.

Standalone use (for benchmarks)::

    python tests/fake_openai.py --port 8123 --latency 0.5 --capacity 32
    python tests/fake_openai.py --latency 1 --batch-slowdown 8 --capacity 128
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import json
import random
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Union

__all__ = [
    "BLACKLIST",
    "FakeOpenAI",
    "RecordedRequest",
    "Reply",
    "RequestContext",
    "TaskGenerator",
    "format_tasks",
    "main",
]

Task = tuple[str, str, str]
TaskLike = Union[Sequence[str], dict[str, str]]

# Same words as selfinstruct.filters.DEFAULT_BLACKLIST; kept here so the fake has no import
# from the package under test.
BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip

MAX_DEFAULT_TASKS = 20
DEFAULT_TASK_COUNT = 5
_MAX_HEADER_BYTES = 256 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024

# "4. Instruction:" at the very end of a prompt: the model is expected to continue from there.
_TRAILING_HEADER = re.compile(r"(\d+)\s*\.\s*Instruction:\s*$")
# "come up with 20 tasks", "5 new tasks", "20 diverse task instructions".
_TASK_COUNT = re.compile(
    r"\b(\d+)\s+(?:[A-Za-z-]+\s+){0,2}?(?:tasks|task\s+instructions|instructions)\b",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------------


def _as_task(item: TaskLike) -> Task:
    if isinstance(item, dict):
        return (str(item["instruction"]), str(item.get("input", "")), str(item.get("output", "")))
    instruction, input_, output = item
    return (str(instruction), str(input_), str(output))


@dataclass(frozen=True)
class Reply:
    """What the server does with one completion request. Build it with the classmethods."""

    kind: str  # tasks | text | truncated | error | drop | slow | default | raw | trickle
    items: tuple[Task, ...] = ()  # for tasks / truncated
    content: str = ""  # for text (not "raw": the classmethod of that name would be its default)
    finish_reason: str = "stop"
    status: int = 200
    message: str = ""
    error_type: str | None = None
    error_code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    inner: Reply | None = None
    count: int | None = None
    body: bytes = b""  # for raw
    content_type: str = "application/json"  # for raw
    part: str = "body"  # for trickle: body | head

    @classmethod
    def tasks(cls, tasks: Iterable[TaskLike], finish_reason: str = "stop") -> Reply:
        """Answer with these ``(instruction, input, output)`` tasks in the Alpaca block format."""
        return cls("tasks", items=tuple(_as_task(t) for t in tasks), finish_reason=finish_reason)

    @classmethod
    def text(cls, raw: str, finish_reason: str = "stop") -> Reply:
        """Answer with ``raw`` as the content, verbatim (nothing is recorded in ``emitted``)."""
        return cls("text", content=raw, finish_reason=finish_reason)

    @classmethod
    def truncated(cls, tasks: Iterable[TaskLike]) -> Reply:
        """Like ``tasks`` but the last task is cut inside its output and finish_reason is length."""
        items = tuple(_as_task(t) for t in tasks)
        if not items:
            raise ValueError("Reply.truncated needs at least one task to cut")
        return cls("truncated", items=items, finish_reason="length")

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        type: str | None = None,  # noqa: A002 - mirrors the OpenAI error field name
        code: str | None = None,
    ) -> Reply:
        """An HTTP error with OpenAI error JSON: ``error(429, headers={"Retry-After": "1"})``."""
        if status < 400:
            raise ValueError(f"error status must be >= 400, not {status}")
        default_type, default_code, default_message = _ERROR_DEFAULTS.get(
            status,
            ("server_error" if status >= 500 else "invalid_request_error", None, "fake error"),
        )
        return cls(
            "error",
            status=status,
            message=message if message is not None else default_message,
            error_type=type or default_type,
            error_code=code if code is not None else default_code,
            headers=tuple((headers or {}).items()),
        )

    @classmethod
    def drop(cls) -> Reply:
        """Read the request, then close the connection without sending any response."""
        return cls("drop")

    @classmethod
    def slow(cls, seconds: float, reply: Reply) -> Reply:
        """Wait ``seconds`` on the server (on top of ``latency``), then act as ``reply``."""
        if seconds < 0:
            raise ValueError("slow() needs a non-negative delay")
        return cls("slow", delay=float(seconds), inner=reply)

    @classmethod
    def raw(
        cls,
        body: str | bytes,
        status: int = 200,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send ``body`` verbatim with this status and Content-Type (str is UTF-8 encoded)."""
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
        return cls(
            "raw",
            status=status,
            body=data,
            content_type=content_type,
            headers=tuple((headers or {}).items()),
        )

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        """Send any JSON value verbatim (lone surrogates are written as ``\\udXXX`` escapes)."""
        return cls.raw(json.dumps(value), status, "application/json", headers)

    @classmethod
    def trickle(cls, reply: Reply, interval: float, part: str = "body") -> Reply:
        """Act as ``reply`` but send its body (or its status line and headers, ``part="head"``)
        one byte every ``interval`` seconds."""
        if interval < 0:
            raise ValueError("trickle() needs a non-negative interval")
        if part not in ("body", "head"):
            raise ValueError(f"trickle part must be 'body' or 'head', not {part!r}")
        return cls("trickle", delay=float(interval), inner=reply, part=part)

    @classmethod
    def default(cls, count: int | None = None) -> Reply:
        """Fresh generated tasks, as when nothing is scripted (``count`` overrides k)."""
        return cls("default", count=count)

    def unwrap(self) -> tuple[Reply, float]:
        """The reply to send and the total extra delay of the ``slow`` wrappers around it."""
        reply, delay = self, 0.0
        while reply.kind == "slow":
            assert reply.inner is not None
            delay += reply.delay
            reply = reply.inner
        return reply, delay

    def peel(self) -> tuple[Reply, float, Reply | None]:
        """Like ``unwrap`` but also through ``trickle``: (reply, delay, outermost trickle)."""
        reply, delay, trickle = self, 0.0, None
        while reply.kind in ("slow", "trickle"):
            assert reply.inner is not None
            if reply.kind == "slow":
                delay += reply.delay
            elif trickle is None:
                trickle = reply
            reply = reply.inner
        return reply, delay, trickle


_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", None, "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (fake server)."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class RequestContext:
    """What a handler sees about one completion request."""

    number: int  # 0-based arrival order among completion requests
    path: str
    body: dict[str, Any]
    in_flight: int  # completion requests in flight at arrival, this one included
    headers: dict[str, str]  # lower-case names; Authorization is left out

    @property
    def prompt(self) -> str:
        """The prompt text: all message contents for chat, the (first) prompt for completions."""
        return _prompt_text(self.path, self.body)

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))


@dataclass
class RecordedRequest:
    """One request as the server saw it. The Authorization header is never stored."""

    method: str
    path: str
    headers: dict[str, str]
    arrival: float  # time.monotonic()
    number: int | None = None  # arrival order among completion requests; None for others
    body: dict[str, Any] | None = None
    in_flight: int = 0  # at arrival, this request included
    started: float | None = None  # when a capacity slot was granted
    finish: float | None = None
    status: int | None = None  # None until answered; 0 for a dropped connection
    kind: str | None = None  # tasks | text | truncated | error | drop | raw | models | health | stats
    source: str | None = None  # handler | queue | default | server
    delay: float = 0.0  # extra seconds from Reply.slow
    contents: list[str] = field(default_factory=list)  # one per choice
    finish_reasons: list[str] = field(default_factory=list)

    @property
    def model(self) -> str | None:
        return None if self.body is None else self.body.get("model")


# --------------------------------------------------------------------------------------------
# Formatting and the default task generator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rendered:
    text: str
    # (task, output start offset, output end offset) for every task in text order
    spans: tuple[tuple[Task, int, int], ...] = ()


def _render(tasks: Sequence[Task], start: int, continuation: bool) -> _Rendered:
    pieces: list[str] = []
    spans: list[tuple[Task, int, int]] = []
    length = 0
    for i, task in enumerate(tasks):
        instruction, input_, output = task
        n = start + i
        if i == 0 and continuation:
            head = f" {instruction}\n"  # "K. Instruction:" is already at the end of the prompt
        else:
            head = f"{n}. Instruction: {instruction}\n"
        block = ("\n###\n" if i else "") + head
        block += f"{n}. Input:\n{input_ if input_ else '<noinput>'}\n{n}. Output:\n"
        out_start = length + len(block)
        pieces.append(block + output)
        length = out_start + len(output)
        spans.append((task, out_start, length))
    return _Rendered("".join(pieces), tuple(spans))


def format_tasks(tasks: Iterable[TaskLike], start: int = 1, *, continuation: bool = False) -> str:
    """The Alpaca block format the fake answers with; blocks are joined by ``###`` lines.

    With ``continuation`` the first block omits its ``N. Instruction:`` header, as a
    /v1/completions answer that continues a prompt ending in that header does.
    """
    return _render([_as_task(t) for t in tasks], start, continuation).text


def _words(text: str) -> int:
    return len(text.split())


def _cut_inside(output: str) -> int:
    """Offset inside ``output`` to cut at: roughly half of it, never all of it."""
    words = output.split(" ")
    if len(words) >= 2:
        return len(" ".join(words[: len(words) // 2]))
    return len(output) // 2


_VERBS = (
    "Explain", "Describe", "List", "Summarize", "Suggest", "Compare", "Classify", "Rewrite",
    "Identify", "Outline", "Propose", "Evaluate", "Recommend", "Convert", "Estimate", "Rank",
    "Sort", "Name", "Define", "Predict", "Generate", "Create", "Compose", "Design", "Plan",
    "Analyze", "Discuss", "Argue", "Justify", "Paraphrase", "Simplify", "Critique", "Review",
    "Tell", "Give", "Find", "Choose", "Categorize", "Contrast", "Imagine", "Invent", "Detect",
)  # fmt: skip
_ADJECTIVES = (
    "ancient", "bright", "busy", "calm", "careful", "cheap", "clever", "cold", "colorful",
    "common", "complex", "cozy", "creative", "curious", "daily", "dark", "deep", "distant", "dry",
    "early", "easy", "effective", "elegant", "empty", "exciting", "fair", "famous", "fast",
    "flexible", "formal", "fresh", "friendly", "gentle", "global", "golden", "green", "happy",
    "healthy", "heavy", "honest", "huge", "humble", "important", "informal", "kind", "large",
    "late", "lazy", "little", "local", "lonely", "loud", "lucky", "major", "modern", "narrow",
    "natural", "nervous", "new", "noisy", "old", "ordinary", "patient", "peaceful", "personal",
    "polite", "popular", "practical", "private", "proud", "public", "quick", "quiet", "rare",
    "recent", "regular", "remote", "rich", "rough", "rural", "safe", "seasonal", "sharp", "short",
    "simple", "slow", "small", "smooth", "social", "soft", "solid", "special", "spicy", "steady",
    "strange", "strong", "sudden", "sunny", "sweet", "tall", "thin", "tidy", "tiny", "tired",
    "tough", "typical", "urban", "useful", "warm", "weekly", "wet", "wild", "wise", "young",
)  # fmt: skip
_NOUNS = (
    "account", "advice", "airport", "apple", "argument", "article", "bakery", "balance",
    "bicycle", "birthday", "blanket", "boat", "book", "bridge", "budget", "cabin", "cafe",
    "campaign", "candle", "career", "carpet", "castle", "chair", "cheese", "childhood", "city",
    "classroom", "climate", "coffee", "colleague", "community", "company", "computer", "contract",
    "conversation", "cookie", "country", "courage", "customer", "decision", "dinner", "doctor",
    "dream", "election", "email", "energy", "engine", "essay", "event", "exam", "exercise",
    "family", "farmer", "festival", "forest", "friendship", "garden", "gift", "habit", "harbor",
    "health", "hobby", "holiday", "homework", "hospital", "hotel", "idea", "interview", "island",
    "journey", "kitchen", "ladder", "lake", "language", "lantern", "lawyer", "lesson", "letter",
    "library", "lunch", "market", "meeting", "memory", "menu", "message", "mirror", "morning",
    "mountain", "museum", "neighbor", "newspaper", "notebook", "novel", "ocean", "office",
    "orange", "package", "painting", "parent", "party", "passport", "patience", "pencil",
    "pepper", "phone", "pillow", "planet", "plant", "poem", "policy", "pond", "problem",
    "project", "promise", "puzzle", "question", "rabbit", "recipe", "restaurant", "river",
    "robot", "salad", "schedule", "school", "science", "season", "shelter", "shoe", "shop",
    "skill", "soup", "speech", "sport", "station", "story", "strategy", "street", "student",
    "success", "summer", "sunset", "table", "teacher", "team", "theory", "ticket", "tomato",
    "tradition", "train", "travel", "tree", "umbrella", "vacation", "village", "volunteer",
    "wallet", "weather", "website", "wedding", "window", "winter", "worker", "writer", "year",
)  # fmt: skip
_CONNECTORS = ("about", "for", "with", "and", "from", "during", "without", "near", "under")
_CONTENT_WORDS = _ADJECTIVES + _NOUNS


class TaskGenerator:
    """Deterministic source of fresh, mutually dissimilar tasks for the default answers.

    Instructions are 8-16 words drawn uniformly from a vocabulary of a few hundred words, so the
    longest common subsequence of two of them is almost always one or two words: ROUGE-L between
    any two stays far below 0.7. No word from the Alpaca blacklist is in the vocabulary.
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._seen: set[str] = set()

    def instruction(self) -> str:
        rng = self._rng
        while True:
            length = rng.randint(8, 16)
            words = [rng.choice(_VERBS)] + [rng.choice(_CONTENT_WORDS) for _ in range(length - 1)]
            # One or two connectors inside make it read a little more like a sentence.
            for _ in range(rng.randint(1, 2)):
                words[rng.randint(2, length - 2)] = rng.choice(_CONNECTORS)
            text = " ".join(words) + rng.choice((".", ".", ".", "?"))
            if text not in self._seen:
                self._seen.add(text)
                return text

    def input(self) -> str:
        rng = self._rng
        if rng.random() < 0.5:
            return ""
        words = [rng.choice(_CONTENT_WORDS) for _ in range(rng.randint(2, 6))]
        return " ".join(words).capitalize()

    def output(self) -> str:
        rng = self._rng
        words = [rng.choice(_CONTENT_WORDS) for _ in range(rng.randint(4, 12))]
        return " ".join(words).capitalize() + "."

    def task(self) -> Task:
        return (self.instruction(), self.input(), self.output())

    def tasks(self, k: int) -> list[Task]:
        return [self.task() for _ in range(k)]


class InstructionTextGenerator(TaskGenerator):
    """Tasks whose instructions look like a model's (benchmarks/instruction_text.py): shared openings,
    Zipf topics, and a share of rewordings of earlier ones, so many are near-duplicates."""

    def __init__(self, seed: int = 0, detail: int = 0, near_share: float = 0.3) -> None:
        super().__init__(seed)
        benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
        if benchmarks not in sys.path:
            sys.path.insert(0, benchmarks)
        from instruction_text import InstructionSource

        self._source = InstructionSource(seed=seed)
        self._source.detail = detail
        self._near_share = near_share
        self._emitted: list[str] = []

    def instruction(self) -> str:
        source, rng = self._source, self._rng
        if self._emitted and rng.random() < self._near_share:
            text = source.paraphrase(rng.choice(self._emitted))
        else:
            text = source.fresh()
        if len(self._emitted) < 200_000:
            self._emitted.append(text)
        return text


# --------------------------------------------------------------------------------------------
# Request parsing helpers
# --------------------------------------------------------------------------------------------

_CHAT = "/v1/chat/completions"
_COMPLETIONS = "/v1/completions"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _prompt_text(path: str, body: dict[str, Any]) -> str:
    if path == _CHAT:
        messages = body.get("messages") or []
        return "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return str(prompt[0]) if prompt else ""
    return str(prompt)


def _task_count(text: str, start: int) -> int:
    """Tasks a well-behaved model writes: up to the total the prompt names, counting from ``start``.

    "We need 20 tasks" with a prompt ending in "4. Instruction:" gives tasks 4..20 (17); a start
    past the named total gives the total itself. Never more than MAX_DEFAULT_TASKS.
    """
    match = _TASK_COUNT.search(text)
    total = int(match.group(1)) if match else DEFAULT_TASK_COUNT
    count = total - start + 1 if start <= total else total
    return max(1, min(count, MAX_DEFAULT_TASKS))


@dataclass(frozen=True)
class _PromptPlan:
    start: int  # number of the first block
    continuation: bool  # the prompt already holds "start. Instruction:"
    count: int  # tasks to generate by default
    text: str


def _plans(path: str, body: dict[str, Any]) -> list[_PromptPlan]:
    if path == _CHAT:
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"]
        last_user = _content_text(users[-1].get("content")) if users else ""
        match = _TRAILING_HEADER.search(last_user)
        start = int(match.group(1)) if match else 1
        text = _prompt_text(path, body)
        return [_PromptPlan(start, False, _task_count(text, start), text)]
    prompt = body["prompt"]
    prompts = prompt if isinstance(prompt, list) else [prompt]
    plans = []
    for p in prompts:
        p = str(p)
        match = _TRAILING_HEADER.search(p)
        start = int(match.group(1)) if match else 1
        plans.append(_PromptPlan(start, match is not None, _task_count(p, start), p))
    return plans


class _HttpError(Exception):
    """A request the server rejects before any reply logic runs."""

    def __init__(self, status: int, message: str, code: str | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.code, self.close = status, message, code, close


@dataclass
class _Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


def _error_body(
    message: str, type_: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

Handler = Callable[[RequestContext], "Reply | None"]


class FakeOpenAI:
    """An OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies and fault injection.

    Use as a context manager (or ``start()``/``stop()``). Completion requests are answered by,
    in order: the ``handler`` (if it returns a Reply), the ``enqueue``d replies, then the
    default generator. ``in_flight`` counts completion requests from arrival to answer;
    ``serving`` counts those holding one of the ``capacity`` slots (sleeping ``latency``).
    ``pause()`` holds arrived requests before they take a slot, so tests can build up a
    known concurrency without sleeping.

    ``latency`` applies to every completion request that gets a reply (scripted errors and
    drops included) but not to ones refused up front (401, 400, 404) nor to ``/v1/models``.
    The handler runs on the server's event-loop thread: it must be quick and must not block
    (use ``Reply.slow`` for delays).
    """

    def __init__(
        self,
        *,
        models: Sequence[str] = ("fake-model",),
        latency: float = 0.0,
        capacity: int | None = None,
        batch_slowdown: float | None = None,
        api_key: str | None = None,
        seed: int = 0,
        llama_quirks: bool = False,
        enforce_max_tokens: bool = False,
        keep_bodies: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        models_reply: Reply | None = None,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1 (or None for unlimited)")
        if latency < 0:
            raise ValueError("latency must be >= 0")
        if batch_slowdown is not None and not batch_slowdown > 0:
            raise ValueError("batch_slowdown must be > 0 (or None for a fixed latency)")
        self.batch_slowdown = batch_slowdown
        self.models = tuple(models)
        self.latency = float(latency)
        self.capacity = capacity
        self.api_key = api_key
        self.llama_quirks = llama_quirks
        self.enforce_max_tokens = enforce_max_tokens
        self.keep_bodies = keep_bodies
        self.host = host
        self.port = port
        self.generator = TaskGenerator(seed)
        # What GET /v1/models answers instead of the model list (see the module docstring).
        self.models_reply = models_reply

        self.requests: list[RecordedRequest] = []
        self.emitted: list[Task] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.serving = 0
        self.max_serving = 0
        self.concurrency_log: list[tuple[float, int]] = []  # (time, in_flight)
        self.serving_log: list[tuple[float, int]] = []  # (time, serving)
        self.internal_errors: list[str] = []  # tracebacks of bugs in the fake or in a handler

        self._queue: collections.deque[Reply] = collections.deque()
        self._handler: Handler | None = None
        self._next_number = 0
        self._paused = False
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._resume_event: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI is already started")
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="fake-openai", daemon=True
        )
        self._thread.start()
        try:
            self.port = ready.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            raise
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            stop_event = self._stop_event
            assert stop_event is not None
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:  # loop already closed
                pass
            thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self, ready: concurrent.futures.Future[int]) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:  # noqa: BLE001 - report bind errors to start()
            if not ready.done():
                ready.set_exception(exc)
            else:
                self.internal_errors.append(traceback.format_exc())

    async def _main(self, ready: concurrent.futures.Future[int]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._resume_event = asyncio.Event()
        if not self._paused:
            self._resume_event.set()
        self._slots = asyncio.Semaphore(self.capacity) if self.capacity else None
        server = await asyncio.start_server(
            self._accept, self.host, self.port, backlog=2048, limit=_MAX_HEADER_BYTES
        )
        ready.set_result(server.sockets[0].getsockname()[1])
        try:
            await self._stop_event.wait()
        finally:
            # Stop accepting but keep the Server open until accepts under way have finished:
            # on CPython 3.11, Server.close() makes those fail inside the transport constructor
            # and leak their sockets.
            loop = asyncio.get_running_loop()
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
            me = asyncio.current_task()
            for _ in range(100):
                await asyncio.sleep(0)
                if asyncio.all_tasks() - {me} <= self._connections:
                    break
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0)  # lets the transports run connection_lost and close sockets
            await server.wait_closed()

    # -- scripting ---------------------------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Script replies, consumed in order by the next completion requests."""
        for reply in replies:
            if not isinstance(reply, Reply):
                raise TypeError(f"enqueue() takes Reply objects, not {type(reply).__name__}")
        self._queue.extend(replies)

    @property
    def queued(self) -> int:
        """Scripted replies not consumed yet."""
        return len(self._queue)

    def set_handler(self, fn: Handler | None) -> None:
        """``fn(ctx) -> Reply | None`` decides first for each completion request; None passes on."""
        self._handler = fn

    def pause(self) -> None:
        """Hold completion requests after arrival (counted in flight) until ``resume()``."""
        self._set_paused(True)

    def resume(self) -> None:
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        def apply() -> None:
            # Flag and event change together on the loop thread: a request never sees them disagree.
            self._paused = paused
            if self._resume_event is not None:
                (self._resume_event.clear if paused else self._resume_event.set)()

        if self.running:
            self._in_loop(apply)
        else:
            self._paused = paused

    def _in_loop(self, fn: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None or not self.running:
            return
        if threading.current_thread() is self._thread:
            fn()
            return
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                done.set()

        loop.call_soon_threadsafe(call)
        done.wait(timeout=30)

    # -- observation -------------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[FakeOpenAI], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate(self)`` holds (checked on every change), else TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout=timeout):
                raise TimeoutError(
                    f"fake server state never satisfied the condition within {timeout}s "
                    f"(in_flight={self.in_flight}, serving={self.serving}, "
                    f"requests={len(self.requests)})"
                )

    def completion_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.number is not None]

    def stats(self) -> dict[str, Any]:
        """Counters for benchmarks (also served as JSON at GET /_fake/stats)."""
        completions = self.completion_requests()
        statuses: dict[str, int] = collections.Counter(
            str(r.status) for r in completions if r.status is not None
        )
        return {
            "completion_requests": len(completions),
            "answered": sum(statuses.values()),
            "statuses": dict(sorted(statuses.items())),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "serving": self.serving,
            "max_serving": self.max_serving,
            "emitted": len(self.emitted),
            "latency": self.latency,
            "capacity": self.capacity,
            "batch_slowdown": self.batch_slowdown,
        }

    def service_time(self, serving: int) -> float:
        """Seconds one request takes when it is one of ``serving`` in service."""
        if self.batch_slowdown is None:
            return self.latency
        return self.latency * (1.0 + serving / self.batch_slowdown)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- connection handling -----------------------------------------------------------------

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Coroutine[Any, Any, None]:
        # Runs synchronously in connection_made: the writer is known even if stop() comes
        # before the connection's task ever runs.
        self._writers.add(writer)
        return self._connection(reader, writer)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    request = await self._read_request(reader)
                except _HttpError as exc:
                    self._write(writer, exc.status, _error_body(exc.message, code=exc.code), False)
                    break
                if request is None:
                    break
                if not await self._dispatch(request, writer):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels these; ending normally avoids a Python 3.11 streams bug
            # that logs an error for a cancelled client_connected_cb task.
            pass
        except Exception:  # noqa: BLE001 - a bug in the fake must not kill the loop silently
            self.internal_errors.append(traceback.format_exc())
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _HttpError(400, "incomplete request head", close=True) from None
            return None  # the client closed an idle connection
        except asyncio.LimitOverrunError:
            raise _HttpError(431, "request headers too large", close=True) from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _HttpError(400, f"malformed request line {lines[0]!r}", close=True)
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _HttpError(400, f"malformed header line {line!r}", close=True)
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _HttpError(400, "bad Content-Length", close=True) from None
            if length < 0 or length > _MAX_BODY_BYTES:
                raise _HttpError(413, "request body too large", close=True)
            body = await reader.readexactly(length) if length else b""
        return _Request(method.upper(), target.split("?", 1)[0], version, headers, body)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, "bad chunk size", close=True) from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY_BYTES:
                raise _HttpError(413, "request body too large", close=True)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    @staticmethod
    def _head(
        status: int,
        length: int,
        keep_alive: bool,
        extra_headers: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> bytes:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        head = [
            f"HTTP/1.1 {status} {phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {length}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            "Server: fake-openai",
        ]
        head += [f"{name}: {value}" for name, value in extra_headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")

    def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: dict[str, Any],
        keep_alive: bool,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if writer.is_closing():
            return
        body = json.dumps(payload).encode()
        writer.write(self._head(status, len(body), keep_alive, extra_headers) + body)

    async def _emit(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        keep_alive: bool,
        extra_headers: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
        trickle: Reply | None = None,
    ) -> None:
        """Send one response, all at once or with one part trickled byte by byte."""
        if writer.is_closing():
            return
        head = self._head(status, len(body), keep_alive, extra_headers, content_type)
        if trickle is None:
            writer.write(head + body)
            return
        if trickle.part == "head":
            slow, rest = head, body
        else:
            writer.write(head)
            slow, rest = body, b""
        for i in range(len(slow)):
            if i:
                await asyncio.sleep(trickle.delay)
            if writer.is_closing():  # the client gave up
                return
            writer.write(slow[i : i + 1])
            await writer.drain()
        writer.write(rest)

    def _record(self, request: _Request) -> RecordedRequest:
        headers = {k: v for k, v in request.headers.items() if k != "authorization"}
        record = RecordedRequest(request.method, request.path, headers, time.monotonic())
        self.requests.append(record)
        return record

    def _finish(self, record: RecordedRequest, status: int, kind: str, source: str) -> None:
        record.status, record.kind, record.source = status, kind, source
        record.finish = time.monotonic()

    async def _dispatch(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        path, method = request.path.rstrip("/") or "/", request.method
        keep = request.keep_alive
        record = self._record(request)
        if path in (_CHAT, _COMPLETIONS):
            if method != "POST":
                return self._reject(record, writer, keep, 405, f"Use POST for {path}")
            return await self._completion(request, record, writer)
        if path == "/health" and method == "GET":
            self._finish(record, 200, "health", "server")
            self._notify()
            self._write(writer, 200, {"status": "ok"}, keep)
            return keep
        if path == "/_fake/stats" and method == "GET":
            self._finish(record, 200, "stats", "server")
            self._notify()
            self._write(writer, 200, self.stats(), keep)
            return keep
        if path.startswith("/v1/") and not self._authorized(request):
            return self._reject(record, writer, keep, 401, *self._auth_message(request))
        if path == "/v1/models" and method == "GET":
            listing = {"object": "list", "data": [self._model(m) for m in self.models]}
            if self.models_reply is not None:
                return await self._play_models(self.models_reply, record, writer, keep, listing)
            self._finish(record, 200, "models", "server")
            self._notify()
            self._write(writer, 200, listing, keep)
            return keep
        if path.startswith("/v1/models/") and method == "GET":
            model_id = path[len("/v1/models/") :]
            if model_id not in self.models:
                return self._reject(record, writer, keep, 404, *self._missing_model(model_id))
            self._finish(record, 200, "models", "server")
            self._notify()
            self._write(writer, 200, self._model(model_id), keep)
            return keep
        return self._reject(record, writer, keep, 404, f"Unknown request URL: {method} {path}")

    async def _play_models(
        self,
        reply: Reply,
        record: RecordedRequest,
        writer: asyncio.StreamWriter,
        keep: bool,
        listing: dict[str, Any],
    ) -> bool:
        reply, delay, trickle = reply.peel()
        record.delay = delay
        if delay:
            await asyncio.sleep(delay)
        if reply.kind == "drop":
            self._finish(record, 0, "drop", "server")
            self._notify()
            writer.close()
            return False
        if reply.kind == "error":
            status, kind = reply.status, "error"
            body = json.dumps(
                _error_body(reply.message, reply.error_type or "server_error", reply.error_code)
            ).encode()
        elif reply.kind == "raw":
            status, kind, body = reply.status, "raw", reply.body
        else:
            status, kind, body = 200, "models", json.dumps(listing).encode()
        self._finish(record, status, kind, "server")
        self._notify()
        await self._emit(writer, status, body, keep, reply.headers, reply.content_type, trickle)
        return keep

    def _model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "fake-openai"}

    @staticmethod
    def _missing_model(model: str) -> tuple[str, str]:
        return f"The model `{model}` does not exist", "model_not_found"

    def _authorized(self, request: _Request) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.api_key

    @staticmethod
    def _auth_message(request: _Request) -> tuple[str, str]:
        if "authorization" not in request.headers:
            return "You didn't provide an API key.", "invalid_api_key"
        return "Incorrect API key provided.", "invalid_api_key"

    def _reject(
        self,
        record: RecordedRequest,
        writer: asyncio.StreamWriter,
        keep: bool,
        status: int,
        message: str,
        code: str | None = None,
        error_type: str | None = None,
    ) -> bool:
        self._finish(record, status, "error", "server")
        self._notify()
        type_ = error_type or ("server_error" if status >= 500 else "invalid_request_error")
        self._write(writer, status, _error_body(message, type_, code), keep)
        return keep

    # -- completions -------------------------------------------------------------------------

    def _arrive(self, record: RecordedRequest) -> None:
        record.number = self._next_number
        self._next_number += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        record.in_flight = self.in_flight
        self.concurrency_log.append((record.arrival, self.in_flight))

    def _depart(self, record: RecordedRequest) -> None:
        self.in_flight -= 1
        self.concurrency_log.append((time.monotonic(), self.in_flight))
        self._notify()

    def _validate(self, path: str, body: Any) -> tuple[int, str, str | None] | None:
        """(status, message, code) for a request the fake refuses, else None."""
        if not isinstance(body, dict):
            return 400, "The request body must be a JSON object.", None
        if not isinstance(body.get("model"), str) or not body["model"]:
            return 400, "You must provide a model parameter.", None
        if path == _CHAT:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return 400, "'messages' must be a non-empty array.", None
        else:
            prompt = body.get("prompt")
            if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
                return 400, "'prompt' must be a string or a non-empty array of strings.", None
        if body.get("stream"):
            return 400, "The fake server does not implement stream=true.", None
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                if self.llama_quirks:  # llama.cpp fails such requests with a 500
                    return 500, f"invalid value for {name}: {value!r}", None
                return 400, f"Invalid '{name}': must be a positive integer, got {value!r}.", None
        n = body.get("n")
        if n is not None and not self.llama_quirks:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n > 128:
                return 400, f"Invalid 'n': must be an integer from 1 to 128, got {n!r}.", None
        stop = body.get("stop")
        if stop is not None and not isinstance(stop, str):
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                return 400, "'stop' must be a string or an array of strings.", None
        if body["model"] not in self.models:
            return 404, *self._missing_model(body["model"])
        return None

    def _decide(self, ctx: RequestContext) -> tuple[Reply, str]:
        if self._handler is not None:
            reply = self._handler(ctx)
            if reply is not None:
                if not isinstance(reply, Reply):
                    raise TypeError(f"handler returned {type(reply).__name__}, not Reply or None")
                return reply, "handler"
        try:
            return self._queue.popleft(), "queue"
        except IndexError:
            return Reply.default(), "default"

    async def _completion(
        self, request: _Request, record: RecordedRequest, writer: asyncio.StreamWriter
    ) -> bool:
        keep = request.keep_alive
        self._arrive(record)
        departed = False

        def reject(status: int, message: str, code: str | None = None) -> bool:
            nonlocal departed
            self._finish(record, status, "error", "server")
            departed = True
            self._depart(record)
            type_ = "server_error" if status >= 500 else "invalid_request_error"
            self._write(writer, status, _error_body(message, type_, code), keep)
            return keep

        try:
            self._notify()
            if not self._authorized(request):
                return reject(401, *self._auth_message(request))
            try:
                body = json.loads(request.body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                return reject(400, f"We could not parse the JSON body of your request: {exc}")
            if self.keep_bodies:
                record.body = body
            problem = self._validate(request.path, body)
            if problem is not None:
                return reject(*problem)
            ctx = RequestContext(
                number=record.number if record.number is not None else -1,
                path=request.path,
                body=body,
                in_flight=record.in_flight,
                headers=dict(record.headers),
            )
            try:
                reply, source = self._decide(ctx)
            except Exception:  # noqa: BLE001 - surface handler bugs as a 500 and in internal_errors
                self.internal_errors.append(traceback.format_exc())
                return reject(500, "the test handler raised; see FakeOpenAI.internal_errors")
            reply, delay, trickle = reply.peel()
            record.delay = delay

            assert self._resume_event is not None
            await self._resume_event.wait()  # set unless paused
            if self._slots is not None:
                await self._slots.acquire()
            try:
                record.started = time.monotonic()
                self.serving += 1
                self.max_serving = max(self.max_serving, self.serving)
                self.serving_log.append((record.started, self.serving))
                self._notify()
                try:
                    if self.latency:
                        await asyncio.sleep(self.service_time(self.serving))
                    if delay:
                        await asyncio.sleep(delay)
                finally:
                    self.serving -= 1
                    self.serving_log.append((time.monotonic(), self.serving))
            finally:
                if self._slots is not None:
                    self._slots.release()

            # All bookkeeping below happens before the bytes go out, so a client holding its
            # answer always finds the request recorded as finished.

            if reply.kind == "drop":
                self._finish(record, 0, "drop", source)
                departed = True
                self._depart(record)
                writer.close()
                return False
            if reply.kind == "error":
                self._finish(record, reply.status, "error", source)
                departed = True
                self._depart(record)
                payload = _error_body(
                    reply.message, reply.error_type or "server_error", reply.error_code
                )
                data = json.dumps(payload).encode()
                await self._emit(writer, reply.status, data, keep, reply.headers, trickle=trickle)
                return keep
            if reply.kind == "raw":
                self._finish(record, reply.status, "raw", source)
                departed = True
                self._depart(record)
                await self._emit(
                    writer, reply.status, reply.body, keep, reply.headers, reply.content_type, trickle
                )
                return keep
            payload = self._answer(request.path, body, reply, record)
            self._finish(record, 200, "tasks" if reply.kind == "default" else reply.kind, source)
            departed = True
            self._depart(record)
            await self._emit(writer, 200, json.dumps(payload).encode(), keep, trickle=trickle)
            return keep
        finally:
            if not departed:  # cancelled (server stopping) or a bug: keep the counters honest
                self._depart(record)

    def _answer(
        self, path: str, body: dict[str, Any], reply: Reply, record: RecordedRequest
    ) -> dict[str, Any]:
        n = 1 if self.llama_quirks else int(body.get("n") or 1)
        stop = body.get("stop")
        stops = [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        choices: list[dict[str, Any]] = []
        completion_tokens = 0
        plans = _plans(path, body)
        for plan in plans:
            for _ in range(n):
                text, finish = self._choice_text(plan, reply, stops, max_tokens)
                index = len(choices)
                if path == _CHAT:
                    choice: dict[str, Any] = {
                        "index": index,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                else:
                    choice = {
                        "index": index,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                choices.append(choice)
                record.contents.append(text)
                record.finish_reasons.append(finish)
                completion_tokens += _words(text)
        prompt_tokens = max(1, sum(_words(p.text) for p in plans))
        completion_tokens = max(1, completion_tokens)
        chat = path == _CHAT
        return {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fake-openai",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _choice_text(
        self, plan: _PromptPlan, reply: Reply, stops: list[str], max_tokens: int | None
    ) -> tuple[str, str]:
        """Render one choice, apply truncation/stop/max_tokens, record emitted tasks."""
        finish = reply.finish_reason
        if reply.kind == "text":
            rendered = _Rendered(reply.content)
        else:
            tasks = (
                self.generator.tasks(reply.count or plan.count)
                if reply.kind == "default"
                else list(reply.items)
            )
            rendered = _render(tasks, plan.start, plan.continuation)
        text = rendered.text
        cut = len(text)
        spans = list(rendered.spans)
        if reply.kind == "truncated":
            task, out_start, out_end = spans[-1]
            cut = out_start + _cut_inside(task[2])
            spans[-1] = (task, out_start, len(text) + 1)  # never counts as emitted
        if self.enforce_max_tokens and max_tokens is not None:
            words = list(re.finditer(r"\S+", text[:cut]))
            if len(words) > max_tokens:
                cut = words[max_tokens - 1].end()
                finish = "length"
        # A stop string only counts when it lies wholly inside the text that was produced.
        found = [i for i in (text.find(s, 0, cut) for s in stops) if i != -1]
        if found:
            cut = min(found)
            finish = "stop"
        for task, _start, end in spans:
            if end <= cut:
                self.emitted.append(task)
        return text[:cut], finish


# --------------------------------------------------------------------------------------------
# Standalone server
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake as a standalone server until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        description="Fake OpenAI-compatible server for tests and benchmarks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per completion request")
    parser.add_argument("--capacity", type=int, default=None, help="requests served at once")
    parser.add_argument(
        "--batch-slowdown", type=float, default=None, metavar="B",
        help="continuous batching: each request takes latency × (1 + serving/B)",
    )
    parser.add_argument("--model", action="append", dest="models", help="model id (repeatable)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llama-quirks", action="store_true")
    parser.add_argument("--enforce-max-tokens", action="store_true")
    parser.add_argument("--max-tasks", type=int, default=None, help="most tasks in a default answer")
    parser.add_argument(
        "--instruction-text", type=int, default=None, metavar="DETAIL",
        help="default answers in instruction-like text (benchmarks/instruction_text.py) at this detail level,"
             " 30%% of them rewordings of earlier ones",
    )  # fmt: skip
    args = parser.parse_args(argv)
    global MAX_DEFAULT_TASKS
    if args.max_tasks:
        MAX_DEFAULT_TASKS = args.max_tasks

    server = FakeOpenAI(
        models=tuple(args.models or ("fake-model",)),
        latency=args.latency,
        capacity=args.capacity,
        batch_slowdown=args.batch_slowdown,
        api_key=args.api_key,
        seed=args.seed,
        llama_quirks=args.llama_quirks,
        enforce_max_tokens=args.enforce_max_tokens,
        keep_bodies=False,  # long benchmark runs would otherwise hold every prompt in memory
        host=args.host,
        port=args.port,
    )
    if args.instruction_text is not None:
        server.generator = InstructionTextGenerator(args.seed, args.instruction_text)  # type: ignore[assignment]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with server:
        print(f"fake-openai listening on {server.base_url}", flush=True)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print(json.dumps(server.stats()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
