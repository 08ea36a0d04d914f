"""``--method self-instruct``: instructions, then "is it classification?", then instances, streaming.

Every accepted instruction flows on at once: it is queued for classification, then for instance
generation, and ends as one line of ``tasks.jsonl`` (instances, or an empty list and the reason).
All stages share the endpoints; workers take the latest stage first, so work in progress drains
before new instructions are asked for. The instruction stage stops at the target; the session is
done when every accepted instruction has its task line.

On resume the queues are recomputed from the files: accepted instructions without a task line are
classified again (a Yes/No costs a few tokens; it is not worth a file of its own).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque

from .engine import Engine
from .judge import Judge, Reject
from .llm import Completion, GenerationRequest, RequestFailed
from .prompts import (
    si_classification_instances_prompt,
    si_classify_prompt,
    si_generation_instances_prompt,
    si_instances_stops,
    si_list_prompt,
    si_list_stops,
)
from .records import AcceptedTask, Candidate, Rejection, RequestRecord, SelfInstructTask
from .stages import filter_instances, parse_classification, parse_instances, parse_instruction_list
from .store import now_utc

__all__ = ["SelfInstructEngine"]

# A task whose classification or instance request keeps failing gets a reason, not a guess.
MAX_STAGE_ATTEMPTS = 3
CLASSIFY_DEMOS_PER_LABEL = 6
INSTANCE_DEMOS = {True: 2, False: 3}  # seed tasks shown per stage-3 prompt (classification or not)


class SelfInstructEngine(Engine):
    """The Self-Instruct pipeline over the same store, pool, judge and liveness checks."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        pending = [a for a in self.store.accepted if a.id not in self.store.tasks]
        self._classify: deque[AcceptedTask] = deque(pending)
        self._instances: deque[tuple[AcceptedTask, bool]] = deque()
        self._attempts: Counter[str] = Counter()
        self._busy = 0  # stage 2 and 3 requests in flight
        self._stage1_in_flight = 0
        self._changed = asyncio.Event()
        ordered = sorted(self.seeds, key=lambda t: t.id)
        yes = [(t.instruction, True) for t in ordered if t.is_classification][:CLASSIFY_DEMOS_PER_LABEL]
        no = [(t.instruction, False) for t in ordered if not t.is_classification][:CLASSIFY_DEMOS_PER_LABEL]
        self._classify_demos = [d for pair in zip(no, yes) for d in pair] + no[len(yes):] + yes[len(no):]
        self._seed_pools = {
            True: [t for t in self.seeds if t.is_classification and t.instances],
            False: [t for t in self.seeds if not t.is_classification and t.instances],
        }

    # -- scheduling -------------------------------------------------------------------------------

    def complete(self) -> bool:
        return (
            len(self.store.accepted) >= self.target
            and not self._classify
            and not self._instances
            and self._busy == 0
            and self._stage1_in_flight == 0
        )

    def _stage1_wanted(self) -> bool:
        remaining = self.target - len(self.store.accepted)
        if remaining <= 0:
            return False
        if self._session_answers < 5:
            return True
        per_answer = max(self.added / self._session_answers, 1e-9)
        # As for alpaca: hold back while the lists in flight should already cover the target.
        return self._stage1_in_flight * per_answer < 1.2 * remaining + per_answer

    async def _worker(self) -> None:
        while not self.done.is_set():
            if self._instances:
                task, clf = self._instances.popleft()
                await self._run_stage(self._instances_request(task, clf), task, clf)
            elif self._classify:
                task = self._classify.popleft()
                await self._run_stage(self._classify_request(task), task, None)
            elif self._stage1_wanted():
                await self._run_instructions()
            elif self.complete():
                self.done.set()
                return
            else:
                self._changed.clear()
                await self._changed.wait()

    async def _run_instructions(self) -> None:
        number = self.store.new_request_number()
        request, first_number = self.build_request(number)
        self._stage1_in_flight += 1
        try:
            result = await self.pool.generate(request)
        finally:
            self._stage1_in_flight -= 1
            self._changed.set()
        self._apply_instructions(number, first_number, result)

    async def _run_stage(self, request: GenerationRequest, task: AcceptedTask, clf: bool | None) -> None:
        number = self.store.new_request_number()
        self._busy += 1
        try:
            result = await self.pool.generate(request)
        except BaseException:
            # Cancelled (stop) or failed: the task goes back so nothing is lost in this session.
            (self._classify.appendleft(task) if clf is None else self._instances.appendleft((task, clf)))
            raise
        finally:
            self._busy -= 1
            self._changed.set()
        if clf is None:
            self._apply_classification(number, task, result)
        else:
            self._apply_instances(number, task, clf, result)

    # -- requests ---------------------------------------------------------------------------------

    def build_request(self, request_number: int) -> tuple[GenerationRequest, int]:
        cfg = self.config
        demos = [d.instruction for d in self.demos(request_number)]
        total = cfg.list_length
        temperature, top_p = cfg.sampling
        request = GenerationRequest(
            api=cfg.api_name,
            prompt=self._as_api(si_list_prompt(demos, total=total, chat=cfg.api_name == "chat", texts=self.texts)),
            max_tokens=cfg.answer_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=tuple(si_list_stops(total)),
        )
        return request, len(demos) + 1

    def _as_api(self, text: str) -> str | list[dict[str, str]]:
        return [{"role": "user", "content": text}] if self.config.api == "chat" else text

    def _classify_request(self, task: AcceptedTask) -> GenerationRequest:
        chat = self.config.api == "chat"
        return GenerationRequest(
            api=self.config.api_name,
            prompt=self._as_api(si_classify_prompt(self._classify_demos, task.instruction, chat=chat, texts=self.texts)),
            max_tokens=4,
            temperature=0.0,
            top_p=1.0,
            stop=("\n",),
        )

    def _instances_request(self, task: AcceptedTask, clf: bool) -> GenerationRequest:
        chat = self.config.api == "chat"
        pool = self._seed_pools[clf]
        rng = random.Random(f"{self.config.seed}:{task.id}") if self.config.seed is not None else random.Random()
        demos = rng.sample(pool, min(len(pool), INSTANCE_DEMOS[clf]))
        if clf:
            text = si_classification_instances_prompt(demos, task.instruction, chat=chat, texts=self.texts)
        else:
            text = si_generation_instances_prompt(
                demos, task.instruction, max_instances=self.config.max_instances, chat=chat, texts=self.texts
            )
        temperature, top_p = self.config.sampling
        return GenerationRequest(
            api=self.config.api_name,
            prompt=self._as_api(text),
            max_tokens=min(self.config.answer_tokens, 1024),
            temperature=temperature,
            top_p=top_p,
            stop=tuple(si_instances_stops(self.config.max_instances, clf)),
        )

    # -- answers ----------------------------------------------------------------------------------

    def _apply_instructions(self, number: int, first_number: int, result: Completion | RequestFailed) -> None:
        if isinstance(result, RequestFailed):
            self._commit_failure(number, result, stage="instruction")
            self._after_commit(0)
            return
        candidates, cut = parse_instruction_list(
            result.text, continuation_number=self._continuation(first_number), finish_reason=result.finish_reason
        )
        assert isinstance(self.judge, Judge), "self-instruct judges on the event loop"
        verdict = self.judge.judge_candidates(candidates, max(0, self.target - len(self.store.accepted)))
        verdict.incomplete = cut
        if not candidates:
            verdict.decisions.append(
                Reject(Candidate("", output=result.text[:2000]), "unparseable",
                       f"no numbered instruction in the answer (finish_reason {result.finish_reason})")
            )  # fmt: skip
        accepted = self._commit_verdict(number, result, verdict, stage="instruction")
        self._classify.extend(accepted)
        self._after_commit(len(accepted))

    def _retry_or_finish(self, task: AcceptedTask, clf: bool | None, reason: str) -> None:
        self._attempts[task.id] += 1
        if self._attempts[task.id] < MAX_STAGE_ATTEMPTS:
            (self._classify.append(task) if clf is None else self._instances.append((task, clf)))
        else:
            self._finish(task, clf, (), (), reason, [], None)

    def _apply_classification(self, number: int, task: AcceptedTask, result: Completion | RequestFailed) -> None:
        if isinstance(result, RequestFailed):
            self._commit_failure(number, result, stage="classification", task_id=task.id)
            self._retry_or_finish(task, None, "classification_failed")
            self._after_commit(0)
            return
        decision = parse_classification(result.text)
        self._commit_answer(number, result, "classification", task.id, "" if decision is not None else "unclear answer")
        if decision is None:
            self._retry_or_finish(task, None, "classification_unclear")  # never taken as "No"
        else:
            self._attempts.pop(task.id, None)
            self._instances.append((task, decision))
        self._after_commit(0)

    def _apply_instances(self, number: int, task: AcceptedTask, clf: bool, result: Completion | RequestFailed) -> None:
        if isinstance(result, RequestFailed):
            self._commit_failure(number, result, stage="instances", task_id=task.id)
            self._retry_or_finish(task, clf, "instances_failed")
            self._after_commit(0)
            return
        parsed = parse_instances(result.text, classification=clf, finish_reason=result.finish_reason)
        verdict = filter_instances(
            parsed.instances, labels=parsed.labels, classification=clf, max_instances=self.config.max_instances
        )
        if verdict.task_reason == "no_instances_found" and self._attempts[task.id] + 1 < MAX_STAGE_ATTEMPTS:
            self._commit_answer(number, result, "instances", task.id, "no instance found")
            self._retry_or_finish(task, clf, "no_instances_found")
            self._after_commit(0)
            return
        request = self._answer_record(number, result, "instances", task.id, "")
        self._finish(task, clf, tuple(verdict.kept), parsed.labels, verdict.task_reason, verdict.rejected, request)
        self._after_commit(0)

    def _answer_record(self, number: int, result: Completion, stage: str, task_id: str, detail: str) -> RequestRecord:
        return RequestRecord(
            request=number, outcome="answered", endpoint=self._endpoint(result), finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens, latency=result.latency,
            created=now_utc(), settings=self.settings, stage=stage, task_id=task_id, detail=detail,
        )  # fmt: skip

    def _commit_answer(self, number: int, result: Completion, stage: str, task_id: str, detail: str) -> None:
        self.store.commit(self._answer_record(number, result, stage, task_id, detail))

    @staticmethod
    def _endpoint(result: Completion) -> str:
        from .llm import redact_url

        return redact_url(result.endpoint)

    def _finish(
        self,
        task: AcceptedTask,
        clf: bool | None,
        instances: tuple[tuple[str, str], ...],
        labels: tuple[str, ...],
        reason: str | None,
        rejected: list[tuple[tuple[str, str], str]],
        request: RequestRecord | None,
    ) -> None:
        """Write the task's line: its instances, or none and why. Exactly once per instruction."""
        now = now_utc()
        record = SelfInstructTask(
            id=task.id, instruction=task.instruction, is_classification=clf, instances=instances, labels=labels,
            reason=reason, most_similar_instruction=task.most_similar_instruction, rouge_l=task.rouge_l,
            nearest_id=task.nearest_id, model=self.pool.model or "", created=now, settings=self.settings,
        )  # fmt: skip
        rejections = [
            Rejection(
                reason=why, detail="", instruction=task.instruction, input=inp, output=out,
                request=request.request if request else -1, created=now, settings=self.settings,
                stage="instances", task_id=task.id,
            )  # fmt: skip
            for (inp, out), why in rejected
        ]
        self.store.commit(request, rejected=rejections, tasks=[record])
        self._attempts.pop(task.id, None)
        self._last_accept = time.monotonic()  # a finished task is progress, for the watchdog

    def _postfix(self) -> str:
        tasks = self.store.tasks
        instances = sum(len(t.instances) for t in tasks.values())
        return (
            f"tasks {len(tasks)} inst {instances} queued {len(self._classify) + len(self._instances)} | "
            + super()._postfix()
        )
