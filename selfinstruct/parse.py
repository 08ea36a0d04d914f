"""Turn a model's answer into candidate tasks, tolerating the ways real models bend the format.

The expected shape is the block format of ``selfinstruct.prompts``::

    ###
    4. Instruction: <instruction>
    4. Input:
    <input or <noinput>>
    4. Output:
    <output>

The parser walks the answer line by line. Lines that look like headers (``Instruction:``,
``Input:``, ``Output:``, ``Task 3``, ``###``) open sections; every other line belongs to the
section that is open. Numbers are recorded but never trusted for structure, because models
restart, skip or drop them. Text after a ``###`` that is followed by an Input/Output header
counts as an instruction even without an ``Instruction:`` header; text that never reaches an
Input/Output header (a chatty preamble or closing remark) is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .records import Candidate

__all__ = ["ParseResult", "parse_answer"]


@dataclass
class ParseResult:
    """Candidates found in one answer and counts of what could not be used."""

    candidates: list[Candidate] = field(default_factory=list)
    malformed: int = 0  # blocks with some text but no usable instruction + output
    dropped_incomplete: int = 0  # 1 when the last task was cut by the token limit and dropped


# "4. Instruction:", "**Instruction:**", "- Input 3:", "3) Output:", "### Response:".
_FIELD = re.compile(
    r"^\s*(?P<hash>#{1,6})?[ \t]*(?:[-+\u2022][ \t]+)?[ \t*_]*"
    r"(?:(?P<num1>\d{1,4})[ \t]*[.):]?[ \t*_]*)?"
    r"(?P<key>instruction|input|output|response)(?![a-z0-9])"
    r"[ \t*_]*(?:#?[ \t]*(?P<num2>\d{1,4})(?!\d)[ \t*_]*)?"
    r"(?P<colon>:)?(?P<rest>.*)$",
    re.IGNORECASE,
)
# "Task 3", "### Task 3", "**Task 3:** ...".
_TASK = re.compile(
    r"^\s*(?P<hash>#{1,6})?[ \t]*(?:[-+\u2022][ \t]+)?[ \t*_]*"
    r"(?:new[ \t]+)?task[ \t]*#?[ \t]*(?P<num>\d{1,4})(?!\d)"
    r"[ \t*_]*(?P<punct>[:.)\-\u2013\u2014])?(?P<rest>.*)$",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"^\s*(?:#{3,}|-{3,}|\*{3,}|_{3,})\s*$")
_FENCE = re.compile(r"^\s*(?:```|~~~)")
_LEADING_NUMBER = re.compile(r"^(\d{1,4})[.)][ \t]+")
_EMPHASIS_RUN = re.compile(r"[*_]+")
_BLANK_RUN = re.compile(r"\n[ \t]*\n")
_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|absolutely|okay|ok|alright|great|here (?:are|is)|here's|"
    r"below (?:are|is))\b.*[:!]$",
    re.IGNORECASE,
)
# A last paragraph like this after the final output is a remark to the user, not output. Openings
# that real outputs also use ("These are", "Note:") count only when the paragraph talks about tasks.
_TRAILER = re.compile(
    r"^(?:i hope|hope (?:this|these|that|you)|let me know|feel free|happy to|enjoy\b|"
    r"if you (?:need|want|would|'d)|would you like|do you want|want me to|please let)"
    r"|^(?:(?:these|this|all of these|each of these|i(?:'ve| have)|i can)\b|note:)"
    r".*\b(?:tasks?|examples?|instructions?)\b",
    re.IGNORECASE | re.DOTALL,
)
_EMPTY_INPUTS = frozenset(
    {
        "", "<noinput>", "<no input>", "noinput", "no input", "none", "n/a", "<none>", "(none)",
        "<empty>", "no input needed", "no input required", "not applicable",
    }
)  # fmt: skip


def _is_empty_input(value: str) -> bool:
    core = value.strip().strip("*_`\"'").strip().rstrip(".").strip()
    return core.lower() in _EMPTY_INPUTS


def _clean_rest(prefix: str, rest: str) -> str:
    """Drop markdown emphasis that belongs to the header, e.g. the ``**`` closing ``**Input:**``."""
    rest = rest.lstrip()  # trailing spaces matter only on multi-line values; the caller strips
    if len(_EMPHASIS_RUN.findall(prefix)) % 2 == 1:
        # The header opened an emphasis run; its closer is either right after the colon...
        m = re.match(r"[*_]+", rest)
        if m:
            return rest[m.end() :].lstrip()
        # ...or at the end of the line when the whole line is bold ("**Instruction: text**").
        m = re.search(r"[*_]+\s*$", rest)
        if m and len(_EMPHASIS_RUN.findall(rest)) % 2 == 1:
            return rest[: m.start()]
    return rest


@dataclass
class _Header:
    """A recognised header line and the text that follows it on the same line."""

    kind: str  # "instruction" | "input" | "output" | "task"
    number: int | None
    rest: str
    marked: bool  # written with markdown (#, * or _) around it


def _field_header(line: str) -> _Header | None:
    m = _FIELD.match(line)
    if not m:
        return None
    key = m["key"].lower()
    prefix = line[: m.start("rest")]
    marked = bool(m["hash"]) or "*" in prefix or "_" in prefix
    rest = _clean_rest(prefix[: m.start("colon")] if m["colon"] else prefix, m["rest"])
    if key == "response":
        if not m["hash"]:  # plain "Response:" is too common inside real inputs and outputs
            return None
        key = "output"
    if not m["colon"] and (rest or not marked):
        return None  # "Output" inside a sentence, or "1. Input" in a numbered list
    raw_number = m["num1"] or m["num2"]
    return _Header(key, int(raw_number) if raw_number else None, rest, marked)


def _task_header(line: str) -> _Header | None:
    m = _TASK.match(line)
    if not m:
        return None
    prefix = line[: m.start("rest")]
    marked = bool(m["hash"]) or "*" in prefix or "_" in prefix
    rest = _clean_rest(prefix, m["rest"])
    if rest and not m["punct"]:
        return None  # "Task 3 is harder" reads as prose
    return _Header("task", int(m["num"]), rest, marked)


def _is_structural(line: str) -> bool:
    return bool(_SEPARATOR.match(line) or _field_header(line) or _task_header(line))


@dataclass
class _Block:
    """One task being collected; sections stay None until their header is seen."""

    implicit: bool  # opened by ###, by the start of the answer or by a continuation
    number: int | None = None
    instruction: list[str] = field(default_factory=list)
    input: list[str] | None = None  # None until an Input header is seen
    output: list[str] | None = None  # None until an Output header is seen
    titled: bool = False  # opened by "Task N"; an "Instruction:" line may still follow
    continuation: bool = False

    @property
    def section(self) -> str:
        if self.output is not None:
            return "output"
        return "input" if self.input is not None else "instruction"

    @property
    def has_io(self) -> bool:
        return self.input is not None or self.output is not None

    def has_text(self) -> bool:
        parts = self.instruction + (self.input or []) + (self.output or [])
        return any(p.strip() for p in parts)

    def append(self, line: str) -> None:
        target = {"instruction": self.instruction, "input": self.input, "output": self.output}
        target[self.section].append(line)  # type: ignore[union-attr]


def _normalize(text: str, continuation: bool) -> list[str]:
    """Unify newlines; remove code fences wrapping the whole answer (not those inside outputs)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff").split("\n")
    first_structural = next((i for i, ln in enumerate(lines) if _is_structural(ln)), len(lines))
    first_text = next((i for i, ln in enumerate(lines) if ln.strip()), len(lines))
    drop: set[int] = set()
    for i in range(first_structural):
        # A continuation's first line is instruction text, so only a fence before it can wrap.
        if _FENCE.match(lines[i]) and (not continuation or i == first_text):
            drop.add(i)
    remaining = [i for i, ln in enumerate(lines) if _FENCE.match(ln) and i not in drop]
    # An unmatched bare fence at the end closes a wrapper; one with a language tag opens code
    # inside an output that was never closed, which we keep.
    if len(remaining) % 2 == 1 and lines[remaining[-1]].strip() in ("```", "~~~"):
        last = remaining[-1]
        drop.add(last)
        tail = range(last + 1, len(lines))
        if not any(_is_structural(lines[i]) for i in tail):
            drop.update(tail)  # a remark after the closing wrapper fence
    return [ln for i, ln in enumerate(lines) if i not in drop]


def _split_unlabelled(block: _Block, number: int) -> list[str] | None:
    """Find "N. instruction" at the end of ``block``'s output when block N forgot its header."""
    assert block.output is not None
    for i in range(len(block.output) - 1, -1, -1):
        m = _LEADING_NUMBER.match(block.output[i].strip())
        if m and int(m.group(1)) == number:
            moved = block.output[i:]
            del block.output[i:]
            moved[0] = moved[0].strip()[m.end() :]
            return moved
    return None


def _scan(lines: list[str], continuation_number: int | None) -> list[_Block]:
    if continuation_number is not None:
        cur = _Block(implicit=True, number=continuation_number, continuation=True)
    else:
        cur = _Block(implicit=True)
    blocks = [cur]

    def start(block: _Block) -> _Block:
        blocks.append(block)
        return block

    for line in lines:
        if _SEPARATOR.match(line):
            cur = start(_Block(implicit=True))
            continue
        header = _field_header(line) or _task_header(line)
        fresh = cur.implicit and not cur.has_io  # nothing but preamble or title so far
        if header is None:
            cur.append(line)
        elif header.kind == "task":
            if header.rest and not (header.marked or fresh):
                cur.append(line)
                continue
            cur = start(_Block(implicit=False, number=header.number, titled=True))
            if header.rest:
                cur.instruction.append(header.rest)
        elif header.kind == "instruction":
            if fresh or (cur.titled and not cur.has_io):
                # Preamble, or the title of a "Task N" block, gives way to the real instruction.
                if header.number is not None or not cur.titled:
                    cur.number = header.number
                cur.implicit, cur.titled, cur.continuation = False, False, False
                cur.instruction = [header.rest] if header.rest else []
            else:
                cur = start(_Block(implicit=False, number=header.number))
                if header.rest:
                    cur.instruction.append(header.rest)
        else:
            key = header.kind
            opens_next = (
                cur.section == "output"
                and header.number is not None
                and cur.number is not None
                and header.number > cur.number
            )
            if opens_next:
                # "5. Input:" after task 4's output: task 5 lost its Instruction header.
                moved = _split_unlabelled(cur, header.number)  # type: ignore[arg-type]
                cur = start(_Block(implicit=False, number=header.number))
                cur.instruction = moved or []
            if cur.section == "instruction" or (key == "output" and cur.section == "input"):
                if cur.number is None:
                    cur.number = header.number
                setattr(cur, key, [header.rest] if header.rest else [])
            else:
                cur.append(line)  # e.g. "Input:" inside an output: ordinary text
    return blocks


def _join(lines: list[str]) -> str:
    return "\n".join(lines).strip()


def _strip_trailer(output: str) -> str:
    """Cut closing remarks ("Let me know if ...") that follow the last output after a blank line."""
    while True:
        gaps = list(_BLANK_RUN.finditer(output))
        if not gaps or not _TRAILER.match(output[gaps[-1].end() :].strip()):
            return output
        output = output[: gaps[-1].start()].rstrip()


def _to_candidate(block: _Block) -> Candidate | None:
    """The block's task, or None when it lacks an instruction or an output."""
    lines = list(block.instruction)
    number = block.number
    if block.implicit and not block.continuation:
        nonblank = [ln.strip() for ln in lines if ln.strip()]
        if len(nonblank) > 1 and _PREAMBLE.match(nonblank[0]):
            lines = lines[lines.index(next(ln for ln in lines if ln.strip())) + 1 :]
        text = _join(lines)
        m = _LEADING_NUMBER.match(text)
        if m:
            text = text[m.end() :].strip()
            number = int(m.group(1))
    else:
        text = _join(lines)
    if not text or block.output is None:
        return None
    raw_input = _join(block.input or [])
    return Candidate(
        instruction=text,
        input="" if _is_empty_input(raw_input) else raw_input,
        output=_join(block.output),
        meta={"number": number},
    )


def parse_answer(
    text: str, *, continuation_number: int | None = None, finish_reason: str | None = None
) -> ParseResult:
    """Parse one model answer into candidates.

    ``continuation_number=K`` says ``text`` continues a prompt ending in ``"K. Instruction:"``, so
    its first lines are task K's instruction. With ``finish_reason="length"`` the last task is
    assumed cut off and dropped. Never raises on odd input.
    """
    if not isinstance(text, str) or not text.strip():
        return ParseResult([], 0, 0)
    lines = _normalize(text, continuation_number is not None)
    blocks = _scan(lines, continuation_number)

    if finish_reason == "length" and blocks[-1].has_text():
        cut: _Block | None = blocks.pop()
    else:
        cut = None
    results: list[tuple[_Block, Candidate | None]] = []
    for block in blocks:
        if block.implicit and not block.has_io:
            continue  # preamble, closing remark, or an empty opening
        results.append((block, _to_candidate(block)))

    candidates: list[Candidate] = []
    malformed = 0
    for block, cand in results:
        if cand is not None:
            candidates.append(cand)
        elif block.has_text():
            malformed += 1
    if cut is None and candidates and results and results[-1][1] is candidates[-1]:
        last = candidates[-1]
        cleaned = _strip_trailer(last.output)
        if cleaned != last.output:
            candidates[-1] = Candidate(last.instruction, last.input, cleaned, last.meta)
    return ParseResult(candidates, malformed, 1 if cut is not None else 0)
