"""Seed tasks: loading (Self-Instruct JSONL, Alpaca JSON or JSONL) and the seed checker.

Loading is strict about structure (a bad line is named and the load fails) and leaves quality to
:func:`check_seeds`, which reports every defect at once: schema errors, duplicate ids,
near-duplicate pairs, filter violations, plus counts that describe the set's diversity.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SeedError
from .filters import FilterConfig, check_candidate, count_words
from .records import Candidate, SeedTask

__all__ = [
    "SeedReport",
    "bundled_seed_path",
    "check_seeds",
    "leading_word",
    "load_seed_tasks",
    "seed_fingerprint",
]


def bundled_seed_path() -> Path:
    """The seed file shipped inside the package."""
    return Path(str(resources.files("selfinstruct") / "data" / "seed_tasks.jsonl"))


def leading_word(instruction: str) -> str:
    words = instruction.split()
    return words[0].strip(".,:;!?\"'()[]").lower() if words else ""


@dataclass
class _Issue:
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parse_record(record: Any, line: int, position: int, issues: list[_Issue]) -> SeedTask | None:
    """One JSON value → SeedTask, appending structural problems to ``issues``."""
    if not isinstance(record, dict):
        issues.append(_Issue(line, f"expected a JSON object, got {type(record).__name__}"))
        return None
    instruction = _text(record.get("instruction"))
    if instruction is None:
        what = "missing" if "instruction" not in record else "not a string"
        issues.append(_Issue(line, f"field 'instruction' is {what}"))
        return None
    if not instruction.strip():
        issues.append(_Issue(line, "field 'instruction' is empty"))
        return None
    if "instances" in record:
        instances_raw = record["instances"]
        if not isinstance(instances_raw, list) or not instances_raw:
            issues.append(_Issue(line, "field 'instances' must be a non-empty list of {input, output}"))
            return None
        instances: list[tuple[str, str]] = []
        for k, inst in enumerate(instances_raw):
            if not isinstance(inst, dict):
                issues.append(_Issue(line, f"instances[{k}] is not an object"))
                return None
            inp, out = _text(inst.get("input", "")), _text(inst.get("output"))
            if inp is None or out is None:
                bad = "input" if inp is None else "output"
                issues.append(_Issue(line, f"instances[{k}].{bad} is missing or not a string"))
                return None
            instances.append((inp, out))
    else:
        inp, out = _text(record.get("input", "")), _text(record.get("output"))
        if out is None:
            what = "missing" if "output" not in record else "not a string"
            issues.append(_Issue(line, f"field 'output' is {what} (and there is no 'instances' list)"))
            return None
        if inp is None:
            issues.append(_Issue(line, "field 'input' is not a string"))
            return None
        instances = [(inp, out)]
    is_cls = record.get("is_classification", False)
    if not isinstance(is_cls, bool):
        issues.append(_Issue(line, "field 'is_classification' must be true or false"))
        return None
    ident = record.get("id", f"seed_task_{position}")
    if not isinstance(ident, (str, int)):
        issues.append(_Issue(line, "field 'id' must be a string"))
        return None
    name = record.get("name", "")
    return SeedTask(
        id=str(ident),
        name=name if isinstance(name, str) else str(name),
        instruction=instruction.strip(),
        instances=tuple((i.strip(), o.strip()) for i, o in instances),
        is_classification=is_cls,
    )


def _read(path: Path) -> tuple[list[SeedTask], list[_Issue]]:
    if not path.exists():
        raise SeedError(f"seed file {path} does not exist; check the path (leave it out to use the bundled seeds)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from Windows editors is fine
    except UnicodeDecodeError as exc:
        raise SeedError(f"seed file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise SeedError(f"cannot read seed file {path}: {exc.strerror}") from exc
    if not text.strip():
        raise SeedError(f"seed file {path} is empty; it needs at least one task (see README, 'Seed tasks')")
    issues: list[_Issue] = []
    tasks: list[SeedTask] = []
    if text.lstrip().startswith("["):  # Alpaca JSON: one list
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SeedError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        for k, item in enumerate(items, 1):
            task = _parse_record(item, k, k - 1, issues)
            if task:
                tasks.append(task)
        # Items of a JSON list have no line numbers; name them by position.
        issues = [_Issue(None, f"item {i.line}: {i.message}") for i in issues]
        return tasks, issues
    position = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.append(_Issue(number, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        task = _parse_record(record, number, position, issues)
        position += 1
        if task:
            tasks.append(task)
    return tasks, issues


def load_seed_tasks(path: str | os.PathLike[str] | None = None) -> list[SeedTask]:
    """Load seed tasks; structural errors raise SeedError naming the first bad line."""
    source = Path(path) if path is not None else bundled_seed_path()
    tasks, issues = _read(source)
    if issues:
        more = f" (and {len(issues) - 1} more problems; run `selfinstruct seeds check {source}`)" if len(issues) > 1 else ""
        raise SeedError(f"seed file {source}: {issues[0]}{more}")
    if not tasks:
        raise SeedError(f"seed file {source} holds no tasks")
    return tasks


def seed_fingerprint(tasks: list[SeedTask]) -> str:
    """A hash of the seed content, so resuming with other seeds is noticed."""
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(json.dumps([task.instruction, task.instances], ensure_ascii=False).encode())
    return "sha256:" + digest.hexdigest()


@dataclass
class SeedReport:
    """What :func:`check_seeds` found. ``ok`` is false when any error was found.

    ``warnings`` are hints that do not fail the check (e.g. a tokenizer that cannot read the
    language of the file).
    """

    path: Path
    tasks: int = 0
    classification: int = 0
    with_input: int = 0
    without_input: int = 0
    distinct_leading_words: int = 0
    schema_errors: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    near_duplicates: list[tuple[str, str, float]] = field(default_factory=list)
    filter_violations: list[tuple[str, str, str]] = field(default_factory=list)
    threshold: float = 0.7
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.schema_errors or self.duplicate_ids or self.near_duplicates or self.filter_violations)

    def errors(self) -> list[str]:
        out = [f"schema: {e}" for e in self.schema_errors]
        out += [f"duplicate id: {i}" for i in self.duplicate_ids]
        out += [f"near-duplicate (ROUGE-L {s:.3f} > {self.threshold}): {a} ~ {b}" for a, b, s in self.near_duplicates]
        out += [f"filter {reason}: {ident} ({detail})" for ident, reason, detail in self.filter_violations]
        return out

    def format(self) -> str:
        lines = [
            f"seed file: {self.path}",
            f"  tasks                   {self.tasks}",
            f"  classification          {self.classification}",
            f"  with input              {self.with_input}",
            f"  without input           {self.without_input}",
            f"  distinct leading words  {self.distinct_leading_words}",
        ]
        errors = self.errors()
        lines.append(f"errors: {len(errors)}" if errors else "ok: no errors")
        lines += [f"  {e}" for e in errors]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _examples(ids: list[str], limit: int = 3) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _unreadable_by_rouge(text: str) -> bool:
    """True when the rouge tokenizer (a-z, 0-9 only) keeps no token or under half the letters."""
    from .similarity import tokenize

    tokens = tokenize(text, "rouge")
    letters = sum(1 for ch in text if ch.isalnum())
    return not tokens or 2 * sum(map(len, tokens)) < letters


def _language_warnings(
    tasks: list[SeedTask], filters: FilterConfig, tokenizer: str, violations: list[tuple[str, str, str]]
) -> list[str]:
    """Hints for seed files the English-only defaults cannot judge."""
    warnings: list[str] = []
    if tokenizer == "rouge":
        unreadable = [t.id for t in tasks if _unreadable_by_rouge(t.instruction)]
        if unreadable:
            warnings.append(
                f"{len(unreadable)} of {len(tasks)} instructions ({_examples(unreadable)}) have no or few words "
                "the rouge tokenizer keeps (it reads only a-z and 0-9), so near-duplicates among them go "
                "unnoticed; use --tokenizer unicode for non-English text"
            )
    failed = {ident: (reason, detail) for ident, reason, detail in violations}
    by_id = {t.id: t for t in tasks}
    if filters.word_tokenizer == "whitespace":
        # Whitespace counting makes a sentence without spaces (Chinese, Japanese) one word.
        miscounted = [
            ident for ident, (reason, _) in failed.items()
            if reason in ("too_short", "too_long")
            and filters.min_words <= count_words(by_id[ident].instruction, "unicode") <= filters.max_words
        ]  # fmt: skip
        if miscounted:
            warnings.append(
                f"{_examples(miscounted)} fail the length filters only because words are counted by "
                "whitespace (a sentence without spaces is one word); count them with the unicode tokenizer "
                "(--tokenizer unicode; in Python FilterConfig(word_tokenizer='unicode'))"
            )
    letters = [ident for ident, (reason, _) in failed.items() if reason == "non_ascii_start"
               and by_id[ident].instruction[:1].isalpha()]  # fmt: skip
    if letters:
        warnings.append(
            f"{_examples(letters)} start with a non-English letter; the non_ascii_start filter is meant for "
            "English data: for other languages pass --disable-filter non_ascii_start"
        )
    return warnings


def check_seeds(
    path: str | os.PathLike[str] | None = None,
    *,
    threshold: float = 0.7,
    filters: FilterConfig | None = None,
    tokenizer: str = "rouge",
) -> SeedReport:
    """Validate a seed file and describe it; never raises for content problems (see ``report.ok``).

    ``tokenizer`` is the similarity tokenizer (``"rouge"`` or ``"unicode"``). Without ``filters``,
    the default filters are used, counting words with the unicode tokenizer when ``tokenizer``
    is ``"unicode"``; a given ``filters`` is used as it is. ``report.warnings`` says when the
    settings cannot judge the file's language (and which option to change).
    """
    from .similarity import RougeLIndex  # the index is heavier to import than the rest

    if filters is None:
        filters = FilterConfig(word_tokenizer="unicode" if tokenizer == "unicode" else "whitespace")
    index = RougeLIndex(tokenizer=tokenizer)  # before reading: an unknown tokenizer is a ConfigError
    source = Path(path) if path is not None else bundled_seed_path()
    report = SeedReport(path=source, threshold=threshold)
    try:
        tasks, issues = _read(source)
    except SeedError as exc:
        report.schema_errors.append(str(exc))
        return report
    report.schema_errors = [str(i) for i in issues]
    if not tasks and not issues:
        report.schema_errors.append("no tasks")
    report.tasks = len(tasks)
    report.classification = sum(t.is_classification for t in tasks)
    report.with_input = sum(1 for t in tasks if t.input.strip())
    report.without_input = report.tasks - report.with_input
    report.distinct_leading_words = len({leading_word(t.instruction) for t in tasks})
    report.duplicate_ids = sorted(i for i, n in Counter(t.id for t in tasks).items() if n > 1)
    for task in tasks:
        for inp, out in task.instances:
            failed = check_candidate(Candidate(task.instruction, inp, out), filters)
            if failed:
                report.filter_violations.append((task.id, *failed))
                break
    for task in tasks:
        # Compare with everything before it: each pair is seen once.
        score, nearest = index.nearest(task.instruction)
        if nearest is not None and score > threshold:
            report.near_duplicates.append((tasks[nearest].id, task.id, score))
        index.add(task.instruction)
    report.warnings = _language_warnings(tasks, filters, tokenizer, report.filter_violations)
    return report
