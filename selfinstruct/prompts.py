"""Prompt text for asking a model to write new tasks (Alpaca-style one-step generation).

One request yields instruction, input and output together. The demos are shown as numbered
blocks and the prompt ends with the opening of the next block, so a completions model simply
keeps writing blocks; chat models get the same text plus an explicit request. The block format
is shared with ``selfinstruct.parse`` and the fake test server, so change them together.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Protocol

from .errors import ConfigError

__all__ = [
    "DEFAULT_TEXTS",
    "NO_INPUT",
    "PromptTexts",
    "load_prompt_texts",
    "PROMPT_VERSION",
    "build_chat_messages",
    "build_completion_prompt",
    "prompt_fingerprint",
    "render_block",
    "stop_sequences",
]

# Bump whenever any template below changes: a run on disk refuses to resume with another prompt.
PROMPT_VERSION = "2"

NO_INPUT = "<noinput>"

_BLOCK = "###\n{n}. Instruction: {instruction}\n{n}. Input:\n{input}\n{n}. Output:\n{output}\n"

_CUE = "###\n{n}. Instruction:"

@dataclass(frozen=True)
class PromptTexts:
    """The prose of the prompts, which a user may replace (``--prompt-template FILE``).

    The structure around it (task blocks, numbering, ``Task:``/``Example N``/``Label:`` lines) is
    fixed, because the parsers read it. Defaults live in ``selfinstruct/data/prompts.json``.
    """

    alpaca_header: str
    alpaca_system: str
    alpaca_chat_request: str
    si_list_header: str
    si_list_chat: str
    si_classify_header: str
    si_clf_header: str
    si_gen_header: str
    si_instances_chat: str


# The placeholders each text may use ({{ and }} for literal braces).
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "alpaca_header": frozenset({"total", "no_input"}),
    "alpaca_chat_request": frozenset({"span", "no_input"}),
    "si_list_chat": frozenset({"first", "last"}),
    "si_gen_header": frozenset({"max"}),
}


def _read_texts(raw: str, where: str) -> dict[str, str]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"prompt template {where} is not valid JSON ({exc}); see README, 'Prompts'") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"prompt template {where} must be a JSON object of text names to texts")
    allowed = [f.name for f in fields(PromptTexts)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"prompt template {where}: unknown text(s) {', '.join(unknown)}; the names are {', '.join(allowed)}")
    for name, text in data.items():
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"prompt template {where}: {name} must be a non-empty string")
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise ConfigError(f"prompt template {where}: {name}: {exc} (write {{{{ and }}}} for literal braces)") from exc
        extra = used - PLACEHOLDERS.get(name, frozenset())
        if extra:
            usable = ", ".join(sorted(PLACEHOLDERS.get(name, ()))) or "none"
            raise ConfigError(
                f"prompt template {where}: {name} uses {', '.join('{' + e + '}' for e in sorted(extra))}; "
                f"it may use: {usable} (write {{{{ and }}}} for literal braces)"
            )
    return data


def texts_with_overrides(
    packaged: str, path: str | os.PathLike[str] | None, what: str, read: Callable[[str, str], dict[str, str]]
) -> dict[str, str]:
    """The texts of the packaged JSON ``data/<packaged>``, with those in the user's file ``path`` replacing them.

    ``read(raw, where)`` parses and checks one file's JSON.
    """
    texts = read(files("selfinstruct").joinpath(f"data/{packaged}").read_text(encoding="utf-8"), "(packaged)")
    if path is not None:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}; check the path") from exc
        texts.update(read(raw, str(path)))
    return texts


def load_prompt_texts(path: str | os.PathLike[str] | None = None) -> PromptTexts:
    """The packaged texts, with those named in the JSON file ``path`` replaced."""
    return PromptTexts(**texts_with_overrides("prompts.json", path, "prompt template", _read_texts))


DEFAULT_TEXTS = load_prompt_texts()


class _Task(Protocol):
    """Anything shown as a demo: SeedTask and Candidate both fit."""

    @property
    def instruction(self) -> str: ...
    @property
    def input(self) -> str: ...
    @property
    def output(self) -> str: ...


def render_block(number: int, instruction: str, input: str, output: str) -> str:
    """One task as a numbered block, ending with a newline; an empty input becomes ``<noinput>``."""
    return _BLOCK.format(
        n=number,
        instruction=instruction.strip(),
        input=input.strip() or NO_INPUT,
        output=output.strip(),
    )


def _check_counts(demos: Sequence[_Task], tasks_per_prompt: int) -> None:
    if tasks_per_prompt <= len(demos):
        raise ConfigError(
            f"tasks per prompt ({tasks_per_prompt}) must be larger than the number of "
            f"demonstrations ({len(demos)}); raise the former or lower the latter"
        )


def _header_and_demos(demos: Sequence[_Task], tasks_per_prompt: int, texts: PromptTexts) -> str:
    blocks = "".join(
        render_block(i, d.instruction, d.input, d.output) for i, d in enumerate(demos, start=1)
    )
    return texts.alpaca_header.format(total=tasks_per_prompt, no_input=NO_INPUT) + blocks


def build_completion_prompt(demos: Sequence[_Task], *, tasks_per_prompt: int, texts: PromptTexts = DEFAULT_TEXTS) -> str:
    """Prompt for /v1/completions: header, demos 1..k, then the cue ``###\\n{k+1}. Instruction:``.

    Raises ConfigError unless ``tasks_per_prompt`` exceeds the number of demos.
    """
    _check_counts(demos, tasks_per_prompt)
    return _header_and_demos(demos, tasks_per_prompt, texts) + _CUE.format(n=len(demos) + 1)


def build_chat_messages(
    demos: Sequence[_Task], *, tasks_per_prompt: int, texts: PromptTexts = DEFAULT_TEXTS
) -> list[dict[str, str]]:
    """Messages for /v1/chat/completions: one user turn (a role sentence first), ending in the cue.

    The user turn repeats the completion prompt and asks for the remaining tasks explicitly.
    """
    _check_counts(demos, tasks_per_prompt)
    first = len(demos) + 1
    span = (
        f"task {first}"
        if first == tasks_per_prompt
        else f"tasks {first} to {tasks_per_prompt}"
    )
    user = (
        _header_and_demos(demos, tasks_per_prompt, texts)
        + texts.alpaca_chat_request.format(span=span, no_input=NO_INPUT)
        + _CUE.format(n=first)
    )
    # One user turn, no system message: some chat templates (Gemma's, for one) reject the system
    # role, and a server would then answer 400 to every request.
    return [{"role": "user", "content": texts.alpaca_system + "\n\n" + user}]


def stop_sequences(tasks_per_prompt: int) -> list[str]:
    """Strings marking the start of block ``tasks_per_prompt + 1``, where generation should end."""
    n = tasks_per_prompt + 1
    # Not a bare "\n{n}.": that would also end an output holding a numbered list that long.
    # OpenAI accepts at most 4 stop strings.
    return [f"###\n{n}.", f"{n}. Instruction", f"{n}) Instruction", f"Instruction {n}:"]


def prompt_fingerprint(texts: PromptTexts = DEFAULT_TEXTS) -> str:
    """``sha256:<hex>`` of all templates and PROMPT_VERSION, stored with a run to detect changes."""
    parts = (PROMPT_VERSION, texts.alpaca_header, _BLOCK, _CUE, texts.alpaca_system, texts.alpaca_chat_request, NO_INPUT)
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
    return f"sha256:{digest}"


# -- Self-Instruct (``--method self-instruct``) -------------------------------------------------
# Stage 1 asks for a plain numbered list of instructions, stage 2 whether a task is
# classification, stage 3 for instances: label first for classification tasks (so the labels are
# not steered by an input written first), input first for the others.

SI_PROMPT_VERSION = "1"

_SI_CLASSIFY_DEMO = "Task: {instruction}\nClassification task: {answer}\n\n"
_SI_CLASSIFY_CUE = "Task: {instruction}\nClassification task:"
_SI_CLASSIFY_CHAT = "\n\nAnswer with Yes or No only."
SI_NO_INPUT = "<none>"


def _one_line(text: str) -> str:
    return " ".join(text.split()).rstrip(":")


def si_list_prompt(instructions: Sequence[str], *, total: int, chat: bool, texts: PromptTexts = DEFAULT_TEXTS) -> str:
    """Stage 1: the demos as items 1..k and the opening of item k+1 (completions) or a request."""
    lines = "".join(f"{i}. {_one_line(text)}\n" for i, text in enumerate(instructions, 1))
    first = len(instructions) + 1
    if chat:
        return texts.si_list_header + lines.rstrip("\n") + texts.si_list_chat.format(first=first, last=total)
    return texts.si_list_header + lines + f"{first}."


def si_list_stops(total: int) -> list[str]:
    return ["\n\n", f"\n{total + 1}.", f"\n{total + 1})"]


def si_classify_prompt(
    demos: Sequence[tuple[str, bool]], instruction: str, *, chat: bool, texts: PromptTexts = DEFAULT_TEXTS
) -> str:
    """Stage 2: labelled demos, then the question for ``instruction``."""
    text = texts.si_classify_header + "".join(
        _SI_CLASSIFY_DEMO.format(instruction=_one_line(i), answer="Yes" if clf else "No") for i, clf in demos
    )
    text += _SI_CLASSIFY_CUE.format(instruction=_one_line(instruction))
    return text + _SI_CLASSIFY_CHAT if chat else text


def _si_input(text: str) -> str:
    return text.strip() or SI_NO_INPUT


def si_classification_instances_prompt(
    demos: Sequence[_SeedLike], instruction: str, *, chat: bool, texts: PromptTexts = DEFAULT_TEXTS
) -> str:
    """Stage 3, output first: labels, then an input for each label."""
    parts = [texts.si_clf_header]
    for demo in demos:
        labels = list(dict.fromkeys(o.strip() for _, o in demo.instances))
        parts.append(f"Task: {_one_line(demo.instruction)}\nLabels: {' | '.join(labels)}\n")
        for inp, out in demo.instances:
            parts.append(f"Label: {out.strip()}\nInput: {_si_input(inp)}\n")
        parts.append("\n")
    parts.append(f"Task: {_one_line(instruction)}\nLabels:")
    text = "".join(parts)
    return text + texts.si_instances_chat if chat else text


def si_generation_instances_prompt(
    demos: Sequence[_SeedLike], instruction: str, *, max_instances: int, chat: bool, texts: PromptTexts = DEFAULT_TEXTS
) -> str:
    """Stage 3, input first: numbered examples of input and output."""
    parts = [texts.si_gen_header.format(max=max_instances)]
    for demo in demos:
        parts.append(f"Task: {_one_line(demo.instruction)}\n")
        for k, (inp, out) in enumerate(demo.instances, 1):
            parts.append(f"Example {k}\nInput: {_si_input(inp)}\nOutput: {out.strip()}\n")
        parts.append("\n")
    parts.append(f"Task: {_one_line(instruction)}\nExample 1\n")
    text = "".join(parts)
    return text + texts.si_instances_chat if chat else text


def si_instances_stops(max_instances: int, classification: bool) -> list[str]:
    stops = ["\nTask:"]
    if not classification:
        stops.append(f"Example {max_instances + 1}")
    return stops


def si_prompt_fingerprint(texts: PromptTexts = DEFAULT_TEXTS) -> str:
    parts = (
        SI_PROMPT_VERSION, texts.si_list_header, texts.si_list_chat, texts.si_classify_header, _SI_CLASSIFY_DEMO,
        _SI_CLASSIFY_CUE, _SI_CLASSIFY_CHAT, texts.si_clf_header, texts.si_gen_header, texts.si_instances_chat,
        SI_NO_INPUT,
    )  # fmt: skip
    return "sha256:" + hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


class _SeedLike(Protocol):
    @property
    def instruction(self) -> str: ...
    @property
    def instances(self) -> tuple[tuple[str, str], ...]: ...
