"""The judge's rubric: every way an answer is read, and every answer that must stay unjudged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfinstruct.errors import ConfigError
from selfinstruct.records import Judgment, RecordError
from selfinstruct.rubric import Unreadable, Verdict, load_rubric, read_verdict

GOOD = {"reasoning": "Clear and right.", "valid": True, "input": True, "output": False, "overall": 2}
CHECKS = (("valid", True), ("input", True), ("output", False))


@pytest.mark.parametrize(
    ("answer", "parse"),
    [
        (json.dumps(GOOD), "json"),
        ("Here is my review:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```", "fenced"),
        ("My verdict: " + json.dumps(GOOD) + " Hope that helps.", "embedded"),
        ("{'reasoning': 'ok', 'valid': True, 'input': True, 'output': False, 'overall': 2,}", "repaired"),
        ("Reasoning: fine\nValid: yes\nInput: yes\nOutput: no\nOverall: 2", "lines"),
        ("**Valid:** true\n**Input:** true\n**Output:** false\n**Overall:** 2/5", "lines"),
        ("<think>" + json.dumps({**GOOD, "overall": 5}) + "</think>" + json.dumps(GOOD), "json"),
        (json.dumps({"checks": {"valid": True, "input": True, "output": False}, "score": 2}), "json"),
        (json.dumps({"instruction_valid": "Yes", "input_fits": "yes", "output_correct": "No.", "rating": "2"}), "json"),
        (json.dumps({"valid": 1, "input": 1, "output": 0, "overall": 2.0}), "json"),
    ],
)
def test_each_way_of_reading_gives_the_same_verdict(answer: str, parse: str) -> None:
    verdict = read_verdict(answer, has_input=True)
    assert isinstance(verdict, Verdict), verdict
    assert verdict.checks == CHECKS
    assert verdict.overall == 2
    assert verdict.parse == parse


def test_coercions_are_recorded_and_plain_json_needs_none() -> None:
    plain = read_verdict(json.dumps(GOOD), has_input=True)
    assert isinstance(plain, Verdict) and plain.coerced == ()
    drifted = read_verdict(json.dumps({"valid": "yes", "input": True, "output": False, "overall": "2 - poor"}), has_input=True)
    assert isinstance(drifted, Verdict)
    assert drifted.overall == 2
    assert any("valid" in note for note in drifted.coerced) and any("overall" in note for note in drifted.coerced)


def test_not_applicable_input_passes_only_when_the_task_has_none() -> None:
    answer = json.dumps({"valid": True, "input": "N/A", "output": True, "overall": 4})
    without = read_verdict(answer, has_input=False)
    assert isinstance(without, Verdict) and dict(without.checks)["input"] is True
    assert isinstance(read_verdict(answer, has_input=True), Unreadable)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "empty"),
        ("The task looks fine to me. I would give it a 4.", "no verdict"),
        (json.dumps({**GOOD, "overall": 4.5}), "not a whole number"),
        (json.dumps({**GOOD, "overall": 7}), "outside 1 to 5"),
        (json.dumps({**GOOD, "overall": 0}), "outside 1 to 5"),
        (json.dumps({**GOOD, "overall": "8/10"}), "another scale"),
        (json.dumps({**GOOD, "overall": "good"}), "not a whole number"),
        (json.dumps({**GOOD, "overall": True}), "not a score"),
        (json.dumps({**GOOD, "output": "partly"}), "'output'"),
        (json.dumps({"valid": True, "input": True, "overall": 3}), "no answer to output"),
        (json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "overall": 5}), "2 different verdicts"),
        (json.dumps({**GOOD, "score": 5}), "two answers to 'overall'"),
        ('{"reasoning": "The instruction asks for a poem and the output', "no verdict"),
    ],
)
def test_answers_without_one_reading_stay_unjudged(answer: str, why: str) -> None:
    verdict = read_verdict(answer, has_input=True)
    assert isinstance(verdict, Unreadable), verdict
    assert why in verdict.error


def test_a_cut_answer_says_so() -> None:
    verdict = read_verdict('{"reasoning": "Looks', has_input=True, finish_reason="length")
    assert isinstance(verdict, Unreadable) and "token limit" in verdict.error


def test_same_verdict_twice_is_not_ambiguous() -> None:
    verdict = read_verdict(json.dumps(GOOD) + " To repeat: " + json.dumps(GOOD), has_input=True)
    assert isinstance(verdict, Verdict) and verdict.overall == 2


def test_the_task_is_shown_as_written_even_with_placeholders_in_it() -> None:
    rubric = load_rubric()
    user = rubric.messages("Fill {output} into {input}", "", "done")[-1]["content"]
    assert "Instruction: Fill {output} into {input}\nInput: (none)\nOutput: done" in user
    prompt = rubric.completion_prompt("Say hi", "", "Hi")
    assert prompt.startswith(rubric.system) and prompt.endswith("Answer:\n")


def test_a_rubric_file_replaces_texts_and_is_a_new_fingerprint(tmp_path: Path) -> None:
    custom = tmp_path / "rubric.json"
    custom.write_text(json.dumps({"system": "Be harsh."}))
    assert load_rubric(custom).system == "Be harsh."
    assert load_rubric(custom).template == load_rubric().template
    assert load_rubric(custom).fingerprint() != load_rubric().fingerprint()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"template": "Judge {instruction} and {output}"}', "lacks {input}"),
        ('{"system": "x", "extra": "y"}', "unknown key(s) extra"),
        ('{"system": 3}', "should be a string"),
        ("not json", "not valid JSON"),
        ("[1]", "should be a JSON object"),
    ],
)
def test_a_bad_rubric_file_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "rubric.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{").replace("}", r"\}")):
        load_rubric(path)
    with pytest.raises(ConfigError, match="cannot read judge rubric"):
        load_rubric(tmp_path / "missing.json")


def test_a_judgment_record_round_trips_and_an_unjudged_one_never_has_a_score() -> None:
    judged = Judgment("task-000001", "f" * 16, "judged", checks=CHECKS, overall=2, parse="json", coerced=("x",))
    assert Judgment.from_json(json.loads(json.dumps(judged.to_json()))) == judged
    unjudged = Judgment("task-000001", "f" * 16, "unjudged", instance=3, error="no verdict", raw="hmm")
    assert Judgment.from_json(unjudged.to_json()) == unjudged
    with pytest.raises(RecordError, match="carries no score"):
        Judgment.from_json({**unjudged.to_json(), "overall": 3})
    with pytest.raises(RecordError, match="from 1 to 5"):
        Judgment.from_json({**judged.to_json(), "overall": 6})
    with pytest.raises(RecordError, match="checks"):
        Judgment.from_json({**judged.to_json(), "checks": {"valid": True}})
