"""Typed records: what flows between the stages and what the store writes, one JSON object a line.

The store owns the on-disk shape: every record here has ``to_json()`` and a checking
``from_json()``, and nothing else in the package builds or parses those dicts by hand.

Schema versions: 1 was written by selfinstruct 0.1.0 (no ``settings``/``nearest_id`` fields,
no ``requests.jsonl``); 2 adds them. Both are read; a newer one is refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "SCHEMA_VERSION",
    "AcceptedTask",
    "Candidate",
    "CHECKS",
    "Counters",
    "Judgment",
    "RecordError",
    "Rejection",
    "RequestRecord",
    "SeedTask",
    "SelfInstructTask",
    "Status",
]

SCHEMA_VERSION = 2

Status = Literal["done", "interrupted", "failed", "running"]


class RecordError(ValueError):
    """A line holds JSON that is not a record of the expected kind (the message says why)."""


@dataclass(frozen=True)
class SeedTask:
    """One human-written task (Self-Instruct schema); Alpaca rows load with one instance."""

    id: str
    name: str
    instruction: str
    instances: tuple[tuple[str, str], ...]  # (input, output) pairs
    is_classification: bool = False

    @property
    def input(self) -> str:
        return self.instances[0][0] if self.instances else ""

    @property
    def output(self) -> str:
        return self.instances[0][1] if self.instances else ""


@dataclass(frozen=True)
class Candidate:
    """A task parsed from a model answer, not yet judged."""

    instruction: str
    input: str = ""
    output: str = ""
    meta: dict[str, object] = field(default_factory=dict, compare=False)


# -- field checks -------------------------------------------------------------------------------


def _str(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} should be a string, found {type(value).__name__}")
    return value


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"field {key!r} should be a string or null, found {type(value).__name__}")
    return value


def _int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"field {key!r} should be a whole number, found {value!r}")
    return value


def _opt_float(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"field {key!r} should be a number, found {value!r}")
    return float(value)


def _schema(data: dict[str, Any]) -> int:
    version = data.get("schema", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecordError(f"field 'schema' should be a positive whole number, found {version!r}")
    if version > SCHEMA_VERSION:
        raise RecordError(
            f"written by a newer selfinstruct (record schema {version}, this version reads up to "
            f"{SCHEMA_VERSION}); upgrade selfinstruct"
        )
    return version


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptedTask:
    """One line of ``instructions.jsonl``: a task that passed every filter."""

    id: str
    instruction: str
    input: str
    output: str
    request: int
    most_similar_instruction: str = ""
    rouge_l: float = 0.0
    nearest_id: str | None = None  # id of the seed or task behind most_similar_instruction
    model: str = ""
    endpoint: str = ""
    finish_reason: str | None = None
    created: str = ""
    settings: str | None = None  # fingerprint of the generation settings it was made with
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema": self.schema,
                "id": self.id,
                "instruction": self.instruction,
                "input": self.input,
                "output": self.output,
                "most_similar_instruction": self.most_similar_instruction,
                "rouge_l": self.rouge_l,
                "nearest_id": self.nearest_id,
                "request": self.request,
                "model": self.model,
                "endpoint": self.endpoint,
                "finish_reason": self.finish_reason,
                "created": self.created,
                "settings": self.settings,
            }
        )

    @classmethod
    def from_json(cls, data: Any) -> AcceptedTask:
        if not isinstance(data, dict):
            raise RecordError(f"expected a JSON object, found {type(data).__name__}")
        return cls(
            schema=_schema(data),
            id=_str(data, "id", ""),  # hand-made files may lack ids; the store numbers after the highest
            instruction=_str(data, "instruction"),
            input=_str(data, "input", ""),
            output=_str(data, "output", ""),
            request=_int(data, "request", -1),
            most_similar_instruction=_str(data, "most_similar_instruction", ""),
            rouge_l=_opt_float(data, "rouge_l") or 0.0,
            nearest_id=_opt_str(data, "nearest_id"),
            model=_str(data, "model", ""),
            endpoint=_str(data, "endpoint", ""),
            finish_reason=_opt_str(data, "finish_reason"),
            created=_str(data, "created", ""),
            settings=_opt_str(data, "settings"),
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    """One line of ``rejected.jsonl``: a candidate (or a whole answer) and why it was dropped."""

    reason: str
    detail: str
    instruction: str
    input: str
    output: str
    request: int
    rouge_l: float | None = None
    most_similar_instruction: str | None = None
    nearest_id: str | None = None
    created: str = ""
    settings: str | None = None
    stage: str | None = None  # self-instruct: instruction, classification or instances
    task_id: str | None = None  # self-instruct: the task an instance belonged to
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema": self.schema,
                "stage": self.stage,
                "task_id": self.task_id,
                "reason": self.reason,
                "detail": self.detail,
                "instruction": self.instruction,
                "input": self.input,
                "output": self.output,
                "request": self.request,
                "rouge_l": self.rouge_l,
                "most_similar_instruction": self.most_similar_instruction,
                "nearest_id": self.nearest_id,
                "created": self.created or None,
                "settings": self.settings,
            }
        )

    @classmethod
    def from_json(cls, data: Any) -> Rejection:
        if not isinstance(data, dict):
            raise RecordError(f"expected a JSON object, found {type(data).__name__}")
        return cls(
            schema=_schema(data),
            reason=_str(data, "reason"),
            detail=_str(data, "detail", ""),
            instruction=_str(data, "instruction", ""),
            input=_str(data, "input", ""),
            output=_str(data, "output", ""),
            request=_int(data, "request", -1),
            rouge_l=_opt_float(data, "rouge_l"),
            most_similar_instruction=_opt_str(data, "most_similar_instruction"),
            nearest_id=_opt_str(data, "nearest_id"),
            created=_str(data, "created", ""),
            settings=_opt_str(data, "settings"),
            stage=_opt_str(data, "stage"),
            task_id=_opt_str(data, "task_id"),
        )


RequestOutcome = Literal["answered", "failed", "carried_over"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One line of ``requests.jsonl``: a request that was answered or given up on.

    Written before the tasks of its answer, so every task's request number has its line.
    ``carried_over`` lines hold the counters of a run written before this file existed.
    """

    request: int
    outcome: RequestOutcome
    endpoint: str = ""
    finish_reason: str | None = None
    error: str | None = None  # failure kind, e.g. context_length, http_500, timeout
    detail: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    candidates: int = 0  # tasks the parser found in the answer
    incomplete: int = 0  # a last task cut by the token limit
    surplus: int = 0  # tasks not judged because the target was already reached
    latency: float | None = None
    created: str = ""
    settings: str | None = None
    carried: dict[str, int] | None = None
    stage: str | None = None  # self-instruct: instruction, classification or instances
    task_id: str | None = None
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema": self.schema,
                "request": self.request,
                "stage": self.stage,
                "task_id": self.task_id,
                "outcome": self.outcome,
                "endpoint": self.endpoint or None,
                "finish_reason": self.finish_reason,
                "error": self.error,
                "detail": self.detail or None,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "candidates": self.candidates,
                "incomplete": self.incomplete or None,
                "surplus": self.surplus or None,
                "latency": None if self.latency is None else round(self.latency, 3),
                "created": self.created or None,
                "settings": self.settings,
                "carried": self.carried,
            }
        )

    @classmethod
    def from_json(cls, data: Any) -> RequestRecord:
        if not isinstance(data, dict):
            raise RecordError(f"expected a JSON object, found {type(data).__name__}")
        outcome = data.get("outcome")
        if outcome not in ("answered", "failed", "carried_over"):
            raise RecordError(f"field 'outcome' should be answered, failed or carried_over, found {outcome!r}")
        carried = data.get("carried")
        if carried is not None and not (
            isinstance(carried, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in carried.values())
        ):
            raise RecordError("field 'carried' should map names to whole numbers")
        return cls(
            schema=_schema(data),
            request=_int(data, "request"),
            outcome=outcome,
            endpoint=_str(data, "endpoint", ""),
            finish_reason=_opt_str(data, "finish_reason"),
            error=_opt_str(data, "error"),
            detail=_str(data, "detail", ""),
            prompt_tokens=_int(data, "prompt_tokens", 0),
            completion_tokens=_int(data, "completion_tokens", 0),
            candidates=_int(data, "candidates", 0),
            incomplete=_int(data, "incomplete", 0),
            surplus=_int(data, "surplus", 0),
            latency=_opt_float(data, "latency"),
            created=_str(data, "created", ""),
            settings=_opt_str(data, "settings"),
            carried=carried,
            stage=_opt_str(data, "stage"),
            task_id=_opt_str(data, "task_id"),
        )


@dataclass(frozen=True, slots=True)
class SelfInstructTask:
    """One line of ``tasks.jsonl`` (``--method self-instruct``): a finished instruction.

    The seed schema (``id, instruction, is_classification, instances``) plus provenance. A task
    that got no valid instance is still written, with ``instances`` empty and ``reason`` saying
    why, so no accepted instruction is ever left without a decision.
    """

    id: str
    instruction: str
    is_classification: bool | None
    instances: tuple[tuple[str, str], ...]
    labels: tuple[str, ...] = ()
    reason: str | None = None
    most_similar_instruction: str = ""
    rouge_l: float = 0.0
    nearest_id: str | None = None
    model: str = ""
    created: str = ""
    settings: str | None = None
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        record = _drop_none(
            {
                "schema": self.schema,
                "id": self.id,
                "instruction": self.instruction,
                "instances": [{"input": i, "output": o} for i, o in self.instances],
                "labels": list(self.labels) or None,
                "reason": self.reason,
                "most_similar_instruction": self.most_similar_instruction,
                "rouge_l": self.rouge_l,
                "nearest_id": self.nearest_id,
                "model": self.model,
                "created": self.created,
                "settings": self.settings,
            }
        )
        # Always present, as in the seed schema; null when the task was given up on before deciding.
        record["is_classification"] = self.is_classification
        return record

    @classmethod
    def from_json(cls, data: Any) -> SelfInstructTask:
        if not isinstance(data, dict):
            raise RecordError(f"expected a JSON object, found {type(data).__name__}")
        raw = data.get("instances")
        if not isinstance(raw, list) or not all(
            isinstance(i, dict) and isinstance(i.get("input", ""), str) and isinstance(i.get("output"), str) for i in raw
        ):
            raise RecordError("field 'instances' should be a list of {input, output} strings")
        clf = data.get("is_classification")
        if clf is not None and not isinstance(clf, bool):
            raise RecordError("field 'is_classification' should be true, false or null")
        labels = data.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise RecordError("field 'labels' should be a list of strings")
        return cls(
            schema=_schema(data),
            id=_str(data, "id"),
            instruction=_str(data, "instruction"),
            is_classification=clf,
            instances=tuple((i.get("input", ""), i["output"]) for i in raw),
            labels=tuple(labels),
            reason=_opt_str(data, "reason"),
            most_similar_instruction=_str(data, "most_similar_instruction", ""),
            rouge_l=_opt_float(data, "rouge_l") or 0.0,
            nearest_id=_opt_str(data, "nearest_id"),
            model=_str(data, "model", ""),
            created=_str(data, "created", ""),
            settings=_opt_str(data, "settings"),
        )


CHECKS = ("valid", "input", "output")  # the rubric's three questions, in the order asked


@dataclass(frozen=True, slots=True)
class Judgment:
    """One line of ``judgments.jsonl``: one attempt of a judge model at one task.

    ``judge`` is the fingerprint of the judge (model, rubric, prompt version, sampling), so two
    rubrics never overwrite each other. ``status`` is ``judged`` (``checks`` and ``overall`` set,
    read from the answer as ``parse`` says, drift coerced as ``coerced`` lists) or ``unjudged``
    (``error`` says why; ``raw`` keeps the answer): an unjudged attempt never carries a score,
    and the task is tried again by the next ``selfinstruct judge``. ``instance`` numbers the
    instance of a self-instruct task (``None`` for Alpaca-style tasks, which have one).
    """

    task_id: str
    judge: str
    status: Literal["judged", "unjudged"]
    instance: int | None = None
    checks: tuple[tuple[str, bool], ...] = ()
    overall: int | None = None
    reasoning: str = ""
    parse: str | None = None
    coerced: tuple[str, ...] = ()
    error: str | None = None
    raw: str | None = None
    model: str = ""
    endpoint: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: float | None = None
    created: str = ""
    schema: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.task_id, self.instance)

    def passed(self, check: str) -> bool | None:
        return dict(self.checks).get(check)

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema": self.schema,
                "task_id": self.task_id,
                "instance": self.instance,
                "judge": self.judge,
                "status": self.status,
                "checks": dict(self.checks) if self.status == "judged" else None,
                "overall": self.overall,
                "reasoning": self.reasoning or None,
                "parse": self.parse,
                "coerced": list(self.coerced) or None,
                "error": self.error,
                "raw": self.raw,
                "model": self.model,
                "endpoint": self.endpoint,
                "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "latency": self.latency,
                "created": self.created,
            }
        )

    @classmethod
    def from_json(cls, data: Any) -> Judgment:
        if not isinstance(data, dict):
            raise RecordError(f"expected a JSON object, found {type(data).__name__}")
        status = data.get("status")
        if status not in ("judged", "unjudged"):
            raise RecordError(f"field 'status' should be 'judged' or 'unjudged', found {status!r}")
        instance = data.get("instance")
        if instance is not None and (isinstance(instance, bool) or not isinstance(instance, int) or instance < 0):
            raise RecordError(f"field 'instance' should be a whole number or null, found {instance!r}")
        checks: tuple[tuple[str, bool], ...] = ()
        overall = data.get("overall")
        if status == "judged":
            raw_checks = data.get("checks")
            if not isinstance(raw_checks, dict) or set(raw_checks) != set(CHECKS) or not all(
                isinstance(v, bool) for v in raw_checks.values()
            ):
                raise RecordError(f"a judged record needs 'checks' with true/false for each of {', '.join(CHECKS)}")
            checks = tuple((name, raw_checks[name]) for name in CHECKS)
            if isinstance(overall, bool) or not isinstance(overall, int) or not 1 <= overall <= 5:
                raise RecordError(f"a judged record needs 'overall' from 1 to 5, found {overall!r}")
        elif overall is not None:
            raise RecordError("an unjudged record carries no score")
        coerced = data.get("coerced") or []
        if not isinstance(coerced, list) or not all(isinstance(c, str) for c in coerced):
            raise RecordError("field 'coerced' should be a list of strings")
        return cls(
            schema=_schema(data),
            task_id=_str(data, "task_id"),
            instance=instance,
            judge=_str(data, "judge"),
            status=status,
            checks=checks,
            overall=overall,
            reasoning=_str(data, "reasoning", ""),
            parse=_opt_str(data, "parse"),
            coerced=tuple(coerced),
            error=_opt_str(data, "error"),
            raw=_opt_str(data, "raw"),
            model=_str(data, "model", ""),
            endpoint=_str(data, "endpoint", ""),
            finish_reason=_opt_str(data, "finish_reason"),
            prompt_tokens=_int(data, "prompt_tokens", 0),
            completion_tokens=_int(data, "completion_tokens", 0),
            latency=_opt_float(data, "latency"),
            created=_str(data, "created", ""),
        )


# -- counters -------------------------------------------------------------------------------------

# Rejections of whole answers, not of candidate tasks.
ANSWER_REASONS = frozenset({"unparseable"})


@dataclass
class Counters:
    """Totals of a run, always derived from its files (never trusted from run.json)."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    answers: int = 0
    failed_requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # failed requests by kind
    incomplete_tasks: int = 0
    surplus: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def unparseable_answers(self) -> int:
        return self.rejected.get("unparseable", 0)

    @property
    def candidates(self) -> int:
        """Tasks judged: accepted plus rejected, not counting rejected whole answers."""
        return self.accepted + self.rejected_total - sum(self.rejected[r] for r in ANSWER_REASONS)

    def add_rejection(self, rejection: Rejection) -> None:
        self.rejected[rejection.reason] += 1

    def add_rejections(self, rejections: Sequence[Rejection]) -> None:
        for rejection in rejections:
            self.rejected[rejection.reason] += 1

    def add_request(self, record: RequestRecord) -> None:
        if record.carried is not None:
            c = record.carried
            self.requests += c.get("requests", 0)
            self.answers += c.get("answers", 0)
            self.failed_requests += c.get("failed_requests", 0)
            self.incomplete_tasks += c.get("incomplete_tasks", 0)
            self.surplus += c.get("surplus", 0)
            self.prompt_tokens += c.get("prompt_tokens", 0)
            self.completion_tokens += c.get("completion_tokens", 0)
            return
        self.requests += 1
        if record.outcome == "answered":
            self.answers += 1
        else:
            self.failed_requests += 1
            self.failures[record.error or "unknown"] += 1
        self.incomplete_tasks += record.incomplete
        self.surplus += record.surplus
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "candidates": self.candidates,
            "rejected": dict(self.rejected.most_common()),
            "rejected_total": self.rejected_total,
            "requests": self.requests,
            "answers": self.answers,
            "failed_requests": self.failed_requests,
            "failures": dict(self.failures.most_common()),
            "unparseable_answers": self.unparseable_answers,
            "incomplete_tasks": self.incomplete_tasks,
            "surplus": self.surplus,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    @classmethod
    def from_json(cls, data: Any) -> Counters:
        """Read back a checkpoint; unknown or malformed fields count as zero."""
        if not isinstance(data, dict):
            raise RecordError("counters should be a JSON object")

        def number(key: str) -> int:
            value = data.get(key, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        def tally(key: str) -> Counter[str]:
            value = data.get(key)
            if not isinstance(value, dict):
                return Counter()
            return Counter({str(k): v for k, v in value.items() if isinstance(v, int) and v > 0})

        return cls(
            accepted=number("accepted"),
            rejected=tally("rejected"),
            requests=number("requests"),
            answers=number("answers"),
            failed_requests=number("failed_requests"),
            failures=tally("failures"),
            incomplete_tasks=number("incomplete_tasks"),
            surplus=number("surplus"),
            prompt_tokens=number("prompt_tokens"),
            completion_tokens=number("completion_tokens"),
        )

    def copy(self) -> Counters:
        return Counters.from_json(self.to_json())
