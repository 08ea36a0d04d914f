"""Tests for the seed tasks (issue 3): the bundled file's promised properties, and the checker.

The bundled-file tests read the raw JSON themselves and measure similarity with ``rouge_score``
directly, so a bug in our loader or ROUGE-L index cannot hide a defect in the data. The checker
tests write small broken files and expect each defect to be named, by the library and the CLI.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, CliResult, run_cli
from rouge_score import rouge_scorer

from selfinstruct.errors import ConfigError, SeedError
from selfinstruct import filters as filters_mod
from selfinstruct.filters import DEFAULT_BLACKLIST, FilterConfig, check_candidate
from selfinstruct.records import Candidate, SeedTask
from selfinstruct.seeds import (
    SeedReport,
    bundled_seed_path,
    check_seeds,
    leading_word,
    load_seed_tasks,
)

ROOT_SEEDS = REPO / "seed_tasks.jsonl"
SCHEMA_KEYS = {"id", "name", "instruction", "instances", "is_classification"}
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def seeds_check(path: Path | str, *extra: str) -> CliResult:
    return run_cli("seeds", "check", str(path), *extra)


def assert_cli_rejects(path: Path, *expected: str) -> CliResult:
    """`seeds check` exits 1, prints an error count and each expected text, and no traceback."""
    result = seeds_check(path)
    assert result.returncode == 1, result
    assert re.search(r"^errors: [1-9]\d*$", result.stdout, re.MULTILINE), result.stdout
    for text in expected:
        assert text in result.stdout, (text, result.stdout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# -- the bundled seed file ------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    """The bundled seeds as plain JSON objects, one per line."""
    lines = ROOT_SEEDS.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), "blank line in the bundled seed file"
    return [json.loads(line) for line in lines]


def _has_input(row: dict[str, Any]) -> bool:
    return any(inst["input"].strip() for inst in row["instances"])


def test_root_file_is_the_packaged_file() -> None:
    packaged = bundled_seed_path()
    assert packaged.is_file()
    assert packaged.name == "seed_tasks.jsonl"
    assert ROOT_SEEDS.read_bytes() == packaged.read_bytes()
    assert ROOT_SEEDS.read_bytes() == (REPO / "selfinstruct" / "data" / "seed_tasks.jsonl").read_bytes()


def test_bundled_schema(rows: list[dict[str, Any]]) -> None:
    assert len(rows) >= 175
    for row in rows:
        assert set(row) == SCHEMA_KEYS, row.get("id")
        assert isinstance(row["id"], str) and row["id"], row
        assert isinstance(row["name"], str), row["id"]
        assert re.fullmatch(r"[a-z0-9]+(?:[-_][a-z0-9]+)*", row["name"]), row["name"]
        assert isinstance(row["instruction"], str), row["id"]
        assert row["instruction"] == row["instruction"].strip() and row["instruction"], row["id"]
        assert isinstance(row["is_classification"], bool), row["id"]
        instances = row["instances"]
        assert isinstance(instances, list) and instances, row["id"]
        for inst in instances:
            assert set(inst) == {"input", "output"}, row["id"]
            assert isinstance(inst["input"], str) and isinstance(inst["output"], str), row["id"]
            assert inst["output"].strip(), row["id"]
    ids = Counter(row["id"] for row in rows)
    names = Counter(row["name"] for row in rows)
    assert [i for i, n in ids.items() if n > 1] == []
    assert [i for i, n in names.items() if n > 1] == []


def test_bundled_classification_tasks(rows: list[dict[str, Any]]) -> None:
    classification = [row for row in rows if row["is_classification"]]
    assert len(classification) >= 25
    for row in classification:
        outputs = [inst["output"].strip() for inst in row["instances"]]
        assert len(outputs) >= 2, row["id"]
        # A label space needs at least two labels shown.
        assert len(set(outputs)) >= 2, (row["id"], outputs)


def test_bundled_input_balance(rows: list[dict[str, Any]]) -> None:
    with_input = sum(map(_has_input, rows))
    assert len(rows) - with_input >= 40
    assert with_input >= 100


def test_bundled_leading_word_diversity(rows: list[dict[str, Any]]) -> None:
    # Counted independently of seeds.leading_word: first word, letters only, lower case.
    firsts = {re.sub(r"[^a-z]", "", row["instruction"].split()[0].lower()) for row in rows}
    assert len(firsts) >= 90


def test_bundled_passes_default_filters(rows: list[dict[str, Any]]) -> None:
    failures = []
    for row in rows:
        for inst in row["instances"]:
            failed = check_candidate(Candidate(row["instruction"], inst["input"], inst["output"]))
            if failed:
                failures.append((row["id"], *failed))
    assert failures == []


def test_bundled_has_no_near_duplicates_by_rouge_score(rows: list[dict[str, Any]]) -> None:
    # Brute force over all pairs with rouge_score itself, not our index.
    instructions = [row["instruction"] for row in rows]
    best = (0.0, "", "")
    for i, a in enumerate(instructions):
        for b in instructions[:i]:
            score = rouge_l_f(a, b)
            if score > best[0]:
                best = (score, a, b)
    assert best[0] <= 0.7, best


def test_library_loads_bundled_seeds(rows: list[dict[str, Any]]) -> None:
    tasks = load_seed_tasks()
    assert [t.id for t in tasks] == [row["id"] for row in rows]
    assert all(isinstance(t, SeedTask) for t in tasks)
    by_id = {t.id: t for t in tasks}
    for row in rows:
        task = by_id[row["id"]]
        assert task.name == row["name"]
        assert task.is_classification is row["is_classification"]
        assert task.instances == tuple((i["input"].strip(), i["output"].strip()) for i in row["instances"])


def test_check_seeds_on_bundled_file(rows: list[dict[str, Any]]) -> None:
    report = check_seeds()
    assert report.ok, report.format()
    assert report.errors() == []
    assert report.tasks == len(rows)
    assert report.classification == sum(row["is_classification"] for row in rows)
    assert report.with_input == sum(map(_has_input, rows))
    assert report.without_input == len(rows) - report.with_input
    assert report.distinct_leading_words == len({leading_word(row["instruction"]) for row in rows})


def test_cli_seeds_check_bundled_file(rows: list[dict[str, Any]]) -> None:
    result = seeds_check("seed_tasks.jsonl")  # relative to the repo root, as in the README
    assert result.returncode == 0, result
    out = result.stdout

    def count(label: str) -> int:
        match = re.search(rf"^\s+{label}\s+(\d+)$", out, re.MULTILINE)
        assert match, (label, out)
        return int(match.group(1))

    with_input = sum(map(_has_input, rows))
    assert count("tasks") == len(rows)
    assert count("classification") == sum(row["is_classification"] for row in rows)
    assert count("with input") == with_input
    assert count("without input") == len(rows) - with_input
    assert count("distinct leading words") >= 90
    assert "ok: no errors" in out


def test_cli_seeds_check_defaults_to_bundled_file() -> None:
    result = run_cli("seeds", "check")
    assert result.returncode == 0, result
    assert str(bundled_seed_path()) in result.stdout


# -- the checker on small files -------------------------------------------------------------


def _task(
    ident: str, name: str, instruction: str, instances: list[tuple[str, str]], cls: bool = False
) -> dict[str, Any]:
    return {
        "id": ident,
        "name": name,
        "instruction": instruction,
        "instances": [{"input": i, "output": o} for i, o in instances],
        "is_classification": cls,
    }


def good_tasks() -> list[dict[str, Any]]:
    """Four valid, mutually dissimilar tasks in the Self-Instruct schema."""
    return [
        _task(
            "t0",
            "passive-voice",
            "Rewrite the sentence below in the passive voice.",
            [("The committee approved the budget.", "The budget was approved by the committee.")],
        ),
        _task(
            "t1",
            "bakery-names",
            "Suggest three names for a small bakery that sells sourdough bread.",
            [("", "Crumb & Crust; The Rising Loaf; Wild Yeast Bakery")],
        ),
        _task(
            "t2",
            "review-sentiment",
            "Classify the sentiment of this product review as positive or negative.",
            [("Broke after two days.", "negative"), ("Works great, love it!", "positive")],
            cls=True,
        ),
        _task(
            "t3",
            "celsius-to-fahrenheit",
            "Convert the temperature from Celsius to Fahrenheit and show the formula.",
            [("25 °C", "77 °F (25 * 9/5 + 32)")],
        ),
    ]


def write_lines(path: Path, lines: list[Any]) -> Path:
    """One line per item: dicts/lists as JSON, strings verbatim (for broken lines)."""
    text = "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def only_error(report: SeedReport) -> str:
    errors = report.errors()
    assert len(errors) == 1, errors
    assert not report.ok
    return errors[0]


def test_valid_small_file_passes(tmp_path: Path) -> None:
    """Control for the tests below: without the defect, the same file is clean."""
    path = write_lines(tmp_path / "seeds.jsonl", good_tasks())
    report = check_seeds(path)
    assert report.ok, report.format()
    assert (report.tasks, report.classification, report.with_input, report.without_input) == (4, 1, 3, 1)
    assert report.distinct_leading_words == 4
    assert len(load_seed_tasks(path)) == 4
    result = seeds_check(path)
    assert result.returncode == 0, result
    assert "ok: no errors" in result.stdout


def test_bad_json_line_is_named(tmp_path: Path) -> None:
    rows: list[Any] = good_tasks()
    rows.insert(1, '{"id": "broken", "instruction": "Explain why the sky looks blue"')
    path = write_lines(tmp_path / "seeds.jsonl", rows)
    report = check_seeds(path)
    assert report.schema_errors and report.schema_errors[0].startswith("line 2: invalid JSON")
    assert len(report.schema_errors) == 1
    assert report.tasks == 4  # the good lines are still checked and counted
    with pytest.raises(SeedError, match=r"line 2: invalid JSON"):
        load_seed_tasks(path)
    assert_cli_rejects(path, "line 2: invalid JSON")


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    first, second = good_tasks()[:2]
    path.write_text(json.dumps(first) + "\n\n\n" + json.dumps({**second, "instances": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(SeedError, match=r"line 4: field 'instances'"):
        load_seed_tasks(path)


def test_load_error_mentions_further_problems(tmp_path: Path) -> None:
    rows: list[Any] = good_tasks()
    rows[1] = "not json"
    rows[3] = {**rows[3], "is_classification": "no"}
    path = write_lines(tmp_path / "seeds.jsonl", rows)
    with pytest.raises(SeedError) as info:
        load_seed_tasks(path)
    message = str(info.value)
    assert "line 2: invalid JSON" in message
    assert "1 more problem" in message and "selfinstruct seeds check" in message
    assert len(check_seeds(path).schema_errors) == 2


# Each case: how to break task t2 (on line 3) and the message expected for line 3.
_MISSING = [
    pytest.param(
        lambda t: {k: v for k, v in t.items() if k != "instruction"}, "field 'instruction' is missing", id="instruction"
    ),
    pytest.param(
        lambda t: {**t, "instances": [{"input": "Broke after two days."}]},
        "instances[0].output is missing",
        id="output",
    ),
    pytest.param(
        lambda t: {"instruction": t["instruction"], "input": "Works great"},
        "field 'output' is missing",
        id="alpaca-output",
    ),
]

_WRONG_TYPE = [
    pytest.param(
        lambda t: {**t, "instances": "negative"}, "field 'instances' must be a non-empty list", id="instances-str"
    ),
    pytest.param(lambda t: {**t, "instances": []}, "field 'instances' must be a non-empty list", id="instances-empty"),
    pytest.param(lambda t: {**t, "instances": ["negative"]}, "instances[0] is not an object", id="instance-str"),
    pytest.param(
        lambda t: {**t, "instances": [{"input": "x", "output": 3}]},
        "instances[0].output is missing or not a string",
        id="output-int",
    ),
    pytest.param(
        lambda t: {**t, "instances": [{"input": None, "output": "x"}]},
        "instances[0].input is missing or not a string",
        id="input-null",
    ),
    pytest.param(
        lambda t: {**t, "is_classification": "yes"}, "field 'is_classification' must be true or false", id="cls-yes"
    ),
    pytest.param(lambda t: {**t, "instruction": 5}, "field 'instruction' is not a string", id="instruction-int"),
    pytest.param(lambda t: {**t, "instruction": "   "}, "field 'instruction' is empty", id="instruction-blank"),
    pytest.param(lambda t: {**t, "id": ["t2"]}, "field 'id' must be a string", id="id-list"),
    pytest.param(lambda t: [t], "expected a JSON object, got list", id="not-object"),
]


def _broken_file(tmp_path: Path, breaker: Any) -> Path:
    rows: list[Any] = good_tasks()
    rows[2] = breaker(rows[2])
    return write_lines(tmp_path / "seeds.jsonl", rows)


@pytest.mark.parametrize(("breaker", "message"), _MISSING + _WRONG_TYPE)
def test_schema_error_is_reported_with_its_line(tmp_path: Path, breaker: Any, message: str) -> None:
    path = _broken_file(tmp_path, breaker)
    report = check_seeds(path)
    assert len(report.schema_errors) == 1, report.schema_errors
    assert report.schema_errors[0].startswith(f"line 3: {message}"), report.schema_errors
    assert only_error(report).startswith("schema: line 3: ")
    assert report.tasks == 3
    with pytest.raises(SeedError, match=re.escape(f"line 3: {message}")):
        load_seed_tasks(path)


def test_cli_rejects_missing_field(tmp_path: Path) -> None:
    path = _broken_file(tmp_path, _MISSING[0].values[0])
    assert_cli_rejects(path, "line 3: field 'instruction' is missing")


def test_cli_rejects_wrong_type(tmp_path: Path) -> None:
    path = _broken_file(tmp_path, lambda t: {**t, "is_classification": "yes"})
    assert_cli_rejects(path, "line 3: field 'is_classification' must be true or false")


def test_duplicate_id(tmp_path: Path) -> None:
    rows = good_tasks()
    rows[3]["id"] = "t1"
    path = write_lines(tmp_path / "seeds.jsonl", rows)
    report = check_seeds(path)
    assert report.duplicate_ids == ["t1"]
    assert only_error(report) == "duplicate id: t1"
    assert_cli_rejects(path, "duplicate id: t1")


NEAR_A = "Summarize the following paragraph in one short sentence."
NEAR_B = "Summarize the following paragraph in one short sentence for a child."


def _near_duplicate_file(tmp_path: Path) -> Path:
    rows = good_tasks()
    rows[1] = _task(
        "near-a",
        "summary-a",
        NEAR_A,
        [("Rain fell all day, so the match was called off.", "Rain cancelled the match.")],
    )
    rows.append(
        _task("near-b", "summary-b", NEAR_B, [("The cat slept on the warm roof all day.", "A cat napped in the sun.")])
    )
    return write_lines(tmp_path / "seeds.jsonl", rows)


def test_near_duplicate_pair(tmp_path: Path) -> None:
    expected = rouge_l_f(NEAR_B, NEAR_A)
    assert 0.7 < expected < 1.0
    path = _near_duplicate_file(tmp_path)
    report = check_seeds(path)
    assert len(report.near_duplicates) == 1
    first, second, score = report.near_duplicates[0]
    assert (first, second) == ("near-a", "near-b")
    assert score == pytest.approx(expected, abs=1e-12)
    assert only_error(report) == f"near-duplicate (ROUGE-L {expected:.3f} > 0.7): near-a ~ near-b"
    assert_cli_rejects(path, f"ROUGE-L {expected:.3f} > 0.7", "near-a ~ near-b")
    # The threshold is the user's: above the pair's score, the same file is clean.
    assert check_seeds(path, threshold=0.95).ok
    assert seeds_check(path, "--similarity-threshold", "0.95").returncode == 0


_FILTER_CASES = [
    pytest.param(
        "Write a program that sorts a list of numbers in ascending order.", "x", "write_a_program", id="write-a-program"
    ),
    pytest.param("Describe the image below in three sentences.", "x", "blacklisted_word", id="blacklist"),
    pytest.param("Summarize this paragraph.", "x", "too_short", id="three-words"),
    pytest.param("- List three uses for a paperclip.", "x", "starts_with_punctuation", id="punctuation"),
    pytest.param("Name three rivers that flow through Germany.", "", "empty_output", id="empty-output"),
]


@pytest.mark.parametrize(("instruction", "output", "reason"), _FILTER_CASES)
def test_filter_violation(tmp_path: Path, instruction: str, output: str, reason: str) -> None:
    rows = good_tasks()
    rows.append(_task("bad", "bad-task", instruction, [("", output)]))
    path = write_lines(tmp_path / "seeds.jsonl", rows)
    report = check_seeds(path)
    assert [(i, r) for i, r, _ in report.filter_violations] == [("bad", reason)]
    assert only_error(report).startswith(f"filter {reason}: bad (")
    # The same filter, switched off, lets the file through.
    assert check_seeds(path, filters=FilterConfig(disabled=frozenset({reason}))).ok


def test_filter_violation_details(tmp_path: Path) -> None:
    rows = good_tasks()
    rows.append(_task("prog", "prog", "Write a program that sorts a list of numbers.", [("", "x")]))
    rows.append(_task("img", "img", "Describe the image below in three sentences.", [("", "x")]))
    rows.append(_task("short", "short", "Summarize this paragraph.", [("", "x")]))
    path = write_lines(tmp_path / "seeds.jsonl", rows)
    report = check_seeds(path)
    assert report.filter_violations == [
        ("prog", "write_a_program", "starts with 'Write a program'"),
        ("img", "blacklisted_word", "image"),
        ("short", "too_short", "3 words"),
    ]
    assert_cli_rejects(
        path,
        "errors: 3",
        "filter write_a_program: prog",
        "filter blacklisted_word: img (image)",
        "filter too_short: short (3 words)",
    )


def test_filter_runs_on_every_instance(tmp_path: Path) -> None:
    rows = good_tasks()
    rows[2]["instances"].append({"input": "Meh.", "output": "  "})
    path = write_lines(tmp_path / "seeds.jsonl", rows)
    assert check_seeds(path).filter_violations == [("t2", "empty_output", "no output")]


@pytest.mark.parametrize("content", ["", "\n\n   \n"], ids=["empty", "blank-lines"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_text(content, encoding="utf-8")
    report = check_seeds(path)
    assert "is empty" in only_error(report)
    assert report.tasks == 0
    with pytest.raises(SeedError, match="is empty"):
        load_seed_tasks(path)
    if not content:
        assert_cli_rejects(path, "errors: 1", "is empty")


def test_empty_json_list(tmp_path: Path) -> None:
    path = tmp_path / "seeds.json"
    path.write_text("[]", encoding="utf-8")
    assert "no tasks" in only_error(check_seeds(path))
    with pytest.raises(SeedError, match="no tasks"):
        load_seed_tasks(path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    row = json.dumps(
        _task("t0", "cafe", "Describe the café on the corner in two sentences.", [("", "Cosy.")]), ensure_ascii=False
    )
    path.write_bytes(row.encode("latin-1") + b"\n")
    report = check_seeds(path)
    error = only_error(report)
    assert "not UTF-8" in error and str(path) in error
    with pytest.raises(SeedError, match="not UTF-8"):
        load_seed_tasks(path)
    result = assert_cli_rejects(path, "errors: 1", "not UTF-8")
    assert result.stdout.count("not UTF-8") == 1


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "seeds.jsonl"
    report = check_seeds(path)
    error = only_error(report)
    assert "does not exist" in error and str(path) in error
    with pytest.raises(SeedError, match="does not exist"):
        load_seed_tasks(path)
    assert_cli_rejects(path, "errors: 1", "does not exist")


def test_every_defect_is_reported_at_once(tmp_path: Path) -> None:
    rows: list[Any] = good_tasks()
    rows[0] = "{oops"
    rows[3]["id"] = "t1"
    rows.append(_task("prog", "prog", "Write a program that sorts a list of numbers.", [("", "x")]))
    rows.append(
        _task("t9", "near", "Suggest three names for a small bakery that sells sourdough bread and cakes.", [("", "x")])
    )
    path = write_lines(tmp_path / "seeds.jsonl", rows)
    report = check_seeds(path)
    assert len(report.schema_errors) == 1
    assert report.duplicate_ids == ["t1"]
    assert [(a, b) for a, b, _ in report.near_duplicates] == [("t1", "t9")]
    assert [i for i, _, _ in report.filter_violations] == ["prog"]
    assert len(report.errors()) == 4
    assert_cli_rejects(path, "errors: 4")


# -- Alpaca-format seeds --------------------------------------------------------------------

ALPACA_ROWS = [
    {"instruction": "Give two synonyms for the word below.", "input": "happy", "output": "joyful, cheerful"},
    {
        "instruction": "Explain in one sentence why leaves change colour in autumn.",
        "input": "",
        "output": "Chlorophyll breaks down, revealing other pigments.",
    },
    {"instruction": "Is the following number prime? Answer yes or no.", "input": "91", "output": "no"},
]


def _expected_instances() -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [(r["instruction"], ((r["input"], r["output"]),)) for r in ALPACA_ROWS]


def test_alpaca_json_list_loads(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA_ROWS, indent=2), encoding="utf-8")
    tasks = load_seed_tasks(path)
    assert all(isinstance(t, SeedTask) for t in tasks)
    assert [(t.instruction, t.instances) for t in tasks] == _expected_instances()
    assert [t.is_classification for t in tasks] == [False, False, False]
    assert len({t.id for t in tasks}) == 3
    assert tasks[0].input == "happy" and tasks[0].output == "joyful, cheerful"
    report = check_seeds(path)
    assert report.ok, report.format()
    assert (report.tasks, report.with_input, report.without_input) == (3, 2, 1)
    assert seeds_check(path).returncode == 0


def test_alpaca_jsonl_loads(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    tasks = load_seed_tasks(path)
    assert [(t.instruction, t.instances) for t in tasks] == _expected_instances()
    assert len({t.id for t in tasks}) == 3
    assert check_seeds(path).ok


def test_alpaca_row_without_input_key(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "alpaca.jsonl", [{"instruction": ALPACA_ROWS[1]["instruction"], "output": "Pigments."}]
    )
    (task,) = load_seed_tasks(path)
    assert task.instances == (("", "Pigments."),)


def test_alpaca_json_list_bad_item_is_named(tmp_path: Path) -> None:
    rows: list[Any] = [dict(r) for r in ALPACA_ROWS]
    del rows[1]["output"]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    with pytest.raises(SeedError, match=r"item 2: field 'output' is missing"):
        load_seed_tasks(path)
    assert (
        only_error(check_seeds(path)) == "schema: item 2: field 'output' is missing (and there is no 'instances' list)"
    )


def test_alpaca_json_list_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    text = json.dumps(ALPACA_ROWS, indent=2)
    path.write_text(text[: text.rindex("}")] + "\n]", encoding="utf-8")  # drop the last closing brace
    line = len(text[: text.rindex("}")].splitlines()) + 1
    with pytest.raises(SeedError, match=rf"line {line}: invalid JSON"):
        load_seed_tasks(path)
    assert_cli_rejects(path, "invalid JSON")


# -- generate refuses bad seeds -------------------------------------------------------------


def test_generate_refuses_near_duplicate_seeds(tmp_path: Path) -> None:
    seeds = _near_duplicate_file(tmp_path)
    out = tmp_path / "run"
    args = ("generate", "-o", str(out), "-n", "1", "--seed-tasks", str(seeds), "--base-url", "http://127.0.0.1:9/v1")
    result = run_cli(*args)
    assert result.returncode == 1, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("selfinstruct: error: ")
    assert "near-duplicate" in last and "near-a ~ near-b" in last
    assert f"selfinstruct seeds check {seeds}" in last
    assert "--no-seed-check" in last
    assert not out.exists()  # refused before the run directory was made

    # Skipping the check gets past the seeds and fails only at the (absent) server.
    result = run_cli(*args, "--no-seed-check", "-q")
    assert result.returncode == 1, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("selfinstruct: error: ")
    assert "127.0.0.1:9" in last and "reach" in last
    assert "seeds check" not in result.stderr and "near-duplicate" not in result.stderr
    assert "Traceback" not in result.stderr


# -- non-English seeds ----------------------------------------------------------------------

ZH_SEEDS = Path(__file__).parent / "data" / "seed_tasks_zh.jsonl"
# The settings a Chinese run needs: words counted as the unicode tokenizer sees them (one per
# character), and no English-only first-character rule.
def zh_filters() -> FilterConfig:
    return FilterConfig(word_tokenizer="unicode", disabled=frozenset({"non_ascii_start"}))


def test_count_words_unicode_counts_cjk_characters() -> None:
    count_words = filters_mod.count_words
    assert count_words("写一首关于秋天的四行短诗。") == 1  # whitespace: one "word"
    assert count_words("写一首关于秋天的四行短诗。", "unicode") == 12  # punctuation is no token
    english = "Rewrite the sentence below in the passive voice."
    assert count_words(english) == count_words(english, "unicode") == 8


def test_filter_config_word_tokenizer_and_fingerprint_keys() -> None:
    # as_dict feeds the run's settings fingerprint: the default must keep the old keys.
    assert FilterConfig().as_dict() == {
        "min_words": 4, "max_words": 150, "blacklist": list(DEFAULT_BLACKLIST), "disabled": [],
    }  # fmt: skip
    assert FilterConfig(word_tokenizer="unicode").as_dict()["word_tokenizer"] == "unicode"
    with pytest.raises(ConfigError, match="unknown word tokenizer 'jieba'"):
        FilterConfig(word_tokenizer="jieba")
    short = Candidate("写诗。", "", "x")
    assert check_candidate(short, FilterConfig(word_tokenizer="unicode")) == ("too_short", "2 words")
    assert check_candidate(Candidate("写一首关于秋天的诗。", "", "x"), zh_filters()) is None


def test_chinese_seed_file_passes_with_the_unicode_tokenizer() -> None:
    tasks = load_seed_tasks(ZH_SEEDS)
    assert 5 <= len(tasks) <= 8
    report = check_seeds(ZH_SEEDS, tokenizer="unicode", filters=zh_filters())
    assert report.ok, report.format()
    assert report.warnings == []
    assert (report.tasks, report.classification) == (len(tasks), 1)
    assert "ok: no errors" in report.format() and "warning" not in report.format()


def test_unicode_tokenizer_alone_counts_words_by_it_and_names_the_remaining_filter() -> None:
    # No filters given: the defaults, counting words with the unicode tokenizer.
    report = check_seeds(ZH_SEEDS, tokenizer="unicode")
    assert {reason for _, reason, _ in report.filter_violations} == {"non_ascii_start"}
    assert len(report.filter_violations) == report.tasks
    (warning,) = report.warnings
    assert "--disable-filter non_ascii_start" in warning
    assert f"warning: {warning}" in report.format().splitlines()


def test_chinese_seed_file_with_the_rouge_tokenizer_warns() -> None:
    report = check_seeds(ZH_SEEDS, filters=FilterConfig(disabled=frozenset({"non_ascii_start"})))
    assert not report.ok
    # Whitespace counting makes every instruction one word long.
    assert {reason for _, reason, _ in report.filter_violations} == {"too_short"}
    rouge, lengths = report.warnings
    assert f"{report.tasks} of {report.tasks} instructions" in rouge
    assert "use --tokenizer unicode for non-English text" in rouge
    assert "counted by whitespace" in lengths and "--tokenizer unicode" in lengths
    assert "warning: " + rouge in report.format().splitlines()


def test_chinese_near_duplicates_are_found_only_by_the_unicode_tokenizer(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in ZH_SEEDS.read_text(encoding="utf-8").splitlines()]
    near = dict(rows[0], id="zh_near", name="autumn-poem-2", instruction="写一首关于秋天的四行小诗。")
    path = write_lines(tmp_path / "zh.jsonl", [*rows, near])
    unicode_report = check_seeds(path, tokenizer="unicode", filters=zh_filters())
    assert [(a, b) for a, b, _ in unicode_report.near_duplicates] == [("zh_seed_1", "zh_near")]
    rouge_report = check_seeds(path, filters=zh_filters())
    assert rouge_report.near_duplicates == []  # every Chinese pair scores 0 ...
    assert any("use --tokenizer unicode" in w for w in rouge_report.warnings)  # ... which it says


def test_english_seeds_get_no_language_warnings(tmp_path: Path) -> None:
    assert check_seeds().warnings == []
    path = write_lines(tmp_path / "seeds.jsonl", good_tasks())
    assert check_seeds(path).warnings == []
    assert check_seeds(path, tokenizer="unicode").ok


def test_one_foreign_task_among_english_ones_is_named(tmp_path: Path) -> None:
    rows = good_tasks()
    russian = "Переведите это предложение на английский язык."
    rows.append(_task("ru", "ru-translate", russian, [("Привет!", "Hello!")]))
    path = write_lines(tmp_path / "seeds.jsonl", rows)
    report = check_seeds(path, filters=FilterConfig(disabled=frozenset({"non_ascii_start"})))
    assert report.ok  # whitespace counting works for Russian; the similarity does not
    (warning,) = report.warnings
    assert warning.startswith("1 of 5 instructions (ru)")
