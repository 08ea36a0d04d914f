"""The decision that defines the dataset: one model answer in, a verdict on each of its tasks out.

Pure and synchronous: no I/O, no ``await``. The engine calls :meth:`Judge.judge` and hands the
verdict to the store in one synchronous step, so no other answer can be judged in between and
two near-duplicates can never both get in, whatever the number of requests in flight.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from .filters import FilterConfig, check_candidate
from .parse import parse_answer
from .records import AcceptedTask, Candidate, SeedTask
from .similarity import RougeLIndex

__all__ = ["Accept", "Judge", "Reject", "Verdict"]


@dataclass(frozen=True)
class Accept:
    candidate: Candidate
    id: str
    rouge_l: float
    nearest: str  # the most similar instruction already in the pool ("" when the pool is empty)
    nearest_id: str | None
    # defer_nearest: what the decision's search verified, so that fill_nearest need not search again
    runner_up: tuple[float, int] | None = field(default=None, compare=False, repr=False)


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


_fold_hash = hash  # a module name, so that a test can make every text clash


def _task_id(number: int) -> str:
    return f"task-{number:06d}"


# rouge_l of an Accept whose nearest another process has yet to fill in (never written).
_PENDING = -1.0


def _exact_key(text: str) -> str:
    """Case and spacing folded: catches copies the tokenizer cannot see (text it reduces to nothing)."""
    return " ".join(text.casefold().split())


class _TaskIds:
    """Task ids by pool position, compactly: a canonical id ("task-000123") is kept as its number
    (8 bytes instead of a 60-byte string each: tens of MB at a million tasks), any other as is."""

    def __init__(self) -> None:
        self._numbers = array("q")
        self._others: dict[int, str] = {}  # seeds, hand-made ids

    def __len__(self) -> int:
        return len(self._numbers)

    def append(self, id_: str) -> None:
        # Canonical: "task-" and ASCII digits, six of them or more without a leading zero (what
        # _task_id writes); string tests, cheaper than the regular expression on every accept.
        digits = id_[5:]
        if (id_.startswith("task-") and digits.isascii() and digits.isdigit()
                and (len(digits) == 6 or (len(digits) > 6 and digits[0] != "0"))):  # fmt: skip
            self._numbers.append(int(digits))
        else:
            self._others[len(self._numbers)] = id_
            self._numbers.append(-1)

    def extend(self, ids: Iterable[str]) -> None:
        for id_ in ids:
            self.append(id_)

    def __getitem__(self, position: int) -> str:
        number = self._numbers[position]
        return self._others[position] if number < 0 else _task_id(number)


class _ExactCopies:
    """Folded instruction -> its first position in the pool, keyed by the folded text's hash (the
    texts themselves are in the index): a third of the memory of a dict of strings. Exact: a hit is
    checked against the text, and the rare text whose hash another already holds is kept whole."""

    def __init__(self, text_at: Callable[[int], str]) -> None:
        self._text_at = text_at
        self._by_hash: dict[int, int] = {}
        self._clashes: dict[str, int] = {}

    def _holds(self, position: int, key: str) -> bool:
        return _exact_key(self._text_at(position)) == key

    def add(self, text: str, position: int) -> None:
        key = _exact_key(text)
        first = self._by_hash.setdefault(_fold_hash(key), position)
        if first != position and not self._holds(first, key):
            self._clashes.setdefault(key, position)

    def find(self, key: str) -> int | None:
        position = self._by_hash.get(_fold_hash(key))
        if position is not None and self._holds(position, key):
            return position
        return self._clashes.get(key)


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
        # When another process fills in the nearest of accepted tasks (see fill_nearest), the
        # decision only asks whether anything scores above the threshold: a far cheaper search.
        self.defer_nearest = False
        # With defer_nearest: decide as if it were off (the other process has fallen behind), so
        # the verdict comes complete; fill_nearest then keeps it.
        self.nearest_here = False
        if threshold < 1.0:
            # The decision index answers "anything above the threshold?" and speeds up the exact
            # nearest too; built now, it is kept up to date as the pool grows.
            self.index.prepare(threshold)
        self._ids = _TaskIds()
        self._exact = _ExactCopies(self.index.text)
        self.admit_many([s.instruction for s in seeds] + [a.instruction for a in accepted],
                        [s.id for s in seeds] + [a.id for a in accepted])  # fmt: skip
        self._next_number = next_task_number

    def admit_many(self, instructions: Sequence[str], ids: Sequence[str]) -> None:
        """Put accepted tasks into the pool in one bulk build (a resume loads every one of them)."""
        first = len(self._ids)
        self.index.extend(instructions)
        self._ids.extend(ids)
        for position, text in enumerate(instructions, first):
            self._exact.add(text, position)

    def _admit(self, instruction: str, id_: str) -> None:
        position = self.index.add(instruction)
        self._ids.append(id_)
        self._exact.add(instruction, position)

    def _new_id(self) -> str:
        number = self._next_number
        self._next_number += 1
        return _task_id(number)

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
        copy_of = self._exact.find(key)
        if copy_of is not None:
            return Reject(
                candidate, "near_duplicate", "the same instruction is already in the pool", 1.0,
                self.index.text(copy_of), self._ids[copy_of],
            )  # fmt: skip
        if verdict is not None and self.tokenizer == "rouge" and not self.index.tokens(candidate.instruction):
            verdict.untokenizable += 1
        deferred = self.defer_nearest and not self.nearest_here
        if deferred:
            # Only "is anything above the threshold?": a near-duplicate still gets its exact nearest.
            found = self.index.max_above(candidate.instruction, self.threshold)
            score, nearest = found if found is not None else (0.0, None)
        else:
            score, nearest = self.index.nearest(candidate.instruction)
        nearest_text, nearest_id = self._named(nearest)
        if score > self.threshold:
            return Reject(
                candidate, "near_duplicate", f"ROUGE-L {score:.3f} > {self.threshold}", score, nearest_text, nearest_id
            )
        # Taken before the task joins the pool: it describes the decision's search of the pool before.
        runner_up = self.index.runner_up(candidate.instruction) if deferred else None
        id_ = self._new_id()
        self._admit(candidate.instruction, id_)
        if deferred:
            return Accept(candidate, id_, _PENDING, "", None, runner_up)
        return Accept(candidate, id_, score, nearest_text, nearest_id)

    def _named(self, position: int | None) -> tuple[str, str | None]:
        if position is None:
            return "", None
        return self.index.text(position), self._ids[position]

    def fill_nearest(self, verdict: Verdict) -> Verdict:
        """The verdict of a ``defer_nearest`` judge with each accepted task's exact nearest filled in.

        This judge's pool must equal the deciding judge's before that verdict: each accepted
        task is scored against the pool, then joins it, in order, as the decider did.
        """
        decisions: list[Accept | Reject] = []
        for decision in verdict.decisions:
            if isinstance(decision, Accept):
                if decision.rouge_l == _PENDING:  # else the decider filled it in
                    score, nearest = self.index.nearest(decision.candidate.instruction, runner_up=decision.runner_up)
                    nearest_text, nearest_id = self._named(nearest)
                    decision = replace(decision, rouge_l=score, nearest=nearest_text, nearest_id=nearest_id,
                                       runner_up=None)  # fmt: skip
                self._admit(decision.candidate.instruction, decision.id)
            decisions.append(decision)
        return replace(verdict, decisions=decisions)
