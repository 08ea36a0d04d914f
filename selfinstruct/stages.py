"""Self-Instruct answers in, candidates and instances out: stages 1-4 without the model.

Stage 1 answers are a numbered list of instructions; stage 2 a Yes or No; stage 3 a list of
instances (``Label:``/``Input:`` for classification, ``Example N``/``Input:``/``Output:``
otherwise). Markers count only at the start of a line, so "for example" inside a text is text.
Stage 4 filters the instances of one task, each drop with a named reason.

Pure functions: no I/O, never raise on odd input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .prompts import SI_NO_INPUT
from .records import Candidate

__all__ = [
    "InstanceVerdict",
    "ParsedInstances",
    "filter_instances",
    "parse_classification",
    "parse_instances",
    "parse_instruction_list",
]

_ITEM = re.compile(r"^\s*(?:\*\*)?(\d{1,3})\s*[.)]\s*(?:\*\*)?\s*(.*)$")
_EXAMPLE = re.compile(r"^\s*(?:#+\s*)?\**example\s*(\d{1,2})\**\s*:?\s*\**\s*$", re.IGNORECASE)
_FIELD = re.compile(r"^\s*\**(labels?|input|output)\**\s*:\s*\**\s*(.*)$", re.IGNORECASE)
_TASK = re.compile(r"^\s*task\s*:", re.IGNORECASE)
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
_EMPTY_INPUTS = frozenset({"", SI_NO_INPUT, "<noinput>", "<no input>", "none", "n/a", "no input", "(none)"})


def _clean(text: str) -> str:
    return " ".join(text.split()).strip().rstrip(":").strip()


def parse_instruction_list(
    text: str, *, continuation_number: int | None, finish_reason: str | None
) -> tuple[list[Candidate], int]:
    """Instructions from a numbered list; returns them and how many were cut by the token limit.

    With ``continuation_number`` the answer continues an item already opened by the prompt, so
    text before the first number is that item. A chat answer's preamble ("Sure, here ...") is
    dropped. Only the last item is dropped when the answer was cut (``finish_reason`` length).
    """
    items: list[list[str]] = []
    opened = continuation_number is not None
    if opened:
        items.append([])
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        m = _ITEM.match(line)
        if m:
            items.append([m.group(2)])
            opened = True
        elif opened:
            items[-1].append(line)  # a wrapped item continues on the next line
    texts = [_clean(" ".join(parts)) for parts in items]
    cut = 0
    if finish_reason == "length" and texts:
        texts.pop()
        cut = 1
    return [Candidate(instruction=t) for t in texts if t], cut


def parse_classification(text: str) -> bool | None:
    """True for Yes, False for No, None when the answer says neither (ask again, never guess)."""
    m = _YES_NO.match(text.strip())
    return None if m is None else m.group(1).lower() == "yes"


@dataclass
class ParsedInstances:
    instances: list[tuple[str, str]] = field(default_factory=list)
    labels: tuple[str, ...] = ()
    cut: int = 0  # instances dropped because the answer hit the token limit


def _input(lines: list[str]) -> str:
    text = "\n".join(lines).strip()
    return "" if text.lower() in _EMPTY_INPUTS else text


def parse_instances(text: str, *, classification: bool, finish_reason: str | None) -> ParsedInstances:
    """Instances of one task from a stage-3 answer (it continues after ``Labels:`` or ``Example 1``)."""
    lines = text.replace("\r\n", "\n").split("\n")
    result = ParsedInstances()
    # Each instance: [input lines, output lines]; `section` says which one grows.
    current: list[list[str]] | None = None
    section: str | None = None
    done: list[list[list[str]]] = []

    def close() -> None:
        nonlocal current
        if current is not None:
            done.append(current)
        current = None

    first = True
    for line in lines:
        if _TASK.match(line) and not first:
            break  # the model went on to invent another task
        first = False if line.strip() else first
        if classification:
            m = _FIELD.match(line)
            key = m.group(1).lower() if m else None
            if key == "labels" or (key is None and not result.labels and current is None and not done and line.strip()):
                raw = m.group(2) if m else line
                sep = "|" if "|" in raw else ","
                result.labels = tuple(dict.fromkeys(x.strip() for x in raw.split(sep) if x.strip()))
                continue
            if key in ("label", "output"):
                close()
                current = [[], [m.group(2)] if m else []]
                section = "label"
                continue
            if key == "input" and current is not None:
                current[0] = [m.group(2)] if m else []
                section = "input"
                continue
            if current is not None and section == "input":
                current[0].append(line)
            continue
        m_example = _EXAMPLE.match(line)
        if m_example:
            close()
            current, section = [[], []], None
            continue
        m = _FIELD.match(line)
        key = m.group(1).lower() if m else None
        if key in ("input", "output"):
            if current is None or (key == "input" and section == "output"):
                close()
                current = [[], []]
            section = key
            current[0 if key == "input" else 1] = [m.group(2)]  # type: ignore[union-attr]
            continue
        if current is not None and section is not None:
            current[0 if section == "input" else 1].append(line)
    close()
    if finish_reason == "length" and done:
        done.pop()
        result.cut = 1
    for inp, out in done:
        output = "\n".join(out).strip()
        result.instances.append((_input(inp), output))
    return result


@dataclass
class InstanceVerdict:
    kept: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[tuple[str, str], str]] = field(default_factory=list)  # (instance, reason)
    task_reason: str | None = None  # set when the task keeps no instance


def filter_instances(
    instances: list[tuple[str, str]], *, labels: tuple[str, ...], classification: bool, max_instances: int
) -> InstanceVerdict:
    """Stage 4: drop bad instances by name; keep at most ``max_instances`` in answer order."""
    verdict = InstanceVerdict()
    known = {label.casefold() for label in labels}
    seen: set[tuple[str, str]] = set()
    outputs_by_input: dict[str, str] = {}
    candidates: list[tuple[str, str]] = []
    for instance in instances:
        inp, out = instance
        reason = None
        if not out.strip():
            reason = "empty_output"
        elif inp.strip() and inp.strip() == out.strip():
            reason = "input_equals_output"
        elif inp.rstrip().endswith(":") or out.rstrip().endswith(":"):
            reason = "ends_with_colon"
        elif classification and known and out.strip().casefold() not in known:
            reason = "label_not_in_labels"
        elif instance in seen:
            reason = "duplicate_instance"
        if reason:
            verdict.rejected.append((instance, reason))
            continue
        seen.add(instance)
        if inp.strip():
            earlier = outputs_by_input.setdefault(inp.strip(), out.strip())
            if earlier != out.strip():
                # One input, two answers: the task is ambiguous, so none of its instances is trusted.
                verdict.rejected.extend((i, "conflicting_outputs") for i in candidates + [instance])
                verdict.task_reason = "conflicting_outputs"
                return verdict
        candidates.append(instance)
    verdict.kept = candidates[:max_instances]
    verdict.rejected.extend((i, "over_max_instances") for i in candidates[max_instances:])
    if not verdict.kept:
        verdict.task_reason = "no_valid_instances" if instances else "no_instances_found"
    return verdict
