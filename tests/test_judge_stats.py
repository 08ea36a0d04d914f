"""What is read from judgments: stats per judge, the length-bias check, and calibration against people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfinstruct.calibration import (
    LabelError,
    calibrate,
    cohen_kappa,
    format_calibration,
    kappa_reading,
    quadratic_kappa,
)
from selfinstruct.errors import SelfInstructError
from selfinstruct.records import Judgment
from selfinstruct.stats import compute_stats, correlation, format_stats
from selfinstruct.store import RunStore

from conftest import add_tasks

A = "a" * 16  # two judge fingerprints (two rubrics): their judgments must never mix
B = "b" * 16
# Output lengths in words: 1, 2, 3, 4, 5, 6.
TASKS = [(f"Instruction number {i} asks for something.", "", " ".join(["word"] * (i + 1))) for i in range(6)]


def judged(task: int, overall: int, judge: str = A, *, valid: bool = True, input: bool = True, output: bool = True,
           instance: int | None = None, parse: str = "json", coerced: tuple[str, ...] = ()) -> Judgment:  # fmt: skip
    return Judgment(
        task_id=f"task-{task:06d}", instance=instance, judge=judge, status="judged",
        checks=(("valid", valid), ("input", input), ("output", output)), overall=overall, parse=parse,
        coerced=coerced, model=f"judge-{judge[0]}", prompt_tokens=100, completion_tokens=20,
    )  # fmt: skip


def unjudged(task: int, judge: str = A, *, instance: int | None = None, error: str = "no JSON object") -> Judgment:
    return Judgment(
        task_id=f"task-{task:06d}", instance=instance, judge=judge, status="unjudged", error=error, raw="hmm",
        model=f"judge-{judge[0]}", prompt_tokens=100, completion_tokens=50,
    )  # fmt: skip


def write_judgments(run: Path, records: list[Judgment], judges: list[str] = (A, B)) -> None:  # type: ignore[assignment]
    """judgments.jsonl and judges.json as the judge stage writes them (judges registered oldest first)."""
    with (run / "judgments.jsonl").open("a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record.to_json()) + "\n")
    history = [
        {"fingerprint": fp, "since": "2025-03-01T00:00:00Z",
         "settings": {"model": f"judge-{fp[0]}", "rubric": "paper", "prompt_version": 1, "temperature": 0}}
        for fp in judges
    ]  # fmt: skip
    (run / "judges.json").write_text(json.dumps({"schema": 2, "judges": history}), encoding="utf-8")


def make_run(directory: Path, n: int = 6) -> Path:
    tasks = TASKS if n == 6 else [(f"Task {i} of the sample.", "", f"answer {i}") for i in range(n)]
    with RunStore(directory) as store:
        add_tasks(store, tasks, rejected=[("too_short", "Hi.")])
    return directory


# Judge A, several attempts per task:
#   task 0: unjudged, unjudged, judged 5            -> judged (the failures before do not matter)
#   task 1: judged 2 (output fails)                 -> judged
#   task 2: unjudged, unjudged                      -> unjudged: tried, never scored
#   task 3: judged 4, then judged 1                 -> judged 4 (the first judged line wins)
#   task 4: nothing                                 -> not tried
#   task 5: judged 3 (input fails), then unjudged   -> judged 3
# Judge B: task 0 judged 1, task 4 unjudged.
JUDGE_A = [
    unjudged(0), unjudged(0), judged(0, 5, coerced=("overall '5/5' read as 5",)),
    judged(1, 2, output=False, parse="fenced"),
    unjudged(2, error="no JSON object"), unjudged(2, error="finish_reason length"),
    judged(3, 4), judged(3, 1, valid=False),
    judged(5, 3, input=False, parse="repaired"), unjudged(5),
]  # fmt: skip
JUDGE_B = [judged(0, 1, B, valid=False), unjudged(4, B)]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    directory = make_run(tmp_path / "run")
    write_judgments(directory, JUDGE_A[:5] + JUDGE_B[:1] + JUDGE_A[5:] + JUDGE_B[1:])  # interleaved, as two runs would
    return directory


# -- stats --------------------------------------------------------------------------------------------


def test_judged_unjudged_and_not_tried_per_judge(run: Path) -> None:
    section = compute_stats(run)["judge"]
    assert section["current"] == B  # the last registered judge with judgments
    b, a = section["judges"]
    assert (a["fingerprint"], b["fingerprint"]) == (A, B)
    assert (a["tasks"], a["judged"], a["unjudged"], a["not_tried"]) == (6, 4, 1, 1)
    assert (a["attempts"], a["unjudged_attempts"]) == (10, 5)
    assert a["parse_failure_rate"] == pytest.approx(0.5)
    assert a["parse"] == {"json": 2, "fenced": 1, "repaired": 1}
    assert a["coerced"] == 1
    assert (b["tasks"], b["judged"], b["unjudged"], b["not_tried"], b["attempts"]) == (6, 1, 1, 4, 2)
    assert b["scores"] == {"1": 1, "2": 0, "3": 0, "4": 0, "5": 0} and b["pass_rates"]["valid"] == 0
    assert a["model"] == "judge-a" and a["rubric"] == "paper"


def test_unjudged_attempts_never_count_as_a_score(run: Path) -> None:
    a = compute_stats(run)["judge"]["judges"][1]
    # Task 3's second judged line (1) is not counted either: one score per task.
    assert a["scores"] == {"1": 0, "2": 1, "3": 1, "4": 1, "5": 1}
    assert sum(a["scores"].values()) == a["judged"]
    assert a["mean_overall"] == pytest.approx((5 + 2 + 4 + 3) / 4)
    assert a["pass_rates"] == {"valid": 1.0, "input": 0.75, "output": 0.75}
    assert a["all_pass_rate"] == pytest.approx(0.5)
    # Tokens: every attempt cost them, the judged and the unjudged.
    assert a["tokens"]["prompt"] == 10 * 100 and a["tokens"]["completion"] == 5 * 20 + 5 * 50
    assert a["tokens"]["per_judged"] == pytest.approx((1000 + 350) / 4)


def test_length_bias_on_the_judged_tasks(run: Path) -> None:
    a = compute_stats(run)["judge"]["judges"][1]
    # Judged tasks 0, 1, 3, 5 have outputs of 1, 2, 4, 6 words and scores 5, 2, 4, 3.
    expected = correlation([5, 2, 4, 3], [1, 2, 4, 6])
    assert a["length_bias"] == expected and expected["n"] == 4
    # Spearman by hand: ranks of the scores 4, 1, 3, 2 against 1, 2, 3, 4: d = 3, -1, 0, -2,
    # rho = 1 - 6 * 14 / (4 * 15) = -0.4.
    assert expected["spearman"] == pytest.approx(-0.4)
    assert compute_stats(run)["judge"]["judges"][0]["length_bias"]["pearson"] is None  # judge B: one task


def test_correlation_known_answers() -> None:
    # dx = -2,-1,0,1,2 and dy = -1,-2,1,0,2: sum dx*dy = 8, sum dx^2 = sum dy^2 = 10, so r = 0.8.
    assert correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])["pearson"] == pytest.approx(0.8)
    # A monotone but curved relation: Spearman is exactly 1, Pearson below it.
    c = correlation([1, 2, 3, 4, 5], [1, 4, 9, 16, 100])
    assert c["spearman"] == pytest.approx(1.0) and c["pearson"] < 0.9
    # Ties share their mean rank: x ranks 1.5, 1.5, 3, 4 against 1..4 give rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    assert correlation([1, 1, 2, 3], [1, 2, 3, 4])["spearman"] == pytest.approx(0.9**0.5)
    assert correlation([1, 2], [3, 4])["pearson"] is None  # fewer than three points
    assert correlation([3, 3, 3], [1, 2, 3]) == {"n": 3, "pearson": None, "spearman": None}  # no variance


def test_format_stats_judge_section(run: Path) -> None:
    text = format_stats(compute_stats(run))
    lines = text.splitlines()
    assert f"Judge {B} (model judge-b, rubric paper, prompt version 1) - current" in lines
    assert f"Judge {A} (model judge-a, rubric paper, prompt version 1)" in lines
    a_at = lines.index(f"Judge {A} (model judge-a, rubric paper, prompt version 1)")
    block = lines[a_at:]
    assert any(line.split() == ["judged", "4", "(66.7%)"] for line in block)
    assert any(line.split() == ["attempts", "10", "(5", "unreadable:", "50.0%)"] for line in block)
    bars = [line.split() for line in block if line.split()[:1] in (["5"], ["4"], ["1"])][:3]
    assert bars[0] == ["1", "0", "0.0%"] and bars[1][:3] == ["4", "1", "25.0%"] and bars[1][3].startswith("#")
    assert any(line.split() == ["output", "75.0%"] for line in block)
    assert f"  1 unjudged: run `selfinstruct judge {run}` again to retry them" in "\n".join(block)
    assert "(unreadable answers: no JSON object 4, finish_reason length 1)" in text
    assert text.endswith("\n") and all(line == line.rstrip() for line in lines)
    assert json.loads(json.dumps(compute_stats(run)))["judge"]["current"] == B


def test_an_unjudged_run_has_no_judge_section(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    assert "judge" not in compute_stats(run)
    (run / "judgments.jsonl").write_text("")
    assert "judge" not in compute_stats(run)
    assert "Judge" not in format_stats(compute_stats(run))


def test_self_instruct_runs_are_judged_per_instance(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=2)
    tasks = [
        {"id": "task-000000", "instruction": "Task 0 of the sample.", "is_classification": False,
         "instances": [{"input": "", "output": "one"}, {"input": "x", "output": "two words"}]},
        {"id": "task-000001", "instruction": "Task 1 of the sample.", "is_classification": True,
         "instances": [{"input": "y", "output": "three words here"}]},
    ]  # fmt: skip
    (run / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    write_judgments(run, [judged(0, 4, instance=0), unjudged(0, instance=1), judged(1, 2, instance=0)], [A])
    a = compute_stats(run)["judge"]["judges"][0]
    assert (a["tasks"], a["judged"], a["unjudged"], a["not_tried"]) == (3, 2, 1, 0)


def test_a_judgment_of_a_task_not_in_the_run_is_counted_apart(run: Path) -> None:
    write_judgments(run, [judged(99, 5)])
    a = compute_stats(run)["judge"]["judges"][1]
    assert a["unknown_tasks"] == 1 and a["judged"] == 4


def test_plot_adds_the_judge_chart(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from selfinstruct.stats import plot_stats

    paths = plot_stats(run, tmp_path / "charts")
    assert paths[-1].name == "judge_scores.png" and paths[-1].read_bytes().startswith(b"\x89PNG")


# -- kappa --------------------------------------------------------------------------------------------


def test_cohen_kappa_textbook_example() -> None:
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15.
    # po = (20 + 15) / 50 = 0.7; A says yes 25/50 = 0.5, B 30/50 = 0.6;
    # pe = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert kappa_reading(0.4) == "moderate" and kappa_reading(0.39) == "fair"
    assert kappa_reading(0.1) == "slight" and kappa_reading(0.85) == "almost perfect" and kappa_reading(-0.1).startswith("poor")
    # Both raters always said yes: pe = 1, kappa undefined (not a division by zero).
    assert cohen_kappa([(True, True)] * 5) is None and kappa_reading(None).startswith("undefined")
    assert cohen_kappa([]) is None
    # Perfect disagreement on a balanced split: po = 0, pe = 0.5, kappa = -1.
    assert cohen_kappa([(True, False), (False, True)]) == pytest.approx(-1.0)


def test_quadratic_kappa_by_hand() -> None:
    # Human 1, 2, 3 against judge 1, 3, 3 on five levels, weight (i - j)^2 / 16.
    # Observed: one disagreement of 1 point: 1/16. Expected: human marginals 1,1,1 (levels 1-3),
    # judge marginals 1 (level 1), 2 (level 3); sum of w * row * col / 3 = (8 + 1 + 2 + 4) / 16 / 3 = 5/16.
    # kappa = 1 - (1/16) / (5/16) = 0.8.
    assert quadratic_kappa([(1, 1), (2, 3), (3, 3)]) == pytest.approx(0.8)
    assert quadratic_kappa([(5, 5), (4, 4), (1, 1)]) == pytest.approx(1.0)
    assert quadratic_kappa([(4, 4), (4, 4)]) is None


# -- calibration --------------------------------------------------------------------------------------


def _labels(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_calibrate_against_a_labels_file_gives_the_textbook_kappa(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=52)
    # The judge (A) says valid on the first 30 tasks; people said valid on tasks 0-19 and 30-34:
    # both yes 20 (0-19), judge yes people no 10 (20-29), people yes judge no 5 (30-34), both no 15 (35-49).
    records = [judged(i, 5 if i < 30 else 2, valid=i < 30) for i in range(50)] + [unjudged(50)]
    write_judgments(run, records, [A])
    labels = [{"task_id": f"task-{i:06d}", "valid": i < 20 or 30 <= i < 35} for i in range(50)]
    labels[0]["overall"], labels[1]["overall"], labels[30]["overall"] = 5, 3, 4  # judge: 5, 5, 2
    labels.append({"task_id": "task-000050", "output": False})  # the judge never scored it
    labels.append({"task_id": "task-000051", "overall": 2})  # nor this one (not tried)
    result = calibrate(run, _labels(tmp_path / "labels.jsonl", labels))
    assert result["judge"] == A and result["mode"] == "labels"
    assert (result["labels"], result["compared"], result["not_judged"]) == (52, 50, 2)
    valid = result["questions"]["valid"]
    assert valid["n"] == 50 and valid["agreement"] == pytest.approx(0.7)
    assert valid["kappa"] == pytest.approx(0.4) and valid["reading"] == "moderate"
    assert valid["confusion"] == {"pass_pass": 20, "pass_fail": 5, "fail_pass": 10, "fail_fail": 15}
    assert result["questions"]["output"]["n"] == 0
    overall = result["overall"]
    assert overall["n"] == 3 and overall["exact"] == pytest.approx(1 / 3) and overall["within_one"] == pytest.approx(1 / 3)
    # Pass at 4: human pass, fail, pass against judge pass, pass, fail.
    assert overall["pass_fail"]["confusion"] == {"pass_pass": 1, "pass_fail": 1, "fail_pass": 1, "fail_fail": 0}
    assert result["disagreements_total"] == 15 + 2  # 15 on valid, two overall scores more than a point apart
    text = format_calibration(result)
    assert "2 not judged by this judge" in text and "moderate" in text and "Landis & Koch" in text
    assert json.loads(json.dumps(result)) == result


def test_calibrate_a_named_judge_by_prefix(run: Path, tmp_path: Path) -> None:
    labels = _labels(tmp_path / "l.jsonl", [{"task_id": "task-000000", "valid": True}])
    assert calibrate(run, labels)["judge"] == B
    assert calibrate(run, labels, judge="aaaa")["questions"]["valid"]["agreement"] == 1.0
    with pytest.raises(LabelError, match="'c' is not a judge of this run; give one of"):
        calibrate(run, labels, judge="c")


def test_calibrate_against_the_reports_flag_file(run: Path) -> None:
    flags = [
        {"ref": "task-000001", "kind": "accepted", "flagged": True, "note": "wrong", "at": "t"},  # judge A failed it (2)
        {"ref": "task-000000", "kind": "accepted", "flagged": True, "note": "", "at": "t"},  # judge A passed it (5)
        {"ref": "task-000003", "kind": "accepted", "flagged": True, "note": "", "at": "t"},
        {"ref": "task-000003", "kind": "accepted", "flagged": False, "note": "", "at": "t"},  # unflagged: no label
        {"ref": "a5", "kind": "accepted", "note": "", "flagged_at": "t", "record": {}},  # the page's download: a<position>
        {"ref": "task-000004", "kind": "accepted", "flagged": True, "note": "", "at": "t"},  # never judged by A
        {"ref": "rejected-0", "kind": "rejected", "flagged": True, "note": "", "at": "t"},
    ]
    _labels(run / "flags.jsonl", flags)
    result = calibrate(run, run / "flags.jsonl", judge=A)
    assert result["mode"] == "flags"
    assert (result["flagged"], result["compared"], result["not_judged"], result["ignored"]) == (4, 3, 1, 1)
    assert result["judge_failed"] == 2 and result["recall"] == pytest.approx(2 / 3)
    assert result["missed"] == ["task-000000"]
    assert result["failed_on"] == {"valid": 0, "input": 1, "output": 1, "overall": 2}
    text = format_calibration(result)
    assert "The judge also failed 2 of 3" in text and "need both classes" in text
    assert "kappa" not in result


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"task_id": "task-000000", "valid": true}', "{not json"], r"labels\.jsonl:2 is not valid JSON .*fix or delete"),
        (["[1, 2]"], r"labels\.jsonl:1 is not a JSON object"),
        ([{"valid": True}], r"labels\.jsonl:1 has no 'task_id'"),
        ([{"task_id": "task-000099", "valid": True}], r"labels\.jsonl:1: task 'task-000099' is not in .*check the id"),
        ([{"task_id": "task-000000", "valid": "yes"}], r"labels\.jsonl:1: 'valid' should be true or false, found 'yes'"),
        ([{"task_id": "task-000000", "overall": 7}], r"labels\.jsonl:1: 'overall' should be a whole number from 1 to 5"),
        ([{"task_id": "task-000000", "note": "fine"}], r"labels\.jsonl:1 labels nothing"),
        ([{"task_id": "task-000000", "instance": 0, "valid": True}], r"labels\.jsonl:1: .* have no instances; drop 'instance'"),
        ([{"task_id": "task-000000", "valid": True}, {"task_id": "task-000000", "output": True}],
         r"labels\.jsonl:2 labels task-000000 again \(first on line 1\)"),
        ([{"task_id": "task-000000", "valid": True}, {"ref": "task-000001", "kind": "accepted"}], r"labels\.jsonl:2 is a flag line"),
        ([""], r"holds no labels"),
    ],
)  # fmt: skip
def test_bad_label_files_name_the_line_and_the_fix(run: Path, tmp_path: Path, lines: list[Any], message: str) -> None:
    path = _labels(tmp_path / "labels.jsonl", lines)
    with pytest.raises(LabelError, match=message) as caught:
        calibrate(run, path)
    assert isinstance(caught.value, SelfInstructError)


def test_missing_labels_file_and_unjudged_run(run: Path, tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"missing\.jsonl: no such file; pass --labels"):
        calibrate(run, tmp_path / "missing.jsonl")
    bare = make_run(tmp_path / "bare")
    labels = _labels(tmp_path / "l.jsonl", [{"task_id": "task-000000", "valid": True}])
    with pytest.raises(LabelError, match=r"has no judgments yet; run `selfinstruct judge .*` first"):
        calibrate(bare, labels)
    with pytest.raises(LabelError, match="flag on 'task-000042', which is no accepted task"):
        calibrate(run, _labels(tmp_path / "f.jsonl", [{"ref": "task-000042", "kind": "accepted", "flagged": True}]))
