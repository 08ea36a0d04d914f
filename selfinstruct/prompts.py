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
