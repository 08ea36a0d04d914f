"""Schedules the requests of one session and applies each answer's verdict to the store.

Workers (one per request slot the endpoints may grant) each take a request number, build a
prompt from sampled demonstrations, send it through the endpoint pool and, when the answer
comes, judge it and commit the records in one synchronous step (no ``await`` in between).

Liveness is measured by progress, not by HTTP 200: a server that answers quickly with nothing
usable stops the job with a message saying what it sends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .config import RunConfig
from .errors import SelfInstructError
from .judge import Accept, Judge, Verdict
from .judge_worker import JudgeWorker
from .llm import Completion, EndpointPool, GenerationRequest, RequestFailed, redact_url
from .prompts import DEFAULT_TEXTS, PromptTexts, build_chat_messages, build_completion_prompt, stop_sequences
from .records import AcceptedTask, Candidate, Rejection, RequestRecord, SeedTask
from .store import RunStore, now_utc

__all__ = ["Engine", "NoProgress", "Progress"]

log = logging.getLogger("selfinstruct")


class NoProgress(SelfInstructError):
    """The servers answer, but nothing they send becomes a task."""


class Progress:
    """A tqdm bar of accepted/target with the numbers a person watching it wants."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=min(initial, total), unit="task", dynamic_ncols=True, smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
            )  # fmt: skip

    def update(self, added: int, postfix: str) -> None:
        if self.bar is not None:
            if added:
                self.bar.update(added)
            self.bar.set_postfix_str(postfix, refresh=added == 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Engine:
    """One session of generation over an open store. ``run()`` returns when the target is reached."""

    def __init__(
        self,
        *,
        config: RunConfig,
        seeds: list[SeedTask],
        store: RunStore,
        pool: EndpointPool,
        judge: Judge | JudgeWorker,
        settings: str,
        progress: Progress,
        save: Callable[[], None],
        texts: PromptTexts = DEFAULT_TEXTS,
    ) -> None:
        assert config.api is not None and config.max_tokens is not None, "pass a resolved() config"
        self.config = config
        self.seeds = seeds
        self.store = store
        self.pool = pool
        self.judge = judge
        self.settings = settings
        self.progress = progress
        self.save = save
        self.texts = texts
        self.target = config.num_instructions
        self.added = 0
        self.session_candidates = 0
        self.done = asyncio.Event()
        self._outstanding = 0  # requests sent whose answer is not applied yet
        self._session_answers = 0
        self._answered = asyncio.Event()
        self._last_save = time.monotonic()
        self._last_accept = time.monotonic()
        self._fruitless: Counter[str] = Counter()  # rejection reasons since the last accepted task
        self._fruitless_answers = 0
        self._last_fruitless_text = ""
        self._warned_untokenizable = False

    # -- requests -------------------------------------------------------------------------------

    def demos(self, request_number: int) -> list[Candidate]:
        """Demonstrations for one request, seeded by its number so a resumed run samples the same."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{request_number}") if cfg.seed is not None else random.Random()
        accepted = self.store.accepted
        machine = min(cfg.demos_from_machine, len(accepted))
        picked_machine = [Candidate(r.instruction, r.input, r.output) for r in rng.sample(accepted, machine)]
        picked_seeds: list[Candidate] = []
        for task in rng.sample(self.seeds, min(len(self.seeds), cfg.demos_per_prompt - machine)):
            inp, out = rng.choice(task.instances)
            picked_seeds.append(Candidate(task.instruction, inp, out))
        demos = picked_seeds + picked_machine
        rng.shuffle(demos)
        return demos

    def build_request(self, request_number: int) -> tuple[GenerationRequest, int]:
        """The request and the number of the first new task in its list."""
        cfg = self.config
        demos = self.demos(request_number)
        prompt: str | list[dict[str, str]]
        if cfg.api_name == "chat":
            prompt = build_chat_messages(demos, tasks_per_prompt=cfg.list_length, texts=self.texts)
        else:
            prompt = build_completion_prompt(demos, tasks_per_prompt=cfg.list_length, texts=self.texts)
        temperature, top_p = cfg.sampling
        request = GenerationRequest(
            api=cfg.api_name,
            prompt=prompt,
            max_tokens=cfg.answer_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=tuple(stop_sequences(cfg.list_length)),
        )
        return request, len(demos) + 1

    async def _until_needed(self) -> None:
        """Hold a request back while the answers already on their way should reach the target.

        Near the end, the requests in flight would otherwise be answered only to be thrown away.
        The margin (20 % and one answer) covers weak answers; if they still fall short, the gate
        opens again as they come in.
        """
        while not self.done.is_set() and self._session_answers >= 5:
            per_answer = self.added / self._session_answers
            remaining = self.target - len(self.store.accepted)
            if self._outstanding * per_answer < 1.2 * remaining + per_answer:
                return
            self._answered.clear()
            await self._answered.wait()

    async def _worker(self) -> None:
        while not self.done.is_set():
            await self._until_needed()
            if self.done.is_set():  # woken because the target was reached
                return
            number = self.store.new_request_number()
            request, first_number = self.build_request(number)
            self._outstanding += 1  # until its verdict is committed: it may still bring tasks
            try:
                result = await self.pool.generate(request)
                verdict = None
                if isinstance(self.judge, JudgeWorker) and isinstance(result, Completion):
                    # Judged on the worker's core; committed as it arrives (the worker keeps the order).
                    verdict = await self.judge.judge(
                        result.text, finish_reason=result.finish_reason, continuation_number=self._continuation(first_number)
                    )
                self.apply(number, first_number, result, verdict)
            finally:
                self._outstanding -= 1
                self._answered.set()

    async def _watchdog(self) -> None:
        """Stop when nothing has been accepted for give_up_after seconds, whatever the servers say."""
        limit = self.config.give_up_after
        while not self.done.is_set():
            idle = time.monotonic() - self._last_accept
            if idle > limit:
                errors: Counter[str] = Counter()
                for endpoint in self.pool.stats().values():
                    errors.update(endpoint.get("errors", {}))
                seen = ", ".join(f"{k} {v}" for k, v in errors.most_common(4)) or "none"
                if not self._session_answers:
                    raise NoProgress(
                        f"no model server has answered for {idle:.0f} s (errors: {seen}); check the server, "
                        "then rerun the same command to resume"
                    )
                raise NoProgress(
                    f"no task accepted for {idle:.0f} s (answers since the last task: {self._fruitless_summary()}; "
                    f"request errors: {seen}); check the server and the model, then rerun the same command to resume"
                )
            await asyncio.sleep(min(1.0, limit - idle + 0.01))

    async def run(self) -> None:
        if self.complete():
            self.done.set()
            return
        tasks = [asyncio.create_task(self._worker()) for _ in range(self.pool.max_capacity())]
        tasks.append(asyncio.create_task(self._watchdog()))
        finished = asyncio.create_task(self.done.wait())
        try:
            pending: set[asyncio.Task[Any]] = {finished, *tasks}
            while not finished.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not finished and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
        finally:
            for task in (*tasks, finished):
                task.cancel()
            await asyncio.gather(*tasks, finished, return_exceptions=True)

    # -- answers --------------------------------------------------------------------------------

    def _continuation(self, first_number: int) -> int | None:
        """The number a completions answer goes on from (a chat answer numbers its own list)."""
        return first_number if self.config.api == "completions" else None

    def apply(
        self, number: int, first_number: int, result: Completion | RequestFailed, verdict: Verdict | None = None
    ) -> None:
        """Judge one answer (unless the judging process already did: ``verdict``) and commit its
        records. Synchronous: nothing interleaves."""
        if isinstance(result, RequestFailed):
            self._commit_failure(number, result)
            self._after_commit(0)
            return
        if verdict is None:
            assert isinstance(self.judge, Judge), "the judging process's verdicts come with the answer"
            verdict = self.judge.judge(
                result.text,
                finish_reason=result.finish_reason,
                continuation_number=self._continuation(first_number),
                room=max(0, self.target - len(self.store.accepted)),
            )
        accepted = self._commit_verdict(number, result, verdict)
        self._after_commit(len(accepted))

    def _commit_failure(self, number: int, result: RequestFailed, *, stage: str | None = None, task_id: str | None = None) -> None:
        self.store.commit(
            RequestRecord(
                request=number, outcome="failed", endpoint=result.endpoint or "", error=result.kind,
                detail=result.message, created=now_utc(), settings=self.settings, stage=stage, task_id=task_id,
            )  # fmt: skip
        )
        if result.kind == "malformed_answer" and stage in (None, "instruction"):
            # A 200 with nothing usable in it is an answer that gave nothing, not a network fault.
            self._count_fruitless([result.kind], result.message)

    def _commit_verdict(
        self, number: int, result: Completion, verdict: Verdict, *, stage: str | None = None
    ) -> list[AcceptedTask]:
        """Write one answer's request line, rejections and accepted tasks; return the accepted."""
        now = now_utc()
        endpoint = redact_url(result.endpoint)
        accepted = [
            AcceptedTask(
                id=d.id, instruction=d.candidate.instruction, input=d.candidate.input, output=d.candidate.output,
                request=number, most_similar_instruction=d.nearest, rouge_l=d.rouge_l, nearest_id=d.nearest_id,
                model=self.pool.model or "", endpoint=endpoint, finish_reason=result.finish_reason, created=now,
                settings=self.settings,
            )  # fmt: skip
            for d in verdict.accepted
        ]
        rejected = [
            Rejection(
                reason=d.reason, detail=d.detail, instruction=d.candidate.instruction, input=d.candidate.input,
                output=d.candidate.output, request=number, rouge_l=d.rouge_l, most_similar_instruction=d.nearest,
                nearest_id=d.nearest_id, created=now, settings=self.settings, stage=stage,
            )  # fmt: skip
            for d in verdict.rejected
        ]
        self.store.commit(
            RequestRecord(
                request=number, outcome="answered", endpoint=endpoint, finish_reason=result.finish_reason,
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                candidates=verdict.parsed, incomplete=verdict.incomplete, surplus=verdict.surplus,
                latency=result.latency, created=now, settings=self.settings, stage=stage,
            ),  # fmt: skip
            accepted,
            rejected,
        )
        self._session_answers += 1
        self.session_candidates += len(verdict.decisions) - sum(1 for d in verdict.rejected if d.reason == "unparseable")
        self._track_liveness(verdict, result)
        return accepted

    def complete(self) -> bool:
        """Whether the session's work is done (the target reached)."""
        return len(self.store.accepted) >= self.target

    def _after_commit(self, added: int) -> None:
        self.added += added
        if self.complete():
            self.done.set()
        self.progress.update(added, self._postfix())
        if time.monotonic() - self._last_save > 1.0:
            self.save()
            self._last_save = time.monotonic()

    def _track_liveness(self, verdict: Verdict, answer: Completion) -> None:
        if verdict.untokenizable and not self._warned_untokenizable:
            self._warned_untokenizable = True
            log.warning(
                "some instructions have no words the ROUGE tokenizer keeps (non-English text?); near-duplicates "
                "among them are caught only when identical. Use --tokenizer unicode for non-English data"
            )
        if any(isinstance(d, Accept) for d in verdict.decisions):
            self._last_accept = time.monotonic()
            self._fruitless.clear()
            self._fruitless_answers = 0
            return
        if verdict.surplus or self.done.is_set():
            return
        reasons = [d.reason for d in verdict.rejected]
        if answer.finish_reason and answer.finish_reason != "stop":
            reasons.append(f"finish_reason {answer.finish_reason}")
        self._count_fruitless(reasons, answer.text)

    def _count_fruitless(self, reasons: list[str], text: str) -> None:
        self._fruitless_answers += 1
        self._fruitless.update(reasons)
        self._last_fruitless_text = text
        if self._fruitless_answers >= self.config.max_fruitless_answers:
            sample = " ".join(self._last_fruitless_text.split())[:160]
            raise NoProgress(
                f"the last {self._fruitless_answers} answers gave no usable task ({self._fruitless_summary()}); "
                f"the last one began: {sample!r}. The server answers, but not with new tasks in the expected "
                "format: try the other --api (chat or completions), a larger --max-tokens or another model, and "
                f"see {self.store.path('rejected.jsonl')}"
            )

    def _fruitless_summary(self) -> str:
        if not self._fruitless:
            return "no answers were judged"
        return ", ".join(f"{k} {v}" for k, v in self._fruitless.most_common(4))

    def _postfix(self) -> str:
        c = self.store.counters
        rate = self.added / max(1, self.session_candidates)
        errors = sum(e.get("failures", 0) for e in self.pool.stats().values())
        top = " ".join(f"{k}:{v}" for k, v in c.rejected.most_common(3))
        return (
            f"acc {rate:.0%} req {c.requests} err {errors} in-flight {self.pool.in_flight()} | {top}"
        )
