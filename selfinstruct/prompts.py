"""Prompt text for asking a model to write new tasks (Alpaca-style one-step generation).

One request yields instruction, input and output together. The demos are shown as numbered
blocks and the prompt ends with the opening of the next block, so a completions model simply
keeps writing blocks; chat models get the same text plus an explicit request. The block format
is shared with ``selfinstruct.parse`` and the fake test server, so change them together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from .errors import ConfigError

__all__ = [
    "NO_INPUT",
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

_HEADER = """\
We are putting together {total} varied tasks for teaching an AI assistant to follow \
instructions. Every task has an instruction, an input and an output. Requirements:

1. Use a different verb in every instruction; do not repeat verbs across the list.
2. Mix many kinds of tasks, for example open-ended questions, classification, rewriting or \
editing text, logic and math reasoning, reading and explaining code, summarizing, extracting \
facts, brainstorming and giving advice.
3. Write everything in English.
4. Keep each instruction to one or two sentences. It may be a command or a question.
5. Give an input only when the task cannot be done without one. The input should then be a \
realistic, specific example (a short passage, a list, a code snippet, ...) of under about \
100 words. When the task needs no input, write {no_input} as the input.
6. The output must be a fitting and correct response to the instruction and input, in under \
100 words.
7. Every task must be doable by a language model working with text alone: leave out anything \
that needs seeing, hearing, browsing the internet or acting in the physical world.

Here is the list of {total} tasks:
"""

_BLOCK = "###\n{n}. Instruction: {instruction}\n{n}. Input:\n{input}\n{n}. Output:\n{output}\n"

_CUE = "###\n{n}. Instruction:"

_SYSTEM = (
    "You write varied, self-contained tasks for training an instruction-following assistant. "
    "You reply with task blocks only, in the exact format you are shown."
)

_CHAT_REQUEST = """
Now continue the list with {span}. Use exactly the block format above: a line with ###, \
then "N. Instruction:" followed by the instruction, "N. Input:" with the input (or \
{no_input}) on the next line, and "N. Output:" with the output on the next line, where N is \
the task number. Write nothing before or after the blocks.

"""


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


def _header_and_demos(demos: Sequence[_Task], tasks_per_prompt: int) -> str:
    blocks = "".join(
        render_block(i, d.instruction, d.input, d.output) for i, d in enumerate(demos, start=1)
    )
    return _HEADER.format(total=tasks_per_prompt, no_input=NO_INPUT) + blocks


def build_completion_prompt(demos: Sequence[_Task], *, tasks_per_prompt: int) -> str:
    """Prompt for /v1/completions: header, demos 1..k, then the cue ``###\\n{k+1}. Instruction:``.

    Raises ConfigError unless ``tasks_per_prompt`` exceeds the number of demos.
    """
    _check_counts(demos, tasks_per_prompt)
    return _header_and_demos(demos, tasks_per_prompt) + _CUE.format(n=len(demos) + 1)


def build_chat_messages(
    demos: Sequence[_Task], *, tasks_per_prompt: int
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
        _header_and_demos(demos, tasks_per_prompt)
        + _CHAT_REQUEST.format(span=span, no_input=NO_INPUT)
        + _CUE.format(n=first)
    )
    # One user turn, no system message: some chat templates (Gemma's, for one) reject the system
    # role, and a server would then answer 400 to every request.
    return [{"role": "user", "content": _SYSTEM + "\n\n" + user}]


def stop_sequences(tasks_per_prompt: int) -> list[str]:
    """Strings marking the start of block ``tasks_per_prompt + 1``, where generation should end."""
    n = tasks_per_prompt + 1
    # Not a bare "\n{n}.": that would also end an output holding a numbered list that long.
    # OpenAI accepts at most 4 stop strings.
    return [f"###\n{n}.", f"{n}. Instruction", f"{n}) Instruction", f"Instruction {n}:"]


def prompt_fingerprint() -> str:
    """``sha256:<hex>`` of all templates and PROMPT_VERSION, stored with a run to detect changes."""
    parts = (PROMPT_VERSION, _HEADER, _BLOCK, _CUE, _SYSTEM, _CHAT_REQUEST, NO_INPUT)
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
    return f"sha256:{digest}"


# -- Self-Instruct (``--method self-instruct``) -------------------------------------------------
# Stage 1 asks for a plain numbered list of instructions, stage 2 whether a task is
# classification, stage 3 for instances: label first for classification tasks (so the labels are
# not steered by an input written first), input first for the others.

SI_PROMPT_VERSION = "1"

_SI_LIST_HEADER = (
    "Below is a numbered list of tasks a person might ask an AI assistant to carry out. No two "
    "tasks are alike: they differ in topic, in the kind of work asked for and in wording.\n\n"
)
_SI_LIST_CHAT = (
    "\n\nContinue the list with items {first} to {last}. Write one task per line, each starting with "
    "its number, and nothing else."
)
_SI_CLASSIFY_HEADER = (
    "A classification task is one whose answer is a single label from a small, fixed set, for "
    "example positive or negative, or one of a few categories. For each task below, answer Yes if "
    "it is a classification task and No if it is not.\n\n"
)
_SI_CLASSIFY_DEMO = "Task: {instruction}\nClassification task: {answer}\n\n"
_SI_CLASSIFY_CUE = "Task: {instruction}\nClassification task:"
_SI_CLASSIFY_CHAT = "\n\nAnswer with Yes or No only."
_SI_CLF_HEADER = (
    "For each classification task below, first list its possible labels, separated by |, then write "
    "for each label an input for which that label is the right answer. Write \"Input: <none>\" when "
    "the task needs no input.\n\n"
)
_SI_GEN_HEADER = (
    "Write examples for each task below. An example is an input and the output that correctly "
    "carries out the task for that input. Write \"Input: <none>\" when the task needs no input. "
    "Give up to {max} examples per task.\n\n"
)
_SI_INSTANCES_CHAT = (
    "\n\nContinue for this last task in exactly the format above, and write nothing else."
)
SI_NO_INPUT = "<none>"


def _one_line(text: str) -> str:
    return " ".join(text.split()).rstrip(":")


def si_list_prompt(instructions: Sequence[str], *, total: int, chat: bool) -> str:
    """Stage 1: the demos as items 1..k and the opening of item k+1 (completions) or a request."""
    lines = "".join(f"{i}. {_one_line(text)}\n" for i, text in enumerate(instructions, 1))
    first = len(instructions) + 1
    if chat:
        return _SI_LIST_HEADER + lines.rstrip("\n") + _SI_LIST_CHAT.format(first=first, last=total)
    return _SI_LIST_HEADER + lines + f"{first}."


def si_list_stops(total: int) -> list[str]:
    return ["\n\n", f"\n{total + 1}.", f"\n{total + 1})"]


def si_classify_prompt(demos: Sequence[tuple[str, bool]], instruction: str, *, chat: bool) -> str:
    """Stage 2: labelled demos, then the question for ``instruction``."""
    text = _SI_CLASSIFY_HEADER + "".join(
        _SI_CLASSIFY_DEMO.format(instruction=_one_line(i), answer="Yes" if clf else "No") for i, clf in demos
    )
    text += _SI_CLASSIFY_CUE.format(instruction=_one_line(instruction))
    return text + _SI_CLASSIFY_CHAT if chat else text


def _si_input(text: str) -> str:
    return text.strip() or SI_NO_INPUT


def si_classification_instances_prompt(demos: Sequence[_SeedLike], instruction: str, *, chat: bool) -> str:
    """Stage 3, output first: labels, then an input for each label."""
    parts = [_SI_CLF_HEADER]
    for demo in demos:
        labels = list(dict.fromkeys(o.strip() for _, o in demo.instances))
        parts.append(f"Task: {_one_line(demo.instruction)}\nLabels: {' | '.join(labels)}\n")
        for inp, out in demo.instances:
            parts.append(f"Label: {out.strip()}\nInput: {_si_input(inp)}\n")
        parts.append("\n")
    parts.append(f"Task: {_one_line(instruction)}\nLabels:")
    text = "".join(parts)
    return text + _SI_INSTANCES_CHAT if chat else text


def si_generation_instances_prompt(
    demos: Sequence[_SeedLike], instruction: str, *, max_instances: int, chat: bool
) -> str:
    """Stage 3, input first: numbered examples of input and output."""
    parts = [_SI_GEN_HEADER.format(max=max_instances)]
    for demo in demos:
        parts.append(f"Task: {_one_line(demo.instruction)}\n")
        for k, (inp, out) in enumerate(demo.instances, 1):
            parts.append(f"Example {k}\nInput: {_si_input(inp)}\nOutput: {out.strip()}\n")
        parts.append("\n")
    parts.append(f"Task: {_one_line(instruction)}\nExample 1\n")
    text = "".join(parts)
    return text + _SI_INSTANCES_CHAT if chat else text


def si_instances_stops(max_instances: int, classification: bool) -> list[str]:
    stops = ["\nTask:"]
    if not classification:
        stops.append(f"Example {max_instances + 1}")
    return stops


def si_prompt_fingerprint() -> str:
    parts = (
        SI_PROMPT_VERSION, _SI_LIST_HEADER, _SI_LIST_CHAT, _SI_CLASSIFY_HEADER, _SI_CLASSIFY_DEMO,
        _SI_CLASSIFY_CUE, _SI_CLASSIFY_CHAT, _SI_CLF_HEADER, _SI_GEN_HEADER, _SI_INSTANCES_CHAT, SI_NO_INPUT,
    )  # fmt: skip
    return "sha256:" + hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


class _SeedLike(Protocol):
    @property
    def instruction(self) -> str: ...
    @property
    def instances(self) -> tuple[tuple[str, str], ...]: ...
