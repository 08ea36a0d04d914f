"""The judge's rubric: the prompt that asks a model to review one task, and the reader of its answer.

The reader never invents a score. It takes the answer's JSON when there is one (whole, fenced,
embedded in prose, or with small syntax slips), else ``key: value`` lines, maps known synonyms
of the field names, and coerces only drift with a single reading (``"yes"`` for true, ``"4/5"``
for 4). Anything else (a missing field, a score of 4.5 or 7, two objects that disagree) makes
the answer :class:`Unreadable`: the task stays unjudged and is tried again later.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .prompts import texts_with_overrides
from .records import CHECKS

__all__ = [
    "JUDGE_PROMPT_VERSION",
    "Rubric",
    "Unreadable",
    "Verdict",
    "judgment_schema",
    "load_rubric",
    "read_verdict",
]

# Bump when the reading of answers or the shape of the request changes what a judgment means.
JUDGE_PROMPT_VERSION = "1"
NO_INPUT_SHOWN = "(none)"
_PLACEHOLDERS = ("instruction", "input", "output")
_PLACEHOLDER = re.compile(r"\{(instruction|input|output)\}")
_REASONING_LIMIT = 2000


@dataclass(frozen=True)
class Rubric:
    """The system text and the task template (with ``{instruction}``, ``{input}``, ``{output}``)."""

    system: str
    template: str

    def messages(self, instruction: str, input: str, output: str) -> list[dict[str, str]]:
        values = {"instruction": instruction.strip(), "input": input.strip() or NO_INPUT_SHOWN, "output": output.strip()}
        # One pass, so a task whose text holds "{output}" is shown as written.
        user = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)
        messages = [{"role": "user", "content": user}]
        if self.system.strip():
            messages.insert(0, {"role": "system", "content": self.system})
        return messages

    def completion_prompt(self, instruction: str, input: str, output: str) -> str:
        """The same request for a legacy completions endpoint: the texts, then an opened answer."""
        body = "\n\n".join(m["content"] for m in self.messages(instruction, input, output))
        return f"{body}\n\nAnswer:\n"

    def fingerprint(self) -> str:
        raw = json.dumps({"system": self.system, "template": self.template}, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def load_rubric(path: str | os.PathLike[str] | None = None) -> Rubric:
    """The packaged rubric, or the JSON file ``path`` (keys ``system`` and ``template``; either may be left out)."""
    texts = texts_with_overrides("judge_rubric.json", path, "judge rubric", _rubric_texts)
    missing = [f"{{{name}}}" for name in _PLACEHOLDERS if f"{{{name}}}" not in texts["template"]]
    if missing:
        raise ConfigError(
            f"judge rubric {path}: the template lacks {', '.join(missing)}; the task is shown where those stand"
        )
    return Rubric(system=texts["system"], template=texts["template"])


def _rubric_texts(raw: str, where: str) -> dict[str, str]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"judge rubric {where} is not valid JSON ({exc}); fix the file") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"judge rubric {where} should be a JSON object with 'system' and 'template'")
    unknown = sorted(set(data) - {"system", "template"})
    if unknown:
        raise ConfigError(f"judge rubric {where}: unknown key(s) {', '.join(unknown)}; the keys are 'system' and 'template'")
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"judge rubric {where}: {key!r} should be a string")
    return dict(data)


def judgment_schema() -> dict[str, Any]:
    """The JSON schema of an answer, for servers that constrain decoding to it (reasoning first)."""
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": 600},
            "valid": {"type": "boolean"},
            "input": {"type": "boolean"},
            "output": {"type": "boolean"},
            "overall": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
        },
        "required": ["reasoning", *CHECKS, "overall"],
        "additionalProperties": False,
    }


# -- reading answers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    checks: tuple[tuple[str, bool], ...]
    overall: int
    reasoning: str
    parse: str  # how it was read: json, fenced, embedded, repaired, lines
    coerced: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unreadable:
    error: str


_FIELDS: dict[str, str] = {}
for _field, _names in {
    "valid": ("valid", "instruction", "instruction_valid", "valid_instruction", "is_valid", "instruction_ok", "validity", "q1"),
    "input": ("input", "input_fits", "input_fit", "input_ok", "input_valid", "fits", "q2"),
    "output": ("output", "output_correct", "output_ok", "output_valid", "correct", "correctness", "q3"),
    "overall": ("overall", "score", "overall_score", "rating", "overall_rating", "grade"),
    "reasoning": ("reasoning", "reason", "reasons", "explanation", "rationale", "thoughts", "analysis", "comment"),
}.items():
    for _name in _names:
        _FIELDS[_name] = _field

_TRUE = {"true", "yes", "y", "pass", "passed", "correct", "valid", "fits", "ok"}
_FALSE = {"false", "no", "n", "fail", "failed", "incorrect", "invalid", "wrong"}
_NOT_APPLICABLE = {"n/a", "na", "none", "not applicable", "null", "no input", "empty"}
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_SCORE_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:(?:/|out of|of)\s*(\d+))?\s*(?:$|[\s\-–—:,.(])")
_LINE = re.compile(r"^[\s>*#-]*\**\s*([A-Za-z][A-Za-z0-9 _]*?)\s*\**\s*[:=]\s*(.+?)\s*$")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9/]+", "_", name.strip().lower()).strip("_")


def _objects(text: str) -> list[str]:
    """Every balanced ``{...}`` span in ``text``, outermost only (quote-aware)."""
    spans: list[str] = []
    depth = 0
    start = -1
    quote: str | None = None
    escaped = False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch == '"' and depth:
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _repair(span: str) -> Any:
    """Small slips with one meaning: trailing commas, Python literals, single quotes."""
    fixed = re.sub(r",\s*([}\]])", r"\1", span)
    fixed = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", fixed)))
    try:
        return json.loads(fixed)
    except ValueError:
        pass
    if '"' not in fixed:
        try:
            return json.loads(fixed.replace("'", '"'))
        except ValueError:
            pass
    return None


def _json_objects(text: str) -> tuple[list[dict[str, Any]], str]:
    """The answer's JSON objects and how they were found."""
    try:
        whole = json.loads(text)
        if isinstance(whole, dict):
            return [whole], "json"
    except ValueError:
        pass
    for how, sources in (("fenced", _FENCE.findall(text)), ("embedded", [text])):
        found: list[dict[str, Any]] = []
        repaired = False
        for source in sources:
            for span in _objects(source):
                try:
                    value = json.loads(span)
                except ValueError:
                    value = _repair(span)
                    repaired = repaired or value is not None
                if isinstance(value, dict):
                    found.append(value)
        if found:
            return found, "repaired" if repaired else how
    return [], ""


def _line_fields(text: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            fields.setdefault(m.group(1), m.group(2).strip().strip("*").strip())
    return fields


def _flatten(obj: dict[str, Any]) -> dict[str, Any]:
    """Fields of a verdict object, looking one level into a wrapper such as ``{"checks": {...}}``."""
    flat: dict[str, Any] = {}
    for name, value in obj.items():
        if isinstance(value, dict) and _key(name) not in _FIELDS:
            for inner, inner_value in value.items():
                flat.setdefault(inner, inner_value)
        else:
            flat[name] = value
    return flat


def _as_bool(field: str, value: Any, has_input: bool, notes: list[str]) -> bool | str:
    """The boolean, or an error text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        notes.append(f"{field}: {value} read as {bool(value)}")
        return bool(value)
    if isinstance(value, dict):  # {"answer": "yes", "why": ...}
        inner = [v for k, v in value.items() if _key(k) in ("answer", "value", "verdict", "result", "pass", "passed")]
        if len(inner) == 1:
            return _as_bool(field, inner[0], has_input, notes)
    if value is None or isinstance(value, str):
        word = "null" if value is None else value.strip().strip(".!").strip().lower()
        if word in _TRUE:
            notes.append(f"{field}: {value!r} read as true")
            return True
        if word in _FALSE:
            notes.append(f"{field}: {value!r} read as false")
            return False
        if field == "input" and not has_input and word in _NOT_APPLICABLE:
            # No input and none wanted: the judge says the question does not arise, which is a pass.
            notes.append(f"input: {value!r} for a task without input read as true")
            return True
    return f"question {field!r} answered {str(value)[:40]!r}, not true or false"


def _as_score(value: Any, notes: list[str]) -> int | str:
    if isinstance(value, bool):
        return f"overall {value!r} is not a score"
    if isinstance(value, int):
        return value if 1 <= value <= 5 else f"overall {value} is outside 1 to 5"
    if isinstance(value, float):
        if value.is_integer() and 1 <= value <= 5:
            notes.append(f"overall: {value} read as {int(value)}")
            return int(value)
        return f"overall {value} is not a whole number from 1 to 5"
    if isinstance(value, str):
        m = _SCORE_TEXT.match(value)
        if m:
            number, scale = float(m.group(1)), m.group(2)
            if scale is not None and int(scale) != 5:
                return f"overall {value!r} is on another scale than 1 to 5"
            if number.is_integer() and 1 <= number <= 5:
                notes.append(f"overall: {value!r} read as {int(number)}")
                return int(number)
        return f"overall {value!r} is not a whole number from 1 to 5"
    return f"overall {str(value)[:40]!r} is not a score"


def _verdict_from(fields: dict[str, Any], has_input: bool, parse: str) -> Verdict | Unreadable:
    values: dict[str, Any] = {}
    for name, value in fields.items():
        field = _FIELDS.get(_key(name))
        if field is None:
            continue
        if field in values and values[field] != value:
            return Unreadable(f"two answers to {field!r} ({values[field]!r} and {value!r})")
        values[field] = value
    missing = [f for f in (*CHECKS, "overall") if f not in values]
    if missing:
        return Unreadable(f"no answer to {', '.join(missing)}")
    notes: list[str] = []
    checks: list[tuple[str, bool]] = []
    for field in CHECKS:
        answer = _as_bool(field, values[field], has_input, notes)
        if isinstance(answer, str):
            return Unreadable(answer)
        checks.append((field, answer))
    score = _as_score(values["overall"], notes)
    if isinstance(score, str):
        return Unreadable(score)
    reasoning = values.get("reasoning", "")
    reasoning = reasoning if isinstance(reasoning, str) else json.dumps(reasoning, ensure_ascii=False)
    return Verdict(tuple(checks), score, reasoning[:_REASONING_LIMIT], parse, tuple(notes))


def read_verdict(text: str, *, has_input: bool, finish_reason: str | None = None) -> Verdict | Unreadable:
    """Read one judge answer. ``has_input``: whether the task has an input (for "n/a" answers)."""
    text = _THINK.sub("", text).strip()
    if not text:
        return Unreadable("the answer is empty")
    objects, how = _json_objects(text)
    verdicts = [v for v in (_verdict_from(_flatten(o), has_input, how) for o in objects)]
    readable = [v for v in verdicts if isinstance(v, Verdict)]
    if readable:
        distinct = {(v.checks, v.overall) for v in readable}
        if len(distinct) > 1:
            return Unreadable(f"the answer holds {len(distinct)} different verdicts")
        return readable[0]
    lines = _line_fields(text)
    if lines:
        by_lines = _verdict_from(lines, has_input, "lines")
        if isinstance(by_lines, Verdict):
            return by_lines
        if not verdicts:
            verdicts.append(by_lines)
    if finish_reason == "length":
        return Unreadable("the answer was cut by the token limit before the verdict was complete")
    if verdicts and isinstance(verdicts[0], Unreadable):
        return verdicts[0]
    return Unreadable("no verdict found (no JSON object and no 'valid: ...' lines)")
