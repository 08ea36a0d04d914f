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
section that is open. Numbers alone never open a task, because models restart, skip or drop
them; they only help judge header lines found inside an output (below). Text after a ``###``
that is followed by an Input/Output header counts as an instruction even without an
``Instruction:`` header; text that never reaches an Input/Output header (a chatty preamble or
closing remark) is ignored. An answer written exactly in the prompt's format (the usual case) is
read by a shortcut that gives the same result.

An output is never cut silently. A separator or header line inside an output ends it only if a
task follows: after a separator, a ``Task N``/``Instruction:`` line, or instruction text that
reaches an Input/Output header; a ``Task N``/``Instruction:`` line must reach its Output header,
or else continue the numbering (or be unnumbered in an unnumbered answer); ``N. Input:`` after
an ``N. text`` line (a forgotten Instruction header) must reach its Output header. Otherwise the
line is output text. Separators at the very end, or before a closing remark, close the answer.

A split that is a guess rejects the tasks around it instead (``ParseResult.rejected``, reason
``ambiguous_structure``): when what follows it reaches no output (unless the token limit cut the
answer there), when a numbered and an unnumbered task meet there, or when numbers stop
increasing after it (``4, 5, 5``). Rejected are the task whose output may have been cut and the
blocks that may be lines of that output. Only the end of an answer hides a cut: a last output
ending in ``###`` or in a whole block numbered higher reads exactly like the end of the answer
or one more task.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from .records import Candidate

__all__ = ["AMBIGUOUS_STRUCTURE", "ParseResult", "parse_answer"]

# Reason given with every task in ``ParseResult.rejected``.
AMBIGUOUS_STRUCTURE = "ambiguous_structure"


@dataclass
class ParseResult:
    """Candidates found in one answer and counts of what could not be used."""

    candidates: list[Candidate] = field(default_factory=list)
    malformed: int = 0  # blocks with some text but no usable instruction + output
    dropped_incomplete: int = 0  # 1 when the last task was cut by the token limit and dropped
    # (task, reason, one-line detail): tasks whose boundaries are a guess, e.g. a "---" or
    # "Instruction:" line inside an output that may also start the next task.
    rejected: list[tuple[Candidate, str, str]] = field(default_factory=list)


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
# What every line matched by _FIELD, _TASK or _SEPARATOR starts with after its leading spaces: a
# cheap test that rules out most text lines before those three run.
_MAYBE_STRUCTURAL = re.compile(
    r"\s*(?:[-#+*_\u2022\d]|instruction|input|output|response|task|new)", re.IGNORECASE
)
# A header exactly as the prompt writes it: "4. Instruction: text", "4. Input:", "4. Output:".
_PLAIN_HEADER = re.compile(r"([0-9]{1,4})\. (Instruction|Input|Output):(.*)")
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
    if not _MAYBE_STRUCTURAL.match(line):
        return False
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
    opener: str = ""  # the line that opened the block, quoted in rejection details
    replaced: bool = False  # text (a title, a preamble) gave way to an "Instruction:" line
    closing: bool = False  # opened by separators that only a closing remark follows

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
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    lines = text.split("\n")
    if "```" not in text and "~~~" not in text:
        return lines  # no fence line at all
    first_structural = next((i for i, ln in enumerate(lines) if _is_structural(ln)), len(lines))
    first_text = next((i for i, ln in enumerate(lines) if ln.strip()), len(lines))
    drop: set[int] = set()
    for i in range(first_structural):
        # A continuation's first line is instruction text, so only a fence before it can wrap.
        if _FENCE.match(lines[i]) and (not continuation or i == first_text):
            drop.add(i)
    remaining = [i for i, ln in enumerate(lines) if _FENCE.match(ln) and i not in drop]
    # An unmatched bare fence at the end closes a wrapper that was opened; one with a language
    # tag, or any without an opened wrapper, is code inside an output, which we keep.
    if drop and len(remaining) % 2 == 1 and lines[remaining[-1]].strip() in ("```", "~~~"):
        last = remaining[-1]
        drop.add(last)
        tail = range(last + 1, len(lines))
        if not any(_is_structural(lines[i]) for i in tail):
            drop.update(tail)  # a remark after the closing wrapper fence
    return [ln for i, ln in enumerate(lines) if i not in drop]


def _unlabelled_start(output: list[str], number: int) -> int | None:
    """Index of the "N. instruction" line in an output when block N forgot its header."""
    for i in range(len(output) - 1, -1, -1):
        if _is_structural(output[i]):
            return None  # "2. Input: 4" in a list of examples, or a "---" kept in the output
        m = _LEADING_NUMBER.match(output[i].strip())
        if m and int(m.group(1)) == number:
            return i
    return None


def _split_unlabelled(block: _Block, number: int) -> list[str]:
    """Move "N. instruction" and what follows it out of ``block``'s output."""
    assert block.output is not None
    i = _unlabelled_start(block.output, number)
    assert i is not None
    moved = block.output[i:]
    del block.output[i:]
    first = moved[0].strip()
    moved[0] = _LEADING_NUMBER.sub("", first, count=1)
    return moved


def _header(line: str) -> _Header | None:
    if not _MAYBE_STRUCTURAL.match(line):
        return None
    return _field_header(line) or _task_header(line)


def _reaches_output(
    lines: list[str],
    k: int,
    *,
    text: bool,
    number: int | None,
    titled: bool = False,
    section: str = "instruction",
) -> tuple[bool, int | None]:
    """Follow a block whose body would start at ``lines[k]`` as ``_scan`` would.

    Returns whether it reaches an Output header with instruction text before the next block
    starts, and the block's number.
    """
    for line in itertools.islice(lines, k, None):
        if _SEPARATOR.match(line):
            break
        header = _header(line)
        if header is None or (header.kind == "task" and header.rest and not header.marked):
            text = text or (section == "instruction" and bool(line.strip()))
            continue
        if header.kind == "instruction" and titled and section == "instruction":
            # The title of a "Task N" block gives way to the real instruction.
            text, titled = bool(header.rest), False
            number = header.number if header.number is not None else number
            continue
        if header.kind in ("task", "instruction"):
            break
        if section == "instruction" or (header.kind == "output" and section == "input"):
            number = header.number if number is None else number
            if header.kind == "output":
                return text, number
            section = "input"
    return False, number


def _closing(lines: list[str]) -> list[bool]:
    """For each line, whether only separators, blank lines and a closing remark ("I hope these
    help") follow it. Computed from the end, so that many separators stay linear."""
    closing = [False] * len(lines)
    rest: list[str] = []  # the lines after i that are not separators, last first
    written = 0  # the non-blank ones: blank lines make no remark longer
    for i in range(len(lines) - 1, -1, -1):
        remark = "\n".join(reversed(rest)).strip()
        closing[i] = not remark or bool(_TRAILER.match(remark))
        line = lines[i]
        if _SEPARATOR.match(line):
            continue
        if _is_structural(line) or written >= 40:  # a remark is short and has no headers
            break
        rest.append(line)
        written += bool(line.strip())
    return closing


def _quote(line: str) -> str:
    line = line.strip()
    return repr(line if len(line) <= 60 else line[:57] + "...")


def _leave_output(
    lines: list[str], i: int, cur: _Block, numbered: int | None, closing: list[bool]
) -> bool:
    """Whether the structural line ``lines[i]`` inside ``cur``'s output ends that output.

    ``numbered`` is the number of the last numbered block before ``cur``. Splits that turn out
    to be guesses are rejected later, by ``_doubts``.
    """
    here = _instruction_and_number(cur)[1]
    here = numbered if here is None else here
    line = lines[i]
    if _SEPARATOR.match(line):
        if closing[i]:
            return True
        j = next((k for k in range(i + 1, len(lines)) if lines[k].strip()), None)
        if j is None:  # only blank lines follow: the end of the answer
            return True
        header = _header(lines[j])
        if _SEPARATOR.match(lines[j]) or (header and header.kind in ("input", "output")):
            return False  # a rule inside the output, or a block with no instruction
        if header is None:
            # Instruction text without a header ("###\n5. Name ...\n5. Input:") must reach its
            # output. Text before an "Instruction:" line would be thrown away as a preamble, so
            # then the separator stays in the output and the header line decides for itself.
            return _reaches_output(lines, j, text=False, number=None)[0]
        i, line = j, lines[j]
    header = _header(line)
    assert header is not None
    if header.kind in ("input", "output"):
        # "5. Input:" after task 4's output: task 5 forgot its Instruction header. Only a
        # complete "N. text / N. Input / N. Output" splits; "2. Input: 4" in a list stays.
        assert cur.output is not None and header.number is not None
        if _unlabelled_start(cur.output, header.number) is None:
            return False
        if header.kind == "output":
            return True
        return _reaches_output(lines, i + 1, text=True, number=header.number, section="input")[0]
    done, number = _reaches_output(
        lines, i + 1, text=bool(header.rest), number=header.number, titled=header.kind == "task"
    )
    if done:
        return True
    # Without an output, only a header that continues the numbering (or an unnumbered one in an
    # unnumbered answer) starts a task: the next one cut by the token limit, or one that lost its
    # output. "1. Instruction: read" in a list of steps, or a lone "Instruction:" line, stays.
    # "Task 2: wash up" in plain text reads as prose and never starts an incomplete task.
    if header.kind == "task" and header.rest and not header.marked:
        return False
    if number is None or here is None:
        return number is None and here is None
    return number > here


def _scan(lines: list[str], continuation_number: int | None) -> list[_Block]:
    if continuation_number is not None:
        cur = _Block(implicit=True, number=continuation_number, continuation=True)
    else:
        cur = _Block(implicit=True)
    blocks = [cur]
    closing = _closing(lines)
    numbered: int | None = None  # number of the last finished block that had one

    def start(block: _Block, line: str) -> _Block:
        nonlocal numbered
        number = _instruction_and_number(blocks[-1])[1]
        numbered = numbered if number is None else number
        block.opener = line
        blocks.append(block)
        return block

    def opened_by(header: _Header) -> _Block:
        """A block opened by a "Task N" or "Instruction:" line."""
        titled = header.kind == "task"
        block = _Block(implicit=False, number=header.number, titled=titled)
        if header.rest:
            block.instruction.append(header.rest)
        return block

    for i, line in enumerate(lines):
        header = _header(line)
        if cur.section == "output":
            structural = bool(_SEPARATOR.match(line)) or (
                header is not None
                and (
                    header.kind in ("task", "instruction")
                    or (
                        header.number is not None
                        and cur.number is not None
                        and header.number > cur.number
                    )
                )
            )
            if not (structural and _leave_output(lines, i, cur, numbered, closing)):
                cur.append(line)  # e.g. "Input:" or "---" inside an output: ordinary text
                continue
            if header is None:
                cur = start(_Block(implicit=True, closing=closing[i]), line)
            elif header.kind in ("input", "output"):
                moved = _split_unlabelled(cur, header.number)  # type: ignore[arg-type]
                cur = start(_Block(implicit=False, number=header.number), line)
                cur.instruction = moved
                setattr(cur, header.kind, [header.rest] if header.rest else [])
            else:
                cur = start(opened_by(header), line)
            continue
        if _SEPARATOR.match(line):
            cur = start(_Block(implicit=True), line)
            continue
        fresh = cur.implicit and not cur.has_io  # nothing but preamble or title so far
        if header is None:
            cur.append(line)
        elif header.kind == "task":
            if header.rest and not (header.marked or fresh):
                cur.append(line)
                continue
            cur = start(opened_by(header), line)
        elif header.kind == "instruction":
            if fresh or (cur.titled and not cur.has_io):
                # Preamble, or the title of a "Task N" block, gives way to the real instruction.
                if header.number is not None or not cur.titled:
                    cur.number = header.number
                cur.implicit, cur.titled, cur.continuation = False, False, False
                cur.replaced = any(ln.strip() for ln in cur.instruction)
                cur.instruction = [header.rest] if header.rest else []
                cur.opener = line
            else:
                cur = start(opened_by(header), line)
        elif cur.section == "instruction" or (header.kind == "output" and cur.section == "input"):
            if cur.number is None:
                cur.number = header.number
            setattr(cur, header.kind, [header.rest] if header.rest else [])
        else:
            cur.append(line)  # e.g. "Input:" inside an input: ordinary text
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


def _instruction_and_number(block: _Block) -> tuple[str, int | None]:
    """The instruction text and the task number as the candidate will carry them."""
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
        return text, number
    return _join(lines), number


def _to_candidate(block: _Block) -> Candidate | None:
    """The block's task, or None when it lacks an instruction or an output."""
    text, number = _instruction_and_number(block)
    if not text or block.output is None:
        return None
    raw_input = _join(block.input or [])
    return Candidate(
        instruction=text,
        input="" if _is_empty_input(raw_input) else raw_input,
        output=_join(block.output),
        meta={"number": number},
    )


def _doubts(
    blocks: list[_Block], has_task: list[bool], numbers: list[int | None]
) -> dict[int, str]:
    """Indices of ``blocks`` whose boundaries are guesses, with a one-line reason for each.

    A block "cuts" its predecessor when it starts inside that block's output. After each cut
    comes a run of blocks of which only the last can have an output: blocks that reach no
    output (text, or a bare header), then at most one task. A cut is a guess when that run holds
    text that reached no output, mixes numbered and unnumbered tasks, or when numbers stop
    increasing after it. Then the blocks after it may be output lines ("fake"), and the task it
    cut may have lost the end of its output ("damaged"); both are rejected.
    """
    doubts: dict[int, str] = {}
    fake: set[int] = set()

    def cut(k: int) -> bool:
        return k > 0 and blocks[k - 1].output is not None

    def bare(k: int) -> bool:  # headers only, e.g. "2. Instruction:" then "Output:"
        return not has_task[k] and not (blocks[k].has_text() or blocks[k].replaced)

    def reject(fakes: list[int], why: str) -> None:
        todo = list(fakes)
        while todo:
            k = todo.pop(0)
            fake.add(k)
            where = _quote(blocks[k].opener)
            doubts.setdefault(k, f"it may be lines of the output before it, from {where}: {why}")
            if k == 0 or k - 1 in fake or k - 1 in fakes:
                continue
            if bare(k - 1):
                todo.append(k - 1)  # nothing to lose there: the doubt goes on before it
            elif cut(k):
                doubts.setdefault(k - 1, f"its output may go on past {where}: {why}")

    # Numbers that stop increasing ("4, 5, 5"). The blocks since the last one numbered below may
    # be output lines if they cut an output or follow one that may be output lines. The highest
    # number so far counts even if its block is fake: in "1, 2, 2, 2" the third 2 is as doubtful
    # as the second. (After a stray "99", tasks up to 99 are rejected: tasks lost, none cut.)
    highest: int | None = None
    for k, now in enumerate(numbers):
        last = highest
        if now is not None:
            highest = now if highest is None else max(highest, now)
        if now is None or last is None or now > last:
            continue
        j = k - 1
        while j >= 0 and (numbers[j] is None or numbers[j] >= now):  # type: ignore[operator]
            j -= 1
        suspects: list[int] = []
        for i in range(j + 1, k):
            if cut(i) or i - 1 in fake or i - 1 in suspects:
                suspects.append(i)
        # The block itself only if it cut an output; otherwise the runs below judge it.
        reject(suspects + ([k] if cut(k) else []), f"task numbers go {last} -> {now}")

    for n, start in enumerate(starts := [k for k in range(1, len(blocks)) if cut(k)]):
        run = list(range(start, starts[n + 1] if n + 1 < len(starts) else len(blocks)))
        task = run[-1] if has_task[run[-1]] else None
        lead = run[:-1] if task is not None else run
        # Text that reached no output, even after a "###" that made it look like a remark.
        junk = any(not bare(i) and not blocks[i].closing for i in lead)
        if task is None:
            if junk:
                reject(lead, "what follows never reaches an output")
            continue  # only bare headers: the prompt's cue, or an answer cut right there
        # The number of the last task before the cut that is not output lines.
        earlier = (numbers[i] for i in range(start - 1, -1, -1) if i not in fake)
        trusted = next((m for m in earlier if m is not None), None)
        now = numbers[task]
        if junk:
            # Text that reached no output comes first ("5. Instruction: x" without output). The
            # task after it is real only if its number follows that of the task before the cut,
            # itself not output lines; a number that went down was rejected above.
            if now is not None and trusted is not None:
                continues = now > trusted and start - 1 not in fake
            else:
                continues = now is None and trusted is None and start - 1 not in fake
            reject(lead if continues else lead + [task], "what follows never reaches an output")
        elif (now is None) != (trusted is None):
            reject(lead + [task], "numbered and unnumbered tasks are mixed")
        elif any(i in fake for i in lead):
            reject([task], "it follows lines that may be output")
    return doubts


def _parse_plain(
    lines: list[str], continuation_number: int | None, finish_reason: str | None
) -> ParseResult | None:
    """The result of an answer written exactly in the prompt's format, or None if it is not.

    The format: blocks of "N. Instruction: text" (in a continuation, the first block's text line
    alone), "N. Input:" and "N. Output:" lines, with N increasing, separated by single ``###``
    lines, optionally one ``###`` before the first block and one at the end. No other line may be
    a header or a separator. For such an answer every ``###`` splits for sure and the general
    path finds exactly these tasks: none rejected, none malformed. Anything else returns None.
    """
    match = _PLAIN_HEADER.match
    n = len(lines)
    if not n:  # all lines were code fences
        return None
    i = 1 if continuation_number is None and n > 1 and lines[0] == "###" else 0
    tasks: list[Candidate] = []
    last: int | None = None  # the previous block's number
    closed = False  # a "###" ends the answer: even a cut answer's last task is whole
    while True:
        if i == 0 and continuation_number is not None:
            if _is_structural(lines[0]):
                return None
            number, instruction = continuation_number, lines[0].strip()
        else:
            m = match(lines[i])
            if m is None or m[2] != "Instruction":
                return None
            number, instruction = int(m[1]), m[3].strip()
        if not instruction or (last is not None and number <= last) or i + 1 >= n:
            return None
        m = match(lines[i + 1])
        if m is None or m[2] != "Input" or int(m[1]) != number:
            return None
        rest = m[3].lstrip()
        input_lines = [rest] if rest else []
        i += 2
        while True:
            if i >= n:
                return None
            m = match(lines[i])
            if m is not None and m[2] == "Output" and int(m[1]) == number:
                break
            if _is_structural(lines[i]):
                return None
            input_lines.append(lines[i])
            i += 1
        rest = m[3].lstrip()
        output_lines = [rest] if rest else []
        i += 1
        while i < n and lines[i] != "###":
            if _is_structural(lines[i]):
                return None
            output_lines.append(lines[i])
            i += 1
        raw_input = _join(input_lines)
        tasks.append(
            Candidate(
                instruction=instruction,
                input="" if _is_empty_input(raw_input) else raw_input,
                output=_join(output_lines),
                meta={"number": number},
            )
        )
        last = number
        if i >= n - 1 or (i == n - 2 and not lines[-1]):
            closed = i < n
            break
        i += 1

    result = ParseResult(tasks)
    if finish_reason == "length" and not closed:
        tasks.pop()
        result.dropped_incomplete = 1
    else:
        final = tasks[-1]
        tasks[-1] = Candidate(final.instruction, final.input, _strip_trailer(final.output), final.meta)
    return result


def parse_answer(
    text: str, *, continuation_number: int | None = None, finish_reason: str | None = None
) -> ParseResult:
    """Parse one model answer into candidates.

    ``continuation_number=K`` says ``text`` continues a prompt ending in ``"K. Instruction:"``, so
    its first lines are task K's instruction. With ``finish_reason="length"`` the last task is
    assumed cut off and dropped. Tasks whose boundaries are guesses go to ``rejected`` (reason
    ``ambiguous_structure``) instead of ``candidates``. Never raises on odd input.
    """
    if not isinstance(text, str) or not text.strip():
        return ParseResult([], 0, 0)
    lines = _normalize(text, continuation_number is not None)
    plain = _parse_plain(lines, continuation_number, finish_reason)
    if plain is not None:
        return plain
    blocks = _scan(lines, continuation_number)

    if finish_reason == "length" and blocks[-1].has_text():
        cut: _Block | None = blocks.pop()
    else:
        cut = None
    # Blocks of preamble or remarks only give no task; they still count as text after a cut.
    tasks = [None if b.implicit and not b.has_io else _to_candidate(b) for b in blocks]
    kept = [k for k, b in enumerate(blocks) if not (b.implicit and not b.has_io)]
    if cut is None and kept and (last := tasks[kept[-1]]) is not None:
        output = _strip_trailer(last.output)
        tasks[kept[-1]] = Candidate(last.instruction, last.input, output, last.meta)
    numbers = [_instruction_and_number(b)[1] if k in kept else None for k, b in enumerate(blocks)]
    doubts = _doubts(blocks, [t is not None for t in tasks], numbers)

    result = ParseResult(dropped_incomplete=1 if cut is not None else 0)
    for k in kept:
        cand = tasks[k]
        if cand is None:
            result.malformed += blocks[k].has_text()
        elif k in doubts:
            result.rejected.append((cand, AMBIGUOUS_STRUCTURE, doubts[k]))
        else:
            result.candidates.append(cand)
    return result
