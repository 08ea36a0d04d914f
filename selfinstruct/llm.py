"""Talking to OpenAI-compatible model servers: one or several endpoints, many requests in flight.

Design:

* Each endpoint has its own ``openai.AsyncOpenAI`` client (the SDK's own retries are off; we retry
  with tenacity so that a retry may move to another endpoint and honours ``Retry-After``).
* Each endpoint has an :class:`AdaptiveLimit` (AIMD, as TCP does): slow start doubles the allowed
  requests in flight every round trip, then additive increase; overload signals (429, 503,
  timeouts, latency far above its baseline) cut it. A fixed ``--concurrency K`` pins it.
* A request goes to the endpoint with the fewest requests in flight relative to its limit.
  An endpoint that keeps failing is rested (exponential back-off) while the others carry on.
* Errors that retrying cannot fix (401, unknown model, 400) become :mod:`selfinstruct.errors`
  exceptions whose message says what to change. The job gives up on the servers only when none of
  them has answered for ``give_up_after`` seconds.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from .errors import AuthError, BadRequest, ClientError, ModelNotFound, ServerUnreachable

__all__ = [
    "AdaptiveLimit",
    "Completion",
    "EndpointPool",
    "GenerationRequest",
    "redact_url",
]

Api = Literal["chat", "completions"]


# Status codes that mean "try again later" rather than "your request is wrong".
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_OVERLOAD_STATUS = {429, 503}


@dataclass(frozen=True)
class GenerationRequest:
    """What to send: a chat message list or a completion prompt, and sampling settings."""

    api: Api
    prompt: str | list[dict[str, str]]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


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


def redact_url(url: str) -> str:
    """Drop user:password@ from a URL before it is printed or stored."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


class AdaptiveLimit:
    """How many requests one endpoint may have in flight: AIMD with slow start.

    Below ``ssthresh`` each success adds one (doubling per round trip); above it each success adds
    ``1/limit`` (one per round trip). An overload signal halves the limit; the first one of an
    episode also sets ``ssthresh`` there. A latency far above the best seen cuts it by 10 %. Each cut happens at most once per
    round trip so that one burst of failures counts as one signal.
    """

    def __init__(self, *, initial: int = 4, maximum: int = 128, fixed: int | None = None) -> None:
        self.fixed = fixed
        self.maximum = fixed if fixed is not None else maximum
        self.limit = float(fixed if fixed is not None else min(initial, maximum))
        self.ssthresh = float(self.maximum)
        self.peak = self.limit
        self._best_latency = math.inf
        self._best_per_token = math.inf
        self._last_cut = 0.0
        self.cuts = 0

    @property
    def value(self) -> int:
        return max(1, int(self.limit))

    def _can_cut(self, now: float) -> bool:
        window = self._best_latency if math.isfinite(self._best_latency) else 1.0
        return now - self._last_cut >= window

    def on_success(self, latency: float, tokens: int) -> None:
        if self.fixed is not None:
            return
        # Per token, so long answers do not look like congestion.
        per_token = latency / max(tokens, 1)
        self._best_latency = min(self._best_latency, latency)
        self._best_per_token = min(self._best_per_token, per_token)
        now = time.monotonic()
        if per_token > 3.0 * self._best_per_token and self.limit > 1 and self._can_cut(now):
            self.ssthresh = max(1.0, self.limit * 0.9)
            self.limit = self.ssthresh
            self._last_cut = now
            self.cuts += 1
            return
        if self.limit < self.ssthresh:
            self.limit += 1.0
        else:
            self.limit += 1.0 / self.limit
        self.limit = min(self.limit, float(self.maximum))
        self.peak = max(self.peak, self.limit)

    def on_overload(self) -> None:
        if self.fixed is not None:
            return
        now = time.monotonic()
        if not self._can_cut(now):
            return
        window = self._best_latency if math.isfinite(self._best_latency) else 1.0
        if now - self._last_cut > 10 * window:
            # First cut of an overload episode: remember half the level that worked. Later
            # cuts in the same storm lower the limit only, so that afterwards slow start
            # doubles back to that level within a few round trips instead of crawling up
            # one request per round trip (minutes when answers take tens of seconds).
            self.ssthresh = max(1.0, self.limit / 2)
        self.limit = max(1.0, self.limit / 2)
        self._last_cut = now
        self.cuts += 1


@dataclass
class _Endpoint:
    url: str
    client: openai.AsyncOpenAI
    limit: AdaptiveLimit
    in_flight: int = 0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    rested_until: float = 0.0
    rests: int = 0  # consecutive rests, for the back-off; total_rests for the stats
    total_rests: int = 0
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


class _Retry(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(self, cause: BaseException, retry_after: float | None, kind: str) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = retry_after
        self.kind = kind


class _WaitRetryAfter(wait_base):
    """Exponential back-off with jitter, but never shorter than the server's Retry-After."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = min(self.cap, self.base * 2 ** (retry_state.attempt_number - 1))
        wait = random.uniform(backoff / 2, backoff)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Retry) and exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, 300.0))
        return wait


def _retry_after_seconds(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return exc.message


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
    ) -> None:
        if not base_urls:
            raise ClientError("no model server given; pass --base-url or set OPENAI_BASE_URL")
        self.model = model
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.give_up_after = give_up_after
        self.rest_after_failures = rest_after_failures
        self._endpoints = [
            _Endpoint(
                url=url.rstrip("/"),
                client=openai.AsyncOpenAI(
                    base_url=url, api_key=api_key, max_retries=0, timeout=request_timeout
                ),
                limit=AdaptiveLimit(initial=initial_concurrency, maximum=max_concurrency, fixed=concurrency),
            )
            for url in dict.fromkeys(base_urls)
        ]
        self._changed = asyncio.Condition()
        self._last_success = time.monotonic()
        self._last_error: str | None = None

    # -- capacity ---------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self._endpoints]

    def max_capacity(self) -> int:
        return sum(e.limit.maximum for e in self._endpoints)

    def in_flight(self) -> int:
        return sum(e.in_flight for e in self._endpoints)

    async def _acquire(self) -> _Endpoint:
        async with self._changed:
            while True:
                now = time.monotonic()
                ready = [e for e in self._endpoints if e.rested_until <= now and e.in_flight < e.limit.value]
                if ready:
                    best = min(ready, key=_Endpoint.load)
                    best.in_flight += 1
                    best.requests += 1
                    return best
                resting = [e.rested_until for e in self._endpoints if e.rested_until > now]
                timeout = max(0.0, min(resting) - now) if resting and len(resting) == len(self._endpoints) else None
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except asyncio.TimeoutError:
                    pass

    async def _release(self, endpoint: _Endpoint) -> None:
        async with self._changed:
            endpoint.in_flight -= 1
            # Wake only as many waiters as there are free slots (the limit may have grown):
            # waking all of hundreds of parked workers on every answer costs more than the answer.
            now = time.monotonic()
            free = sum(max(0, e.limit.value - e.in_flight) for e in self._endpoints if e.rested_until <= now)
            self._changed.notify(max(1, free))

    # -- model discovery --------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """Model ids of the first endpoint that answers ``/v1/models``."""
        last: BaseException | None = None
        for endpoint in self._endpoints:
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(lambda e: isinstance(e, _Retry)),
                    wait=_WaitRetryAfter(0.5, 4.0),
                    stop=stop_after_attempt(3),
                    reraise=True,
                ):
                    with attempt:
                        try:
                            page = await endpoint.client.models.list()
                        except Exception as exc:  # noqa: BLE001 - sorted out by _classify
                            raise self._classify(exc, endpoint) from exc
                        return [m.id for m in page.data]
            except _Retry as exc:
                last = exc
            except ClientError:
                raise
        reason = last.kind if isinstance(last, _Retry) else "no answer"
        detail = str(last.cause) if isinstance(last, _Retry) else ""
        raise ServerUnreachable(
            f"cannot reach the model server at {', '.join(redact_url(u) for u in self.urls)} ({reason}: {detail}); "
            "start it, or pass the right --base-url (it usually ends in /v1)"
        )

    async def resolve_model(self) -> str:
        """Check ``self.model`` against the server's list, or take the first model listed."""
        models = await self.list_models()
        if self.model is None:
            if not models:
                raise ModelNotFound("the server lists no models; pass --model NAME")
            self.model = models[0]
        elif models and self.model not in models:
            raise ModelNotFound(
                f"the server does not serve model {self.model!r}; it has: {', '.join(models)}. "
                "Pass one of them with --model"
            )
        return self.model

    # -- requests ---------------------------------------------------------------------------

    def _classify(self, exc: BaseException, endpoint: _Endpoint) -> BaseException:
        """Turn an SDK exception into either a _Retry or a final ClientError."""
        where = redact_url(endpoint.url)
        if isinstance(exc, openai.APITimeoutError):
            return _Retry(exc, None, "timeout")
        if isinstance(exc, openai.APIConnectionError):
            return _Retry(exc, None, "connection")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            message = _error_message(exc)
            if status in (401, 403):
                return AuthError(
                    f"the server at {where} rejected the API key (HTTP {status}: {message}); "
                    "set OPENAI_API_KEY or pass --api-key"
                )
            if status == 404:
                if "model" in message.lower():
                    return ModelNotFound(
                        f"the server at {where} does not serve model {self.model!r} ({message}); "
                        "run without --model to use the first model it lists, or pass the right name"
                    )
                return BadRequest(
                    f"the server at {where} answered 404 Not Found ({message}); "
                    "check --base-url (it usually ends in /v1) and --api (chat or completions)"
                )
            if status in _RETRYABLE_STATUS:
                return _Retry(exc, _retry_after_seconds(exc), f"http_{status}")
            if "context" in message.lower() and ("length" in message.lower() or "window" in message.lower()):
                return BadRequest(
                    f"the prompt plus --max-tokens exceed the model's context at {where} ({message}); "
                    "lower --max-tokens or --num-prompt-instructions"
                )
            return BadRequest(f"the server at {where} rejected the request (HTTP {status}: {message})")
        return exc

    async def _send(self, endpoint: _Endpoint, request: GenerationRequest) -> tuple[str, str | None, dict[str, Any]]:
        assert self.model is not None, "resolve_model() first"
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.api == "chat":
            body["messages"] = request.prompt
            path = "/chat/completions"
        else:
            body["prompt"] = request.prompt
            path = "/completions"
        # The SDK's typed create() spends ~3 ms a request on parameter transforms and pydantic
        # models; at hundreds of requests/s that starves the event loop. post() with a plain body
        # and cast_to=object (the decoded JSON as it is) keeps the SDK's transport, auth and error
        # classes without that cost.
        data: Any = await endpoint.client.post(path, cast_to=object, body=body)
        try:
            choice = data["choices"][0]
            if not isinstance(choice, dict):
                raise TypeError("choice is not an object")
        except (KeyError, IndexError, TypeError) as exc:
            raise _Retry(ValueError(f"malformed answer: {str(data)[:200]!r}"), None, "malformed_answer") from exc
        if request.api == "chat":
            message = choice.get("message") or {}
            text = message.get("content") or ""
        else:
            text = choice.get("text") or ""
        usage = data.get("usage") or {}
        return str(text), choice.get("finish_reason"), usage if isinstance(usage, dict) else {}

    async def _attempt(self, request: GenerationRequest, attempt_number: int) -> Completion:
        endpoint = await self._acquire()
        started = time.monotonic()
        try:
            try:
                text, finish_reason, usage = await self._send(endpoint, request)
            except Exception as exc:  # noqa: BLE001 - sorted out by _classify
                error = exc if isinstance(exc, _Retry) else self._classify(exc, endpoint)
                self._record_failure(endpoint, error)
                if error is exc:
                    raise
                raise error from exc
            latency = time.monotonic() - started
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            endpoint.successes += 1
            endpoint.consecutive_failures = 0
            endpoint.rests = 0  # a working endpoint starts its back-off afresh next time
            endpoint.prompt_tokens += prompt_tokens
            endpoint.completion_tokens += completion_tokens
            endpoint.latency_total += latency
            endpoint.limit.on_success(latency, completion_tokens or max(1, len(text) // 4))
            self._last_success = time.monotonic()
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

    def _record_failure(self, endpoint: _Endpoint, error: BaseException) -> None:
        endpoint.failures += 1
        kind = error.kind if isinstance(error, _Retry) else type(error).__name__
        endpoint.errors[kind] = endpoint.errors.get(kind, 0) + 1
        if not isinstance(error, _Retry):
            return
        self._last_error = f"{redact_url(endpoint.url)}: {kind}: {error.cause}"
        if kind in ("timeout", "http_429", "http_503"):
            endpoint.limit.on_overload()
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
            endpoint.rested_until = time.monotonic() + pause
            endpoint.consecutive_failures = 0

    def _check_alive(self) -> None:
        silent = time.monotonic() - self._last_success
        if silent > self.give_up_after:
            raise ServerUnreachable(
                f"no model server has answered for {silent:.0f} s (last error: {self._last_error}); "
                "check the server, then rerun the same command to resume"
            )

    async def generate(self, request: GenerationRequest) -> Completion | None:
        """Send one request with retries; ``None`` when it failed every attempt.

        Raises a :class:`ClientError` for answers retrying cannot fix, or when no endpoint has
        answered for ``give_up_after`` seconds.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, _Retry)),
            wait=_WaitRetryAfter(self.backoff_base, self.backoff_cap),
            stop=stop_after_attempt(self.max_attempts),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    self._check_alive()
                    return await self._attempt(request, attempt.retry_state.attempt_number)
        except _Retry:
            self._check_alive()
            return None
        return None  # pragma: no cover - AsyncRetrying always returns or raises

    def stats(self) -> dict[str, dict[str, Any]]:
        return {redact_url(e.url): e.stats() for e in self._endpoints}

    async def aclose(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.client.close()
