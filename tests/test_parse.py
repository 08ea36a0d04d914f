"""Answer parser: a table of realistic model answers, continuation, truncation, round trips."""

from __future__ import annotations

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from selfinstruct import parse
from selfinstruct.parse import ParseResult, parse_answer
from selfinstruct.prompts import render_block
from selfinstruct.records import Candidate

Task = tuple[str, str, str]  # (instruction, input, output)

CANONICAL = """###
4. Instruction: Rewrite the sentence in the passive voice.
4. Input:
The committee approved the budget.
4. Output:
The budget was approved by the committee.
###
5. Instruction: What is the boiling point of water at sea level in Celsius?
5. Input:
<noinput>
5. Output:
100 degrees Celsius.
###
"""
CANONICAL_TASKS: list[Task] = [
    (
        "Rewrite the sentence in the passive voice.",
        "The committee approved the budget.",
        "The budget was approved by the committee.",
    ),
    ("What is the boiling point of water at sea level in Celsius?", "", "100 degrees Celsius."),
]

# (id, answer, expected tasks, expected numbers, expected malformed)
CASES: list[tuple[str, str, list[Task], list[int | None], int]] = [
    ("canonical", CANONICAL, CANONICAL_TASKS, [4, 5], 0),
    (
        "numbering_restarted",
        CANONICAL.replace("4.", "1.").replace("5.", "2."),
        CANONICAL_TASKS,
        [1, 2],
        0,
    ),
    ("numbering_skipped", CANONICAL.replace("5.", "9."), CANONICAL_TASKS, [4, 9], 0),
    (
        "numbering_missing",
        CANONICAL.replace("4. ", "").replace("5. ", ""),
        CANONICAL_TASKS,
        [None, None],
        0,
    ),
    (
        "bold_headers",
        "**Instruction:** Rewrite the sentence in the passive voice.\n"
        "**Input:** The committee approved the budget.\n"
        "**Output:** The budget was approved by the committee.\n\n"
        "**Instruction:** What is the boiling point of water at sea level in Celsius?\n"
        "**Input:** <noinput>\n"
        "**Output:** 100 degrees Celsius.\n",
        CANONICAL_TASKS,
        [None, None],
        0,
    ),
    (
        "bold_numbered_headers_and_italics",
        "**4. Instruction:** Rewrite the sentence in the passive voice.\n"
        "*4. Input:*\nThe committee approved the budget.\n"
        "__4. Output:__\nThe budget was approved by the committee.\n"
        "5. **Instruction**: What is the boiling point of water at sea level in Celsius?\n"
        "5. **Input**: *None*\n"
        "5. **Output**: 100 degrees Celsius.",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "whole_line_bold",
        "**Instruction: Rewrite the sentence in the passive voice.**\n"
        "**Input: The committee approved the budget.**\n"
        "**Output:** The budget was approved by the committee.\n",
        CANONICAL_TASKS[:1],
        [None],
        0,
    ),
    (
        "instruction_n_style",
        "Instruction 4: Rewrite the sentence in the passive voice.\n"
        "Input 4: The committee approved the budget.\n"
        "Output 4: The budget was approved by the committee.\n"
        "Instruction 5: What is the boiling point of water at sea level in Celsius?\n"
        "Input 5: <noinput>\n"
        "Output 5: 100 degrees Celsius.\n",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "task_n_headers",
        "Task 4\nInstruction: Rewrite the sentence in the passive voice.\n"
        "Input: The committee approved the budget.\n"
        "Output: The budget was approved by the committee.\n\n"
        "Task 5\nInstruction: What is the boiling point of water at sea level in Celsius?\n"
        "Input: N/A\nOutput: 100 degrees Celsius.\n",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "markdown_task_headings",
        "### Task 4\n**Instruction:** Rewrite the sentence in the passive voice.\n"
        "**Input:** The committee approved the budget.\n"
        "**Output:** The budget was approved by the committee.\n\n---\n\n"
        "### Task 5: Science trivia\n**Instruction:** What is the boiling point of water at sea "
        "level in Celsius?\n**Input:** No input\n**Output:** 100 degrees Celsius.\n",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "task_title_is_the_instruction",
        "Task 4: Rewrite the sentence in the passive voice.\n"
        "Input: The committee approved the budget.\n"
        "Output: The budget was approved by the committee.\n",
        CANONICAL_TASKS[:1],
        [4],
        0,
    ),
    (
        "bulleted_bold_fields_under_task_heading",
        "**Task 4:**\n- **Instruction:** Rewrite the sentence in the passive voice.\n"
        "- **Input:** The committee approved the budget.\n"
        "- **Output:** The budget was approved by the committee.\n\n"
        "5. **Instruction:** What is the boiling point of water at sea level in Celsius?\n"
        "   **Input:** <noinput>\n   **Output:** 100 degrees Celsius.\n",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "paren_numbers",
        "4) Instruction: Rewrite the sentence in the passive voice.\n"
        "4) Input: The committee approved the budget.\n"
        "4) Output: The budget was approved by the committee.\n",
        CANONICAL_TASKS[:1],
        [4],
        0,
    ),
    (
        "instruction_on_next_line",
        "Instruction:\nRewrite the sentence in the passive voice.\n"
        "Input:\nThe committee approved the budget.\n"
        "Output:\nThe budget was approved by the committee.\n",
        CANONICAL_TASKS[:1],
        [None],
        0,
    ),
    (
        "noinput_on_one_line",
        "1. Instruction: What is the boiling point of water at sea level in Celsius?\n"
        "1. Input: <noinput>\n1. Output: 100 degrees Celsius.",
        CANONICAL_TASKS[1:],
        [1],
        0,
    ),
    (
        "blocks_without_separators",
        CANONICAL.replace("###\n", ""),
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "extra_blank_lines",
        CANONICAL.replace("\n", "\n\n\n"),
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "chatty_preamble_and_remark",
        "Sure! Here are more tasks:\n\n" + CANONICAL.rstrip("#\n")
        + "\n\nI hope these tasks are useful. Let me know if you need more!\n",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "chat_reply_continuing_the_cue_after_a_preamble",
        "Sure! Here are the remaining tasks:\nRewrite the sentence in the passive voice.\n"
        "4. Input:\nThe committee approved the budget.\n4. Output:\n"
        "The budget was approved by the committee.\n",
        CANONICAL_TASKS[:1],
        [4],
        0,
    ),
    (
        "remarks_about_the_tasks_are_cut_but_real_last_paragraphs_kept",
        "###\n1. Instruction: Divide 7 by 2 in Python.\n1. Input:\n<noinput>\n1. Output:\n"
        "7 // 2 gives 3.\n\nNote: // rounds down.\n\nNote: all tasks above are in English.",
        [("Divide 7 by 2 in Python.", "", "7 // 2 gives 3.\n\nNote: // rounds down.")],
        [1],
        0,
    ),
    (
        "remark_after_final_separator",
        CANONICAL + "These tasks cover rewriting and science.\n",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "code_fence_wrapper",
        "```\n" + CANONICAL + "```\n",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "preamble_then_fenced_answer_then_remark",
        "Here are the next tasks:\n```markdown\n" + CANONICAL + "```\nFeel free to ask for more.",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "code_fence_wrapper_closing_right_after_last_output",
        "```text\n" + CANONICAL.rstrip("#\n") + "\n```\nHope this helps!",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "windows_newlines",
        CANONICAL.replace("\n", "\r\n"),
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "empty_input_spellings",
        "".join(
            f"###\n{i}. Instruction: Name a color.\n{i}. Input:\n{spelling}\n{i}. Output:\nRed\n"
            for i, spelling in enumerate(
                ["<no input>", "NONE", "n/a", "", "No Input", "<NoInput>"], start=1
            )
        ),
        [("Name a color.", "", "Red")] * 6,
        [1, 2, 3, 4, 5, 6],
        0,
    ),
    (
        "multiline_code_and_list_kept",
        "###\n1. Instruction: Explain what this function does.\n1. Input:\n"
        "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n"
        "1. Output:\nIt adds up the numbers:\n\n1. start at zero\n2. add each item\n"
        "###\n2. Instruction: List three primary colors.\n2. Input:\n<noinput>\n2. Output:\n"
        "- red\n- blue\n- yellow\n",
        [
            (
                "Explain what this function does.",
                "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s",
                "It adds up the numbers:\n\n1. start at zero\n2. add each item",
            ),
            ("List three primary colors.", "", "- red\n- blue\n- yellow"),
        ],
        [1, 2],
        0,
    ),
    (
        "fenced_code_inside_output_is_kept",
        "###\n1. Instruction: Write a Python expression that squares x.\n1. Input:\n<noinput>\n"
        "1. Output:\n```python\nx ** 2\n```\n###\n",
        [("Write a Python expression that squares x.", "", "```python\nx ** 2\n```")],
        [1],
        0,
    ),
    (
        "empty_output_is_still_a_candidate",
        "###\n1. Instruction: Say nothing at all.\n1. Input:\n<noinput>\n1. Output:\n\n###\n",
        [("Say nothing at all.", "", "")],
        [1],
        0,
    ),
    (
        "missing_output_is_malformed",
        "###\n1. Instruction: Translate 'cat' into French.\n1. Input:\n<noinput>\n"
        + CANONICAL,
        CANONICAL_TASKS,
        [4, 5],
        1,
    ),
    (
        "missing_instruction_text_is_malformed",
        "###\n1. Instruction:\n1. Input:\nSome text.\n1. Output:\nAn answer.\n" + CANONICAL,
        CANONICAL_TASKS,
        [4, 5],
        1,
    ),
    (
        "instruction_header_word_missing_after_separator",
        "###\n4. Rewrite the sentence in the passive voice.\n4. Input:\n"
        "The committee approved the budget.\n4. Output:\n"
        "The budget was approved by the committee.\n",
        CANONICAL_TASKS[:1],
        [4],
        0,
    ),
    (
        "instruction_header_word_missing_without_separator",
        "4. Instruction: Rewrite the sentence in the passive voice.\n4. Input:\n"
        "The committee approved the budget.\n4. Output:\n"
        "The budget was approved by the committee.\n"
        "5. What is the boiling point of water at sea level in Celsius?\n5. Input:\n<noinput>\n"
        "5. Output:\n100 degrees Celsius.\n",
        CANONICAL_TASKS,
        [4, 5],
        0,
    ),
    (
        "io_words_inside_output_are_text",
        "###\n1. Instruction: Describe what a sorting function does.\n1. Input:\n<noinput>\n"
        "1. Output:\nIt takes a list.\nInput: [3, 1, 2]\n1. Input: any list\nOutput: [1, 2, 3]\n",
        [
            (
                "Describe what a sorting function does.",
                "",
                "It takes a list.\nInput: [3, 1, 2]\n1. Input: any list\nOutput: [1, 2, 3]",
            )
        ],
        [1],
        0,
    ),
    (
        "alpaca_style_response_headers",
        "### Instruction:\nRewrite the sentence in the passive voice.\n\n### Input:\n"
        "The committee approved the budget.\n\n### Response:\n"
        "The budget was approved by the committee.\n",
        CANONICAL_TASKS[:1],
        [None],
        0,
    ),
]


@pytest.mark.parametrize(
    ("answer", "tasks", "numbers", "malformed"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_parse_table(
    answer: str, tasks: list[Task], numbers: list[int | None], malformed: int
) -> None:
    result = parse_answer(answer)
    assert [(c.instruction, c.input, c.output) for c in result.candidates] == tasks
    assert [c.meta["number"] for c in result.candidates] == numbers
    assert result.malformed == malformed
    assert result.dropped_incomplete == 0


CONTINUATION = (
    " Rewrite the sentence in the passive voice.\n4. Input:\nThe committee approved the budget.\n"
    "4. Output:\nThe budget was approved by the committee.\n###\n5. Instruction: What is the "
    "boiling point of water at sea level in Celsius?\n5. Input:\n<noinput>\n5. Output:\n"
    "100 degrees Celsius.\n###\n"
)


def test_continuation_first_instruction_comes_before_input_line() -> None:
    result = parse_answer(CONTINUATION, continuation_number=4)
    assert [(c.instruction, c.input, c.output) for c in result.candidates] == CANONICAL_TASKS
    assert [c.meta["number"] for c in result.candidates] == [4, 5]
    assert (result.malformed, result.dropped_incomplete) == (0, 0)


def test_continuation_with_unnumbered_input_line_and_leading_number_kept() -> None:
    # After "4. Instruction:" the text is the instruction verbatim, even if it starts with digits.
    text = " 3. Explain the rule in one sentence.\nInput:\n<noinput>\nOutput:\nIt is.\n"
    result = parse_answer(text, continuation_number=4)
    assert [(c.instruction, c.output, c.meta["number"]) for c in result.candidates] == [
        ("3. Explain the rule in one sentence.", "It is.", 4)
    ]


def test_continuation_where_model_restarts_the_block() -> None:
    # Chat models often repeat the cue or chat first; the explicit header wins.
    for prefix in ("", "Sure! Here are the remaining tasks:\n\n", "\n"):
        text = prefix + "###\n4. Instruction:" + CONTINUATION
        result = parse_answer(text, continuation_number=4)
        assert [(c.instruction, c.input, c.output) for c in result.candidates] == CANONICAL_TASKS
        assert result.malformed == 0


def test_continuation_without_output_is_malformed() -> None:
    text = " Name the capital of Peru.\n4. Input:\n<noinput>\n###\n" + CANONICAL
    result = parse_answer(text, continuation_number=4)
    assert [c.instruction for c in result.candidates] == [t[0] for t in CANONICAL_TASKS]
    assert result.malformed == 1


def test_length_drops_the_cut_last_task() -> None:
    cut = CANONICAL.rstrip("#\n")[:-8]  # output of task 5 cut mid-word
    result = parse_answer(cut, finish_reason="length")
    assert [c.instruction for c in result.candidates] == [CANONICAL_TASKS[0][0]]
    assert (result.malformed, result.dropped_incomplete) == (0, 1)
    # Without the hint the cut task is returned as written.
    assert len(parse_answer(cut).candidates) == 2


def test_length_cut_inside_instruction_is_not_counted_malformed() -> None:
    text = CANONICAL + "6. Instruction: Summarize the"
    result = parse_answer(text, finish_reason="length")
    assert len(result.candidates) == 2
    assert (result.malformed, result.dropped_incomplete) == (0, 1)
    assert parse_answer(text).malformed == 1  # the same text, finished normally, is malformed


def test_length_in_continuation_mode() -> None:
    result = parse_answer(" Name three rivers in", continuation_number=4, finish_reason="length")
    assert result == ParseResult([], 0, 1)
    text = CONTINUATION + "6. Instruction: Sort"
    result = parse_answer(text, continuation_number=4, finish_reason="length")
    assert len(result.candidates) == 2 and result.dropped_incomplete == 1


def test_length_when_answer_ended_at_a_separator_keeps_everything() -> None:
    result = parse_answer(CANONICAL, finish_reason="length")
    assert len(result.candidates) == 2 and result.dropped_incomplete == 0


def test_stop_finish_reason_keeps_last_task() -> None:
    result = parse_answer(CANONICAL.rstrip("#\n"), finish_reason="stop")
    assert len(result.candidates) == 2 and result.dropped_incomplete == 0


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   \n\n",
        "I'm sorry, but I can't help with that.",
        "###\n###\n###",
        "```\n```",
        "Instruction:",
        "1. Input:\n2. Output:\n",
        "\x00\x01 random ### bytes **** \r\r\n",
        "Task 3",
    ],
)
def test_garbage_gives_no_candidates(garbage: str) -> None:
    result = parse_answer(garbage)
    assert result.candidates == []
    assert result.malformed >= 0 and result.dropped_incomplete == 0


def test_garbage_with_text_but_no_output_counts_as_malformed() -> None:
    result = parse_answer("Instruction: Do a thing.\nInstruction: Do another thing.\n")
    assert result.candidates == [] and result.malformed == 2


@given(
    st.text(max_size=400),
    st.sampled_from([None, "stop", "length"]),
    st.one_of(st.none(), st.integers(1, 30)),
)
@settings(max_examples=300, deadline=None)
def test_never_raises(text: str, finish_reason: str | None, number: int | None) -> None:
    result = parse_answer(text, continuation_number=number, finish_reason=finish_reason)
    assert result.malformed >= 0 and result.dropped_incomplete in (0, 1)
    for c in result.candidates:
        assert c.instruction and c.instruction == c.instruction.strip()


# --- round trip: rendered blocks parse back to the same tasks -----------------------------------

_WORDS = st.sampled_from(
    ["alpha", "beta", "sort", "the", "list", "7", "3.5", "x=1", "(a)", "-", "1.", "2)", "a:b", "Q?",
     "def", "   ", "\t", "*", "_id", "**bold**", "`code`", "#", "sum", "é", "中文"]
)  # fmt: skip
_LINE = st.lists(_WORDS, min_size=1, max_size=8).map(" ".join)
_TEXT = st.lists(st.one_of(_LINE, st.just("")), min_size=1, max_size=5).map("\n".join)


def _plain(text: str) -> bool:
    """No line the parser treats as structure (headers, separators, fences, closing remarks)."""
    return not any(
        parse._is_structural(line) or parse._FENCE.match(line) or parse._TRAILER.match(line.strip())
        for line in text.split("\n")
    )


def _expected(task: Task) -> Task:
    instruction, input_, output = (part.strip() for part in task)
    return instruction, "" if parse._is_empty_input(input_) else input_, output


def _check_round_trip(tasks: list[Task]) -> None:
    for instruction, input_, output in tasks:
        assume(instruction.strip())
        assume(_plain(instruction) and _plain(input_) and _plain(output))
    text = "".join(render_block(i, *task) for i, task in enumerate(tasks, start=1))
    result = parse_answer(text)
    got = [(c.instruction, c.input, c.output) for c in result.candidates]
    assert got == [_expected(t) for t in tasks]
    assert [c.meta["number"] for c in result.candidates] == list(range(1, len(tasks) + 1))
    assert result.malformed == 0


@given(st.lists(st.tuples(_TEXT, _TEXT, _TEXT), min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_round_trip_word_texts(tasks: list[Task]) -> None:
    _check_round_trip(tasks)


# Any characters but "\r" (it is a newline to the parser) and lone surrogates.
_ANY_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=60
)


@given(st.lists(st.tuples(_ANY_TEXT, _ANY_TEXT, _ANY_TEXT), min_size=1, max_size=3))
@settings(max_examples=300, deadline=None)
def test_round_trip_arbitrary_texts(tasks: list[Task]) -> None:
    _check_round_trip(tasks)


# --- separator and header lines inside an output: kept, or the task is rejected, never cut ------


def _block(n: int, instruction: str, output: str, input_: str = "<noinput>") -> str:
    return f"###\n{n}. Instruction: {instruction}\n{n}. Input:\n{input_}\n{n}. Output:\n{output}\n"


def _tasks(result: ParseResult) -> list[Task]:
    return [(c.instruction, c.input, c.output) for c in result.candidates]


def _rejected(result: ParseResult) -> list[tuple[str, str]]:
    return [(c.instruction, reason) for c, reason, _ in result.rejected]


NEXT = _block(2, "Name a color.", "Red")

# (id, output of task 1) for outputs that hold separator or header lines which open no task.
KEPT_OUTPUTS = [
    ("markdown_rule", "Dear Ann,\nthe meeting moved to Friday.\n---\nSent from my phone"),
    ("hash_rule", "Intro paragraph.\n###\nSecond part, after a rule."),
    ("bold_task_lines_in_a_to_do_list", "**Task 1:** Buy milk.\n**Task 1:** Call the bank."),
    ("instruction_line_in_steps", "Steps:\nInstruction: read the label.\nThen shake well."),
    ("numbered_instruction_steps", "1. Instruction: read the label\n1. Input: the bottle"),
    ("prose_task_lines", "Task 2: wash up\nTask 3: dry the plates"),
    ("numbered_io_examples", "1. Input: 3\n1. Output: 9\n2. Input: 4\n2. Output: 16"),
    ("rule_then_heading_text", "Summary.\n\n---\n\n### Details\nMore text."),
]


@pytest.mark.parametrize("output", [o for _, o in KEPT_OUTPUTS], ids=[i for i, _ in KEPT_OUTPUTS])
@pytest.mark.parametrize("position", ["first", "last"])
def test_structure_like_lines_inside_an_output_stay_in_it(output: str, position: str) -> None:
    first = _block(1, "Write the text.", output)
    text = first + NEXT if position == "first" else _block(0, "Say hi.", "Hi") + first
    result = parse_answer(text)
    assert ("Write the text.", "", output) in _tasks(result)
    assert result.rejected == [] and result.malformed == 0


def test_template_output_is_rejected_not_cut() -> None:
    # The output is itself a task template: a full Instruction/Input/Output sequence, but
    # unnumbered in a numbered answer. Either reading is a guess, so neither side is accepted.
    template = "Layout:\nInstruction: <what to do>\nInput: <the data>\nOutput: <the answer>"
    result = parse_answer(_block(1, "Show a task template.", template) + NEXT)
    assert _tasks(result) == [("Name a color.", "", "Red")]
    assert ("Show a task template.", "ambiguous_structure") in _rejected(result)
    assert all(reason == "ambiguous_structure" for _, reason in _rejected(result))


def test_next_numbered_task_header_inside_an_output_is_rejected_not_cut() -> None:
    # "**Task 2:**" continues the numbering but starts no complete task: task 1 may have been cut.
    result = parse_answer(_block(1, "Plan a trip.", "Plan:\n**Task 2:** pack the bags") + NEXT)
    assert _tasks(result) == [("Name a color.", "", "Red")]
    assert _rejected(result) == [("Plan a trip.", "ambiguous_structure")]
    detail = result.rejected[0][2]
    assert "Task 2" in detail and "\n" not in detail


def test_instruction_line_inside_an_unnumbered_answer_is_rejected_not_cut() -> None:
    text = (
        "**Instruction:** Describe how to bake bread.\n**Input:** None\n"
        "**Output:** Begin with:\nInstruction: mix the flour\nthen bake it.\n\n"
        "**Instruction:** Name a color.\n**Input:** None\n**Output:** Red\n"
    )
    result = parse_answer(text)
    assert _tasks(result) == [("Name a color.", "", "Red")]
    assert _rejected(result) == [("Describe how to bake bread.", "ambiguous_structure")]
    assert result.malformed == 1  # "mix the flour / then bake it." read as a task without output


def test_full_block_inside_an_output_is_caught_by_the_numbering() -> None:
    # Task 1's output holds a complete block numbered 2 in the prompt's own format; only the
    # real task 2 after it shows that numbers went 1, 2, 2.
    inner = "Example:\n###\n2. Instruction: Add 1 and 1.\n2. Input:\n<noinput>\n2. Output:\n2"
    result = parse_answer(_block(1, "Show an example block.", inner) + NEXT)
    assert [c.instruction for c in result.candidates] == []
    rejected = [instruction for instruction, _ in _rejected(result)]
    assert rejected == ["Show an example block.", "Add 1 and 1.", "Name a color."]


def test_rejected_field_defaults_to_empty() -> None:
    assert ParseResult().rejected == []
    assert parse_answer(CANONICAL).rejected == []


# --- the fast path for answers written exactly in the prompt's format ---------------------------

_PLAIN = _block(1, "Name a fruit.", "Apple") + _block(2, "Name a color.", "Red\n\nHope this helps!")
# (id, answer, continuation_number, finish_reason, whether the fast path takes it)
FAST_PATH_CASES = [
    ("canonical", CANONICAL, None, "stop", True),
    ("no_separator_at_the_ends", _PLAIN.strip("#\n"), None, "stop", True),
    ("cut_answer_drops_its_last_task", _PLAIN.rstrip("#\n"), None, "length", True),
    ("cut_answer_ending_in_a_separator_keeps_it", _PLAIN + "###", None, "length", True),
    ("continuation", " Name a fruit.\n4. Input:\n<noinput>\n4. Output:\nApple\n" + NEXT.replace("2.", "5."),
     4, "stop", True),
    # Each of these reads differently in the general path: the fast path must step aside.
    ("numbers_stop_increasing", _PLAIN + _block(2, "Name a tree.", "Oak"), None, "stop", False),
    ("rule_inside_an_output", _block(1, "Write a memo.", "Hi\n###\nBye") + NEXT, None, "stop", False),
    ("header_inside_an_output", _block(1, "Show a form.", "Name:\n1. Output: x") + NEXT, None, "stop", False),
    ("blank_line_after_a_separator", _PLAIN.replace("###\n2.", "###\n\n2."), None, "stop", False),
    ("missing_instruction_text", _block(1, "", "Apple") + NEXT, None, "stop", False),
    ("continuation_opening_with_a_header", _PLAIN, 1, "stop", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "continuation", "finish_reason", "fast"),
    [case[1:] for case in FAST_PATH_CASES],
    ids=[case[0] for case in FAST_PATH_CASES],
)
def test_prompt_format_fast_path_gives_the_general_result_or_steps_aside(
    monkeypatch: pytest.MonkeyPatch, text: str, continuation: int | None, finish_reason: str, fast: bool
) -> None:
    lines = parse._normalize(text, continuation is not None)
    assert (parse._parse_plain(lines, continuation, finish_reason) is not None) == fast
    got = parse_answer(text, continuation_number=continuation, finish_reason=finish_reason)
    monkeypatch.setattr(parse, "_parse_plain", lambda *args: None)
    general = parse_answer(text, continuation_number=continuation, finish_reason=finish_reason)
    assert got == general
    assert [c.meta for c in got.candidates] == [c.meta for c in general.candidates]
    assert got.candidates or got.rejected or got.dropped_incomplete


def test_quick_structure_test_lets_every_header_and_separator_through() -> None:
    # _MAYBE_STRUCTURAL only rules lines out: a header it missed would be read as text.
    lines = ["  ### Task 3", "\u2022 Input: x", "\t**Output:**", "İnstruction: dotted", "new task 2.", "___",
             "\u00a0---", "٣. Output:", "_Input_:", "## Response:", "+ Output:"]  # fmt: skip
    for line in lines:
        assert parse._is_structural(line), line
        assert parse._MAYBE_STRUCTURAL.match(line), line


# --- property: whatever lines an output holds, it comes back whole or its task is rejected -----

# Lines the parser may take for structure, with numbers around the rendered ones (1..4).
_STRUCTURE_LINE = st.one_of(
    st.sampled_from(
        ["---", "###", "***", "___", "#####", "```", "```python", "~~~", "Instruction:",
         "Instruction: do it", "**Instruction:** do it", "### Instruction:", "Input:", "Input: x",
         "**Input:**", "Output:", "Output: y", "**Output:**", "### Response:", "<noinput>"]
    ),
    st.builds(
        str.format,
        st.sampled_from(
            ["{0}. Instruction: do it", "{0}. Instruction:", "{0}. Input:", "{0}. Input: x",
             "{0}. Output:", "{0}. Output: y", "Instruction {0}: do it", "Output {0}: y",
             "Task {0}", "Task {0}:", "Task {0}: wash up", "**Task {0}:**", "**Task {0}:** pack",
             "### Task {0}", "{0}. step", "{0}) step", "**{0}. Instruction:** do it"]
        ),
        st.integers(0, 6),
    ),
)  # fmt: skip
_OUTPUT = st.lists(st.one_of(_LINE, st.just(""), _STRUCTURE_LINE), min_size=1, max_size=10).map(
    "\n".join
)
# Instructions and inputs stay plain here: this property is about outputs. Closing remarks ("I
# hope this helps") are left out too: after the last output they are cut on purpose.
_PLAIN_WORDS = st.sampled_from(["alpha", "sort", "the", "list", "x=1", "Q?", "é"])
_PLAIN_LINE = st.lists(_PLAIN_WORDS, min_size=1, max_size=5).map(" ".join)
_PLAIN = st.lists(_PLAIN_LINE, min_size=1, max_size=3).map("\n".join)
_TASKS = st.lists(
    st.tuples(_PLAIN_LINE, st.one_of(st.just(""), _PLAIN), _OUTPUT), min_size=1, max_size=3
)
SENTINEL: Task = ("Say done.", "", "done")


def _scaffolding(tail: str) -> bool:
    """Lines without text that only close or open a block: "###", "5. Instruction:", "Input:"."""
    for line in tail.split("\n"):
        header = parse._field_header(line) or parse._task_header(line)
        if line.strip() and not parse._SEPARATOR.match(line) and (header is None or header.rest):
            return False
    return True


def _check_outputs_whole_or_rejected(tasks: list[Task], *, last_is_end: bool) -> None:
    text = "".join(render_block(i, *task) for i, task in enumerate(tasks, start=1))
    result = parse_answer(text)
    rendered = [_expected(t) for t in tasks]
    n = len(rendered)
    for _, reason, detail in result.rejected:
        assert reason == "ambiguous_structure" and detail and "\n" not in detail
    rejected = {c.instruction for c, _, _ in result.rejected}

    def beyond(c: Candidate) -> bool:
        return isinstance(c.meta["number"], int) and c.meta["number"] > n

    # The end of the answer is the one place a parser cannot see: a last output that ends in
    # "###" or "6. Instruction:", or in a block numbered above n, reads exactly like a closing
    # separator, a cue, or more tasks. There, and only there, the last output may be cut, and
    # tasks numbered above n may be read from it.
    from_tail = [c for c in result.candidates if beyond(c)]
    seen_in_tail = from_tail + [c for c, _, _ in result.rejected if beyond(c)]
    numbers = [c.meta["number"] for c in from_tail]
    assert numbers == sorted(set(numbers))
    cut_last = None
    for c in result.candidates:
        got, number = (c.instruction, c.input, c.output), c.meta["number"]
        if beyond(c):
            assert last_is_end, f"candidate {got} (number {number}) is not a rendered task"
            assert c.instruction in rendered[-1][2] and c.output in rendered[-1][2]
            continue
        assert isinstance(number, int) and number >= 1, f"candidate {got} is not a rendered task"
        if got == rendered[number - 1]:
            continue
        assert last_is_end and number == n and got[:2] == rendered[-1][:2], (
            f"candidate {got} (number {number}) is not a rendered task"
        )
        output = rendered[-1][2]
        assert output.startswith(c.output) and c.output != output
        cut_last = output[len(c.output) :]
        if not _scaffolding(cut_last):  # then the tail is where the tasks above n came from
            assert seen_in_tail and all(e.instruction in cut_last for e in seen_in_tail)

    # No candidate output is a strict prefix of a rendered one, but for that cut.
    for c in result.candidates:
        if beyond(c):
            continue  # read from the last output's tail, checked above
        got = (c.instruction, c.input, c.output)
        truncates = any(
            r[:2] == got[:2] and r[2] != got[2] and r[2].startswith(got[2]) for r in rendered
        )
        assert not truncates or got in rendered or (cut_last is not None and c.meta["number"] == n)

    numbered = {c.meta["number"]: (c.instruction, c.input, c.output) for c in result.candidates}
    for i, task in enumerate(rendered, start=1):
        got = numbered.get(i)
        if got is None:
            assert task[0] in rejected, f"task {i} {task} lost without a reason"
        elif got != task:  # never a truncation, but for the last output's tail checked above
            assert last_is_end and i == n and cut_last is not None and task[2].startswith(got[2])


@given(_TASKS)
@example([("a", "", "Instruction:\n2. Output:"), ("b", "", "2. Instruction: do it\nOutput:")])
@example([("a", "", "0. Instruction: do it\nOutput:\n1. Instruction: do it\nOutput:")])
@example([("a", "", "---"), ("b", "", "3. Instruction:\n2. Instruction: do it\nOutput:")])
@settings(max_examples=500, deadline=None)
def test_outputs_with_structure_lines_come_back_whole_or_rejected(tasks: list[Task]) -> None:
    # A plain last task keeps every generated task away from the end of the answer.
    _check_outputs_whole_or_rejected([*tasks, SENTINEL], last_is_end=False)


@given(_TASKS)
@example([("a", "", "---\nTask 2\nOutput:\n3. Instruction: do it")])
@example([("a", "", "Task 2\nTask 0: wash up\n### Instruction:")])
@example([("a", "", "2. Instruction:\n---\nalpha")])
@example([("a", "", "5. step\n```\n5. Output:")])
@example([("alpha", "", "2. Instruction:\nalpha\nOutput:")])
@settings(max_examples=500, deadline=None)
def test_last_output_with_structure_lines_is_cut_only_where_the_answer_could_end(
    tasks: list[Task],
) -> None:
    _check_outputs_whole_or_rejected(tasks, last_is_end=True)


@pytest.mark.parametrize("after", ["", "I hope these tasks help!"])
def test_a_separator_followed_by_many_blank_lines_closes_the_answer(after: str) -> None:
    # Blank lines once counted toward the 40 lines a closing remark may take: past them the
    # final "###" was not seen as closing, and looking for the next text line raised.
    answer = "1. Instruction: Name a fruit.\n1. Input:\n<noinput>\n1. Output:\nApple\n###" + "\n" * 45 + after
    for finish_reason in ("stop", "length"):
        result = parse_answer(answer, finish_reason=finish_reason)
        assert [(c.instruction, c.output) for c in result.candidates] == [("Name a fruit.", "Apple")]
        assert not result.rejected
