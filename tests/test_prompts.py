"""Prompt builder: the exact block format, the closing cue, stop strings and the fingerprint."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from selfinstruct import prompts
from selfinstruct.errors import ConfigError
from selfinstruct.parse import parse_answer
from selfinstruct.prompts import (
    PROMPT_VERSION,
    build_chat_messages,
    build_completion_prompt,
    prompt_fingerprint,
    render_block,
    stop_sequences,
)
from selfinstruct.records import Candidate, SeedTask

DEMOS = [
    SeedTask(
        "seed_1", "tips", "Give three tips for staying healthy.",
        (("", "1. Eat well\n2. Sleep\n3. Move"),),
    ),
    SeedTask(
        "seed_2", "sent", "Classify the sentiment of the review.",
        (("The soup was cold.", "Negative"),), True,
    ),
    Candidate("Explain what this function returns.", "def f(x):\n    return x * 2", "Twice it."),
]


def test_render_block_exact_format() -> None:
    assert render_block(7, " Name a prime. ", "", " 2 ") == (
        "###\n7. Instruction: Name a prime.\n7. Input:\n<noinput>\n7. Output:\n2\n"
    )
    assert render_block(2, "Fix the code.", "x = = 1\ny = 2", "x = 1") == (
        "###\n2. Instruction: Fix the code.\n2. Input:\nx = = 1\ny = 2\n2. Output:\nx = 1\n"
    )


def test_completion_prompt_numbers_demos_and_ends_with_cue() -> None:
    text = build_completion_prompt(DEMOS, tasks_per_prompt=20)
    assert text.endswith("\n###\n4. Instruction:")
    assert re.findall(r"^(\d+)\. Instruction:", text, re.M) == ["1", "2", "3", "4"]
    assert re.findall(r"^(\d+)\. Output:", text, re.M) == ["1", "2", "3"]
    assert "list of 20 tasks" in text
    # Input-less demos show the placeholder; multi-line inputs keep their lines.
    assert "1. Input:\n<noinput>\n1. Output:" in text
    assert "3. Input:\ndef f(x):\n    return x * 2\n3. Output:" in text
    # The demos are exactly the rendered blocks, in order, before the cue.
    blocks = "".join(
        render_block(i, d.instruction, d.input, d.output) for i, d in enumerate(DEMOS, start=1)
    )
    assert text.endswith(blocks + "###\n4. Instruction:")


def test_completion_prompt_header_states_requirements() -> None:
    header = build_completion_prompt([], tasks_per_prompt=5)
    assert header.endswith("###\n1. Instruction:")
    lowered = header.lower()
    phrases = ("verb", "english", "<noinput>", "100 words", "classification", "code", "text alone")
    for phrase in phrases:
        assert phrase in lowered, phrase


def test_prompt_parses_back_to_its_demos() -> None:
    # The header's own numbered rules must not be mistaken for tasks.
    result = parse_answer(build_completion_prompt(DEMOS, tasks_per_prompt=10))
    assert [(c.instruction, c.input, c.output) for c in result.candidates] == [
        (d.instruction, d.input, d.output) for d in DEMOS
    ]
    assert result.malformed == 0


def test_chat_messages() -> None:
    messages = build_chat_messages(DEMOS, tasks_per_prompt=8)
    # A single user turn: some chat templates reject a system message.
    assert [m["role"] for m in messages] == ["user"]
    user = messages[0]["content"]
    assert user.endswith("\n###\n4. Instruction:")
    assert "tasks 4 to 8" in user
    assert "list of 8 tasks" in user
    assert render_block(3, DEMOS[2].instruction, DEMOS[2].input, DEMOS[2].output) in user
    single = build_chat_messages(DEMOS, tasks_per_prompt=4)[0]["content"]
    assert "task 4." in single and "tasks 4 to" not in single


@pytest.mark.parametrize("tasks", [3, 2])
def test_too_few_tasks_per_prompt_is_a_config_error(tasks: int) -> None:
    with pytest.raises(ConfigError, match="tasks per prompt"):
        build_completion_prompt(DEMOS, tasks_per_prompt=tasks)
    with pytest.raises(ConfigError):
        build_chat_messages(DEMOS, tasks_per_prompt=tasks)


def test_stop_sequences() -> None:
    stops = stop_sequences(20)
    assert 1 <= len(stops) <= 4
    assert "###\n21." in stops and "21. Instruction" in stops
    assert not any("20" in s for s in stops)
    # A completion that runs past task 20 is cut at one of them...
    runaway = (
        "x\n###\n20. Instruction: a\n20. Input:\n<noinput>\n20. Output:\nb\n###\n21. Instruction: c"
    )
    cut = min(runaway.find(s) for s in stops if s in runaway)
    assert runaway[:cut].endswith("20. Output:\nb\n")
    # ...while a long numbered list inside an output is not.
    long_list = "\n".join(f"{i}. item" for i in range(1, 30))
    assert not any(s in long_list for s in stops)


def test_fingerprint_is_stable_and_tracks_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    first = prompt_fingerprint()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first)
    assert prompt_fingerprint() == first
    assert PROMPT_VERSION
    texts = prompts.DEFAULT_TEXTS
    changed_header = prompt_fingerprint(replace(texts, alpaca_header=texts.alpaca_header.replace("English", "plain English")))
    assert changed_header != first
    assert prompt_fingerprint() == first
    monkeypatch.setattr(prompts, "PROMPT_VERSION", PROMPT_VERSION + ".1")
    assert prompt_fingerprint() not in (first, changed_header)
    monkeypatch.undo()
    assert prompt_fingerprint(replace(texts, alpaca_chat_request=texts.alpaca_chat_request + " ")) != first


def test_a_prompt_template_file_replaces_the_prose(tmp_path: Path) -> None:
    template = tmp_path / "legal.json"
    template.write_text(json.dumps({"alpaca_header": "Write {total} tasks for lawyers. Empty input: {no_input}.\n"}))
    texts = prompts.load_prompt_texts(template)
    assert texts.alpaca_header.startswith("Write {total} tasks for lawyers")
    assert texts.alpaca_system == prompts.DEFAULT_TEXTS.alpaca_system
    prompt = build_completion_prompt([], tasks_per_prompt=5, texts=texts)
    assert prompt.startswith("Write 5 tasks for lawyers. Empty input: <noinput>.")
    assert prompt_fingerprint(texts) != prompt_fingerprint()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"alpaca_heder": "x"}', "unknown text(s) alpaca_heder"),
        ('{"alpaca_header": "Write {count} tasks"}', "uses {count}; it may use: no_input, total"),
        ('{"si_list_header": ""}', "must be a non-empty string"),
    ],
)
def test_a_bad_prompt_template_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    template = tmp_path / "t.json"
    template.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        prompts.load_prompt_texts(template)
