"""The decision that defines the dataset: one model answer in, a verdict on each of its tasks out.

Pure and synchronous: no I/O, no ``await``. The engine calls :meth:`Judge.judge` and hands the
verdict to the store in one synchronous step, so no other answer can be judged in between and
two near-duplicates can never both get in, whatever the number of requests in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .filters import FilterConfig, check_candidate
from .parse import parse_answer
from .records import AcceptedTask, Candidate, SeedTask
from .similarity import RougeLIndex, tokenize

__all__ = ["Accept", "Judge", "Reject", "Verdict"]


@dataclass(frozen=True)
class Accept:
    candidate: Candidate
    id: str
    rouge_l: float
    nearest: str  # the most similar instruction already in the pool ("" when the pool is empty)
    nearest_id: str | None


@dataclass(frozen=True)
class Reject:
    candidate: Candidate
    reason: str
    detail: str
    rouge_l: float | None = None
    nearest: str | None = None
    nearest_id: str | None = None


@dataclass
class Verdict:
    """What one answer gave: decisions in answer order, and what was not judged."""

    decisions: list[Accept | Reject] = field(default_factory=list)
    parsed: int = 0  # tasks the parser found
    incomplete: int = 0  # a last task cut by the token limit (dropped by the parser)
    surplus: int = 0  # tasks left unjudged because the target was reached
    untokenizable: int = 0  # instructions the ROUGE tokenizer reduced to nothing

    @property
    def accepted(self) -> list[Accept]:
        return [d for d in self.decisions if isinstance(d, Accept)]

    @property
    def rejected(self) -> list[Reject]:
        return [d for d in self.decisions if isinstance(d, Reject)]


def _exact_key(text: str) -> str:
    """Case and spacing folded: catches copies the tokenizer cannot see (text it reduces to nothing)."""
    return " ".join(text.casefold().split())


class Judge:
    """Filters and the near-duplicate pool over the seeds and every accepted task.

    ``next_task_number`` continues the ids on disk; ids are assigned here because a task's id
    must be known when it enters the pool (the nearest neighbour of later tasks names it).
    """

    def __init__(
        self,
        *,
        filters: FilterConfig,
        threshold: float,
        tokenizer: str,
        seeds: Sequence[SeedTask],
        accepted: Sequence[AcceptedTask],
        next_task_number: int,
    ) -> None:
        self.filters = filters
        self.threshold = threshold
        self.tokenizer = tokenizer
        self.index = RougeLIndex(tokenizer=tokenizer)
        self._ids: list[str] = []
        self._exact: dict[str, int] = {}  # folded instruction -> its position in the pool
        for text, id_ in [(s.instruction, s.id) for s in seeds] + [(a.instruction, a.id) for a in accepted]:
            self._admit(text, id_)
        self._next_number = next_task_number

    def admit(self, instruction: str, id_: str) -> None:
        """Put an accepted task into the pool (tasks read from disk, in file order)."""
        self._admit(instruction, id_)

    def _admit(self, instruction: str, id_: str) -> None:
        position = self.index.add(instruction)
        self._ids.append(id_)
        self._exact.setdefault(_exact_key(instruction), position)

    def _new_id(self) -> str:
        number = self._next_number
        self._next_number += 1
        return f"task-{number:06d}"

    @property
    def next_task_number(self) -> int:
        return self._next_number

    @next_task_number.setter
    def next_task_number(self, number: int) -> None:
        self._next_number = number

    def judge(
        self,
        text: str,
        *,
        finish_reason: str | None,
        continuation_number: int | None,
        room: int,
    ) -> Verdict:
        """Parse ``text`` and decide each task; at most ``room`` are accepted (the rest is surplus).

        An accepted task joins the pool at once, so a near-copy later in the same answer is
        rejected against it.
        """
        parsed = parse_answer(text, continuation_number=continuation_number, finish_reason=finish_reason)
        verdict = Verdict(parsed=len(parsed.candidates), incomplete=parsed.dropped_incomplete)
        for candidate, reason, detail in parsed.rejected:
            verdict.decisions.append(Reject(candidate, reason, detail))
        if not parsed.candidates and not verdict.decisions:
            verdict.decisions.append(
                Reject(
                    Candidate(instruction="", output=text[:2000]),
                    "unparseable",
                    f"no task found in the answer (finish_reason {finish_reason})",
                )
            )
            return verdict
        self.judge_candidates(parsed.candidates, room, verdict)
        return verdict

    def judge_candidates(self, candidates: Sequence[Candidate], room: int, verdict: Verdict | None = None) -> Verdict:
        """Decide parsed candidates in order; at most ``room`` are accepted, the rest is surplus."""
        verdict = verdict if verdict is not None else Verdict(parsed=len(candidates))
        accepted = 0
        for candidate in candidates:
            if accepted >= room:
                verdict.surplus += 1
                continue
            decision = self.decide(candidate, verdict)
            verdict.decisions.append(decision)
            if isinstance(decision, Accept):
                accepted += 1
        return verdict

    def decide(self, candidate: Candidate, verdict: Verdict | None = None) -> Accept | Reject:
        """Filters first (cheap), then exact copies, then ROUGE-L against the pool."""
        failed = check_candidate(candidate, self.filters)
        if failed:
            return Reject(candidate, failed[0], failed[1])
        key = _exact_key(candidate.instruction)
        copy_of = self._exact.get(key)
        if copy_of is not None:
            return Reject(
                candidate, "near_duplicate", "the same instruction is already in the pool", 1.0,
                self.index.text(copy_of), self._ids[copy_of],
            )  # fmt: skip
        if verdict is not None and self.tokenizer == "rouge" and not tokenize(candidate.instruction, "rouge"):
            verdict.untokenizable += 1
        score, nearest = self.index.nearest(candidate.instruction)
        nearest_text = self.index.text(nearest) if nearest is not None else ""
        nearest_id = self._ids[nearest] if nearest is not None else None
        if score > self.threshold:
            return Reject(
                candidate, "near_duplicate", f"ROUGE-L {score:.3f} > {self.threshold}", score, nearest_text, nearest_id
            )
        id_ = self._new_id()
        self._admit(candidate.instruction, id_)
        return Accept(candidate, id_, score, nearest_text, nearest_id)
