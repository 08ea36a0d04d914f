"""The judge stage: a model reviews every task of a run, one task per request, resumably.

``judge()`` (``selfinstruct judge RUN``) judges the tasks of a finished or stopped run;
``generate --judge`` runs a :class:`JudgeStage` beside generation and feeds it each task as it
is accepted. Either way every attempt is one appended line of ``judgments.jsonl`` keyed by
task id and judge fingerprint: a task judged under a fingerprint is never sent again, a
killed session loses at most the answers in flight, and an answer that cannot be read is kept
as ``unjudged`` (never given a score) and tried again by the next session.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import JudgeConfig
from .errors import SelfInstructError, error_text
from .llm import Completion, EndpointPool, GenerationRequest, RequestFailed, redact_url
from .records import AcceptedTask, Judgment, SelfInstructTask, Status
from .rubric import JUDGE_PROMPT_VERSION, Rubric, Unreadable, judgment_schema, load_rubric, read_verdict
from .local import model_server
from .store import RunStore, now_utc

__all__ = ["JudgeItem", "JudgeStage", "JudgeSummary", "UnreadableJudge", "judge_tasks", "run_judge"]

log = logging.getLogger("selfinstruct")

RAW_KEPT = 4000  # characters of an unreadable answer kept for the user (and a later fix of the reader)
_FORMAT_ORDER = ("json_schema", "json_object")
# Failures that say "this server does not take that response_format" (llama-cpp-python answers 500).
_FORMAT_REFUSED = ("http_400", "http_422", "http_500", "bad_request")


class UnreadableJudge(SelfInstructError):
    """The judge model answers, but never in a form that can be read."""


@dataclass(frozen=True)
class JudgeItem:
    """One unit of judgment: an Alpaca task, or one instance of a self-instruct task."""

    task_id: str
    instance: int | None
    instruction: str
    input: str
    output: str

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.task_id, self.instance)


def items_of(
    accepted: Sequence[AcceptedTask], tasks: Iterable[SelfInstructTask], *, self_instruct: bool
) -> list[JudgeItem]:
    """What there is to judge: each instance of a finished self-instruct task, or each Alpaca task."""
    if self_instruct:
        return [JudgeItem(t.id, i, t.instruction, inp, out) for t in tasks for i, (inp, out) in enumerate(t.instances)]
    return [JudgeItem(a.id, None, a.instruction, a.input, a.output) for a in accepted]


def is_self_instruct(store: RunStore) -> bool:
    history = store.settings_history()
    return bool(store.tasks) or bool(history and history[-1]["settings"].get("method") == "self-instruct")


def _response_format(kind: str) -> dict[str, Any] | None:
    schema = judgment_schema()
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "task_review", "schema": schema}}
    if kind == "json_object":
        return {"type": "json_object", "schema": schema}  # llama.cpp reads the schema; others ignore it
    return None


@dataclass
class JudgeSummary:
    """What a judge session did, for people (``format()``) and programs."""

    output_dir: Path
    status: Status
    judge: str  # fingerprint
    model: str
    total: int  # units of judgment in the run
    judged: int  # judged under this fingerprint, all sessions
    judged_now: int
    unjudged: int  # tried, never readable (under this fingerprint)
    not_tried: int
    structured: str
    prompt_tokens: int
    completion_tokens: int
    elapsed_seconds: float
    error: str | None = None
    signal: int | None = None

    def format(self) -> str:
        lines = [
            f"{self.status}: {self.judged:,} of {self.total:,} tasks judged ({self.judged_now:,} in this session) "
            f"by {self.model} (judge {self.judge}) in {self.elapsed_seconds:.0f} s",
        ]
        if self.judged_now:
            tokens = (self.prompt_tokens + self.completion_tokens) / max(1, self.judged)
            lines.append(f"  {tokens:,.0f} judge tokens per judged task; JSON asked for as: {self.structured}")
        if self.unjudged:
            lines.append(
                f"  {self.unjudged:,} unjudged: their answers could not be read (kept in judgments.jsonl); "
                "run `selfinstruct judge` again to retry them"
            )
        if self.not_tried and self.status != "done":
            lines.append(f"  {self.not_tried:,} not judged yet; the same command goes on")
        return "\n".join(lines)


class JudgeStage:
    """Judges items over an endpoint pool and appends each attempt to the store.

    ``feed()`` adds items (those already judged under this fingerprint are skipped); ``close()``
    says no more will come, and ``run()`` returns when everything fed has had its chances.
    """

    def __init__(
        self,
        *,
        config: JudgeConfig,
        store: RunStore,
        pool: EndpointPool,
        rubric: Rubric,
        fingerprint: str,
        structured: str,
        max_tokens: int,
        progress: Any = None,
    ) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        self.rubric = rubric
        self.fingerprint = fingerprint
        self.structured = structured  # auto until the first answer decides it
        self.max_tokens = max_tokens
        self.progress = progress
        mine = [j for j in store.judgments if j.judge == fingerprint]
        self.judged: set[tuple[str, int | None]] = {j.key for j in mine if j.status == "judged"}
        self.tried: set[tuple[str, int | None]] = {j.key for j in mine}  # holds every judged key too
        self._tokens = [sum(j.prompt_tokens for j in mine), sum(j.completion_tokens for j in mine)]
        self.judged_now = 0
        self._queue: collections.deque[JudgeItem] = collections.deque()
        self._queued: set[tuple[str, int | None]] = set()
        self._attempts: collections.Counter[tuple[str, int | None]] = collections.Counter()
        self._closed = False
        self._busy = 0
        self._changed = asyncio.Event()
        self._unreadable_streak = 0
        self._last_unreadable = ""
        self._format_decided = asyncio.Lock()
        self._budget = config.limit
        self.self_instruct = is_self_instruct(store)

    # -- feeding --------------------------------------------------------------------------------

    def feed(self, items: Iterable[JudgeItem]) -> None:
        for item in items:
            if item.key in self.judged or item.key in self._queued:
                continue
            if self._budget is not None:
                if self._budget <= 0:
                    continue
                self._budget -= 1
            self._queue.append(item)
            self._queued.add(item.key)
        self._changed.set()

    def feed_records(self, accepted: Sequence[AcceptedTask], tasks: Sequence[SelfInstructTask]) -> None:
        """The store's commit hook: judge what was just accepted (instances once a self-instruct task is done)."""
        self.feed(items_of(accepted, tasks, self_instruct=self.self_instruct))

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    @property
    def pending(self) -> int:
        return len(self._queue) + self._busy

    # -- requests -------------------------------------------------------------------------------

    def request(self, item: JudgeItem, structured: str) -> GenerationRequest:
        api = self.config.api
        prompt: str | list[dict[str, str]]
        if api == "chat":
            prompt = self.rubric.messages(item.instruction, item.input, item.output)
        else:
            prompt = self.rubric.completion_prompt(item.instruction, item.input, item.output)
        return GenerationRequest(
            api=api, prompt=prompt, max_tokens=self.max_tokens, temperature=0.0, top_p=1.0,
            response_format=_response_format(structured) if api == "chat" else None,
        )  # fmt: skip

    async def _next(self) -> JudgeItem | None:
        waited = False
        while True:
            if self._queue:
                if waited and not self._busy:
                    self.pool.reset_silence()  # generate --judge: nothing to judge for a while is not a dead server
                item = self._queue.popleft()
                self._queued.discard(item.key)
                self._busy += 1
                return item
            if self._closed and not self._busy:
                self._changed.set()  # wake the other workers so they end too
                return None
            self._changed.clear()
            await self._changed.wait()
            waited = True

    async def _ask(self, item: JudgeItem) -> Completion | RequestFailed:
        if self.structured != "auto":
            return await self.pool.generate(self.request(item, self.structured))
        async with self._format_decided:  # one probe at a time; the others wait for its finding
            if self.structured == "auto":
                return await self._probe(item)
        return await self.pool.generate(self.request(item, self.structured))

    async def _probe(self, item: JudgeItem) -> Completion | RequestFailed:
        """Find the first response_format the server takes; its answer is a judgment like any other."""
        if self.config.api != "chat":
            self.structured = "off"
            return await self.pool.generate(self.request(item, "off"))
        for kind in _FORMAT_ORDER:
            result = await self.pool.generate(self.request(item, kind), attempts=1)
            if isinstance(result, Completion):
                self.structured = kind
                log.info("judge: the server takes response_format %s; answers are constrained to the rubric's JSON", kind)
                return result
            if result.kind not in _FORMAT_REFUSED:
                break  # the server is unwell, not choosy: do not read that as a refusal
        self.structured = "off"
        log.info("judge: the server takes no response_format; reading its answers as text")
        return await self.pool.generate(self.request(item, "off"))

    async def _worker(self) -> None:
        while True:
            item = await self._next()
            if item is None:
                return
            try:
                result = await self._ask(item)
                self.apply(item, result)
            finally:
                self._busy -= 1
                self._changed.set()

    async def run(self) -> None:
        workers = [asyncio.create_task(self._worker()) for _ in range(max(1, self.pool.max_capacity()))]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    # -- answers --------------------------------------------------------------------------------

    def apply(self, item: JudgeItem, result: Completion | RequestFailed) -> None:
        """Write one attempt. Synchronous, so nothing interleaves between reading and writing."""
        base = Judgment(
            task_id=item.task_id, instance=item.instance, judge=self.fingerprint, status="unjudged",
            model=self.pool.model or "", created=now_utc(),
        )  # fmt: skip
        if isinstance(result, RequestFailed):
            error = f"request failed: {result.kind}: {result.message}"
            self._commit(replace(base, error=error, endpoint=result.endpoint or ""))
            return  # the pool has retried already; the next session tries again
        answered = replace(
            base, endpoint=redact_url(result.endpoint), finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            latency=round(result.latency, 4),
        )  # fmt: skip
        verdict = read_verdict(result.text, has_input=bool(item.input.strip()), finish_reason=result.finish_reason)
        if isinstance(verdict, Unreadable):
            self._commit(replace(answered, error=verdict.error, raw=result.text[:RAW_KEPT]))
            self._attempts[item.key] += 1
            if self._attempts[item.key] < self.config.attempts_per_task:
                self._queue.append(item)  # once more, behind the rest
                self._queued.add(item.key)
            self._count_unreadable(verdict.error, result.text)
            return
        self._unreadable_streak = 0
        self._commit(
            replace(
                answered, status="judged", checks=verdict.checks, overall=verdict.overall,
                reasoning=verdict.reasoning, parse=verdict.parse, coerced=verdict.coerced,
            )  # fmt: skip
        )
        self.judged.add(item.key)
        self.judged_now += 1
        if self.progress is not None:
            self.progress.update(1, f"unjudged {self.unjudged}")

    @property
    def unjudged(self) -> int:
        """Tasks tried under this judge that have no verdict yet."""
        return len(self.tried) - len(self.judged)

    def show_progress(self) -> None:
        """A bar over what is judged and what is still to come (when anything is)."""
        if self.pending and self.progress is None:
            from .engine import Progress

            self.progress = Progress(True, len(self.judged) + self.pending, len(self.judged))

    def _commit(self, record: Judgment) -> None:
        self.store.commit(None, judgments=[record])
        self.tried.add(record.key)
        self._tokens[0] += record.prompt_tokens
        self._tokens[1] += record.completion_tokens

    def _count_unreadable(self, error: str, text: str) -> None:
        self._unreadable_streak += 1
        self._last_unreadable = f"{error}; it began {' '.join(text.split())[:160]!r}"
        if self._unreadable_streak >= self.config.max_unreadable_answers:
            raise UnreadableJudge(
                f"the last {self._unreadable_streak} judge answers could not be read ({self._last_unreadable}). "
                "The judge model does not follow the rubric's JSON format: use a larger judge model (--judge-model), "
                "a server with structured output (--structured json_schema), or a rubric file of your own (--rubric); "
                f"the answers are kept in {self.store.path('judgments.jsonl')}"
            )

    def totals(self) -> dict[str, Any]:
        """The judge's part of run.json: counts and tokens under this fingerprint, all sessions."""
        return {
            "fingerprint": self.fingerprint,
            "model": self.pool.model,
            "endpoints": [redact_url(u) for u in self.pool.urls],
            "structured": self.structured,
            "judged": len(self.judged),
            "unjudged": self.unjudged,
            "prompt_tokens": self._tokens[0],
            "completion_tokens": self._tokens[1],
            "updated": now_utc(),
        }


def warn_if_self_judging(judge_model: str, generator_models: Iterable[str]) -> None:
    if judge_model and judge_model in set(generator_models):
        log.warning(
            "the judge (%s) is the model that wrote these tasks; models tend to rate their own outputs "
            "favourably, so prefer another model (--judge-model / --judge-base-url) for a fair review",
            judge_model,
        )


async def open_stage(
    config: JudgeConfig, store: RunStore, base_urls: Sequence[str], *, embedded: bool, progress: Any = None
) -> JudgeStage:
    """Resolve the judge's model, register its fingerprint and return a stage ready to be fed."""
    rubric = load_rubric(config.rubric)
    if embedded and config.concurrency is None:
        config = replace(config, concurrency=1)  # llama.cpp's embedded server answers one request at a time
    pool = EndpointPool.for_config(config, base_urls)
    try:
        model = await pool.resolve_model()
    except BaseException:
        await pool.aclose()
        raise
    max_tokens = config.answer_tokens(embedded)
    settings = config.judge_settings(
        model, rubric=rubric.fingerprint(), prompt_version=JUDGE_PROMPT_VERSION, max_tokens=max_tokens
    )
    settings["rubric_text"] = {"system": rubric.system, "template": rubric.template}
    fingerprint = store.record_judge(settings)
    return JudgeStage(
        config=config, store=store, pool=pool, rubric=rubric, fingerprint=fingerprint,
        structured=config.structured, max_tokens=max_tokens, progress=progress,
    )  # fmt: skip


# -- the `judge` command ------------------------------------------------------------------------------


class _JudgeSession:
    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.stage: JudgeStage | None = None
        self.store: RunStore | None = None
        self.status: Status = "running"
        self.error: str | None = None
        self.total = 0

    def summary(self) -> JudgeSummary:
        stage = self.stage
        totals = stage.totals() if stage else {}
        judged = totals.get("judged", 0)
        unjudged = totals.get("unjudged", 0)
        return JudgeSummary(
            output_dir=self.config.output_dir, status=self.status, judge=totals.get("fingerprint", ""),
            model=totals.get("model") or "", total=self.total, judged=judged,
            judged_now=stage.judged_now if stage else 0, unjudged=unjudged,
            not_tried=max(0, self.total - judged - unjudged), structured=totals.get("structured", self.config.structured),
            prompt_tokens=totals.get("prompt_tokens", 0), completion_tokens=totals.get("completion_tokens", 0),
            elapsed_seconds=time.monotonic() - self.started, error=self.error,
        )  # fmt: skip

    def save(self) -> None:
        if self.store is None or self.stage is None:
            return
        run = dict(self.store.previous_run)
        run["judge"] = self.stage.totals()
        try:
            self.store.write_run(run)
        except SelfInstructError as exc:
            log.warning(f"could not update run.json: {exc}")

    async def run(self) -> JudgeSummary:
        cfg = self.config
        from .store import _check_run_dir

        _check_run_dir(Path(cfg.output_dir))
        store = self.store = RunStore(cfg.output_dir)
        store.open()
        try:
            for notice in store.notices:
                log.warning(notice)
            items = items_of(store.accepted, store.tasks.values(), self_instruct=is_self_instruct(store))
            self.total = len(items)
            async with model_server(cfg.base_urls, cfg.model_path, cfg.output_dir) as urls:
                try:
                    stage = self.stage = await open_stage(cfg, store, urls, embedded=not cfg.base_urls)
                    warn_if_self_judging(stage.pool.model or "", store.models_on_disk() | {t.model for t in store.tasks.values()})
                    stage.feed(items)
                    stage.close()
                    if cfg.progress:
                        stage.show_progress()
                    await stage.run()
                    self.status = "done"
                except asyncio.CancelledError:
                    self.status = "interrupted"
                    raise
                except BaseException as exc:
                    self.status = "failed"
                    self.error = error_text(exc)
                    raise
                finally:
                    if self.stage is not None and self.stage.progress is not None:
                        self.stage.progress.close()
                    self.save()
                    if self.stage is not None:
                        await self.stage.pool.aclose()
            return self.summary()
        finally:
            store.close()


async def run_judge(config: JudgeConfig, *, stop: asyncio.Event | None = None) -> JudgeSummary:
    """Judge every task of the run in ``config.output_dir`` not yet judged by this judge (async).

    Setting ``stop`` ends the session at once (status ``interrupted``); the same call resumes.
    """
    from .runner import until_stopped

    summary: JudgeSummary = await until_stopped(_JudgeSession(config), stop)
    return summary


def judge_tasks(config: JudgeConfig) -> JudgeSummary:
    """Run :func:`run_judge` to completion (signals and Jupyter handled as for ``generate``)."""
    from .runner import drive

    return drive(run_judge, config)
