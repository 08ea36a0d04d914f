"""`selfinstruct judge` and `generate --judge` against a real loopback server with a scripted judge."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import add_tasks, generate_args, lines, one_error_line, run_cli, spawn, wait_for_lines
from fake_openai import FakeOpenAI, Reply, RequestContext
from selfinstruct.config import JudgeConfig
from selfinstruct.judging import UnreadableJudge, judge_tasks
from selfinstruct.store import RunStore

JUDGE_MARK = "Review the task below"
_TASK = re.compile(r"Instruction: (.*?)\nInput: (.*?)\nOutput: (.*?)\n\nThink", re.DOTALL)


def expected(instruction: str) -> dict:
    """The scripted judge's verdict: a pure function of the task, so every record can be checked."""
    score = len(instruction) % 5 + 1
    return {"valid": score >= 2, "input": True, "output": score >= 3, "overall": score}


def task_of(ctx: RequestContext) -> str:
    match = _TASK.search(ctx.prompt)
    assert match, ctx.prompt
    return match.group(1)


def judge_handler(
    unreadable: Callable[[str, int], bool] = lambda instruction, attempt: False,
) -> Callable[[RequestContext], Reply | None]:
    """Answers judge prompts (others fall through to the fake's task generator)."""
    attempts: Counter[str] = Counter()

    def handle(ctx: RequestContext) -> Reply | None:
        if JUDGE_MARK not in ctx.prompt:
            return None
        instruction = task_of(ctx)
        attempts[instruction] += 1
        if unreadable(instruction, attempts[instruction]):
            return Reply.text("This task is quite good, I think, overall.")
        return Reply.text(json.dumps({"reasoning": "scripted", **expected(instruction)}))

    return handle


def make_run(directory: Path, count: int, *, model: str = "writer-model") -> list[tuple[str, str, str]]:
    tasks = [(f"Write a short note number {i} about {'x' * (i % 7)} topic {i * 13}", "" if i % 3 else f"ctx {i}", f"Answer {i}.") for i in range(count)]
    with RunStore(directory) as store:
        add_tasks(store, tasks, model=model)
    return tasks


def judged_lines(out: Path) -> list[dict]:
    return [r for r in lines(out / "judgments.jsonl") if r["status"] == "judged"]


def check_every_judgment(out: Path, tasks: list[tuple[str, str, str]]) -> None:
    by_id = {r["id"]: r for r in lines(out / "instructions.jsonl")}
    judged = judged_lines(out)
    keys = Counter((r["task_id"], r.get("instance"), r["judge"]) for r in judged)
    assert max(keys.values()) == 1, "a task was judged twice by one judge"
    assert {r["task_id"] for r in judged} == set(by_id)
    for record in judged:
        want = expected(by_id[record["task_id"]]["instruction"])
        assert record["overall"] == want["overall"]
        assert record["checks"] == {k: want[k] for k in ("valid", "input", "output")}


def test_judge_scores_every_task_once_and_records_tokens(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    tasks = make_run(out, 40)
    fake_server.set_handler(judge_handler())
    result = run_cli("judge", str(out), "--base-url", fake_server.base_url, "-q")
    assert result.returncode == 0, result.stderr
    assert "40 of 40 tasks judged" in result.stderr
    check_every_judgment(out, tasks)
    run = json.loads((out / "run.json").read_text())
    records = lines(out / "judgments.jsonl")
    assert run["judge"]["judged"] == 40 and run["judge"]["unjudged"] == 0
    assert run["judge"]["completion_tokens"] == sum(r["completion_tokens"] for r in records) > 0
    judges = json.loads((out / "judges.json").read_text())["judges"]
    assert [j["fingerprint"] for j in judges] == [run["judge"]["fingerprint"]]
    assert judges[0]["settings"]["temperature"] == 0.0 and judges[0]["settings"]["model"] == "fake-model"
    bodies = [r.body for r in fake_server.completion_requests()]
    assert all(b["temperature"] == 0.0 and len(b["messages"]) == 2 for b in bodies)
    # Judged again: nothing is sent, nothing is written.
    sent = len(bodies)
    again = run_cli("judge", str(out), "--base-url", fake_server.base_url, "-q")
    assert again.returncode == 0 and "0 in this session" in again.stderr
    assert len(fake_server.completion_requests()) == sent
    assert len(lines(out / "judgments.jsonl")) == len(records)


def test_unreadable_answers_stay_unjudged_and_are_retried_next_time(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    tasks = make_run(out, 24)
    stubborn = {t[0] for t in tasks[:5]}  # never readable in the first session
    flaky = {t[0] for t in tasks[5:10]}  # readable on the second try
    session = {"n": 1}
    fake_server.set_handler(
        judge_handler(lambda i, attempt: (i in stubborn and session["n"] == 1) or (i in flaky and attempt == 1))
    )
    first = run_cli("judge", str(out), "--base-url", fake_server.base_url, "-q")
    assert first.returncode == 0, first.stderr
    assert "19 of 24 tasks judged" in first.stderr and "5 unjudged" in first.stderr
    records = lines(out / "judgments.jsonl")
    unjudged = [r for r in records if r["status"] == "unjudged"]
    assert len(unjudged) == 5 * 2 + 5  # stubborn: two tries each; flaky: one failed try each
    assert all("overall" not in r and "checks" not in r and r["raw"].startswith("This task") for r in unjudged)
    assert all("no verdict" in r["error"] for r in unjudged)
    session["n"] = 2
    second = run_cli("judge", str(out), "--base-url", fake_server.base_url, "-q")
    assert second.returncode == 0, second.stderr
    assert "24 of 24 tasks judged (5 in this session)" in second.stderr
    check_every_judgment(out, tasks)


def test_sigkill_mid_judging_then_resume_judges_each_task_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tasks = make_run(out, 60)
    with FakeOpenAI(latency=0.02, capacity=4) as server:
        server.set_handler(judge_handler())
        for kill_at in (7, 25):
            proc = spawn(["judge", str(out), "--base-url", server.base_url, "--concurrency", "4", "-q"])
            wait_for_lines(out / "judgments.jsonl", kill_at, proc)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        with (out / "judgments.jsonl").open("ab") as fh:
            fh.write(b'{"schema": 2, "task_id": "task-0000')  # a torn last line, as a crash mid-write leaves
        result = run_cli("judge", str(out), "--base-url", server.base_url, "-q")
        assert result.returncode == 0, result.stderr
        assert "60 of 60 tasks judged" in result.stderr
    check_every_judgment(out, tasks)
    assert (out / "judgments.jsonl.quarantine").exists()


def test_ctrl_c_stops_judging_and_the_same_command_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tasks = make_run(out, 30)
    with FakeOpenAI(latency=0.05, capacity=2) as server:
        server.set_handler(judge_handler())
        proc = spawn(["judge", str(out), "--base-url", server.base_url, "--concurrency", "2", "-q"])
        wait_for_lines(out / "judgments.jsonl", 4, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "Go on with the same command: selfinstruct judge" in stderr
        assert json.loads((out / "run.json").read_text())["judge"]["judged"] >= 4
        result = run_cli("judge", str(out), "--base-url", server.base_url, "-q")
        assert result.returncode == 0, result.stderr
    check_every_judgment(out, tasks)


def test_two_rubrics_are_two_judges_and_export_picks_one(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    tasks = make_run(out, 20)
    fake_server.set_handler(judge_handler())
    assert run_cli("judge", str(out), "--base-url", fake_server.base_url, "-q").returncode == 0
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"system": "You are a very strict reviewer. Reply with one JSON object."}))
    second = run_cli("judge", str(out), "--base-url", fake_server.base_url, "--rubric", str(strict), "-q")
    assert second.returncode == 0, second.stderr
    assert "20 of 20 tasks judged (20 in this session)" in second.stderr
    judges = json.loads((out / "judges.json").read_text())["judges"]
    assert len(judges) == 2 and judges[0]["fingerprint"] != judges[1]["fingerprint"]
    per_judge = Counter(r["judge"] for r in judged_lines(out))
    assert per_judge == {judges[0]["fingerprint"]: 20, judges[1]["fingerprint"]: 20}

    keep = [t for t in tasks if expected(t[0])["overall"] >= 4]
    dest = tmp_path / "good.json"
    result = run_cli("export", str(out), "-o", str(dest), "--min-overall", "4")
    assert result.returncode == 0, result.stderr
    assert [r["instruction"] for r in json.loads(dest.read_text())] == [t[0] for t in keep]
    assert 0 < len(keep) < len(tasks)
    result = run_cli("export", str(out), "-o", str(dest), "--require", "valid,output", "--judge", judges[0]["fingerprint"][:8])
    assert result.returncode == 0, result.stderr
    want = [t[0] for t in tasks if expected(t[0])["valid"] and expected(t[0])["output"]]
    assert [r["instruction"] for r in json.loads(dest.read_text())] == want


def test_export_leaves_out_unjudged_tasks_and_says_so(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    tasks = make_run(out, 12)
    fake_server.set_handler(judge_handler(lambda i, attempt: i == tasks[0][0]))
    assert run_cli("judge", str(out), "--base-url", fake_server.base_url, "-q").returncode == 0
    dest = tmp_path / "all.jsonl"
    result = run_cli("export", str(out), "-f", "alpaca-jsonl", "-o", str(dest), "--min-overall", "1")
    assert result.returncode == 0, result.stderr
    assert len(lines(dest)) == 11
    assert "1 tasks have no judgment and were left out" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--require", "valid,style"], "--require style: unknown question; choose from valid,input,output"),
        (["--min-overall", "3", "--judge", "ffff"], "has no judgments; run `selfinstruct judge"),
        (["--min-overall", "3", "-f", "sqlite"], "the sqlite format holds the whole run"),
    ],
)
def test_export_filter_mistakes_are_one_line_and_write_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    make_run(out, 3)
    dest = tmp_path / "out.json"
    result = run_cli("export", str(out), "-o", str(dest), *args)
    assert result.returncode == 1
    assert message in one_error_line(result.stderr)
    assert not dest.exists()


def test_structured_output_is_probed_and_the_fallbacks_used(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    tasks = make_run(out, 8)
    scripted = judge_handler()

    def only_json_object(ctx: RequestContext) -> Reply | None:
        kind = (ctx.body.get("response_format") or {}).get("type")
        if kind == "json_schema":
            return Reply.error(500, "unsupported response_format")  # llama-cpp-python's way of saying 422
        return scripted(ctx)

    fake_server.set_handler(only_json_object)
    result = run_cli("judge", str(out), "--base-url", fake_server.base_url, "-q")
    assert result.returncode == 0, result.stderr
    kinds = [(r.body.get("response_format") or {}).get("type") for r in fake_server.completion_requests()]
    assert kinds == ["json_schema"] + ["json_object"] * 8
    assert json.loads((out / "run.json").read_text())["judge"]["structured"] == "json_object"
    check_every_judgment(out, tasks)

    plain = tmp_path / "plain"
    make_run(plain, 3)
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: Reply.error(400, "response_format is not supported") if ctx.body.get("response_format") else scripted(ctx))
        result = run_cli("judge", str(plain), "--base-url", server.base_url, "-q")
        assert result.returncode == 0, result.stderr
        kinds = [(r.body.get("response_format") or {}).get("type") for r in server.completion_requests()]
        assert kinds == ["json_schema", "json_object"] + [None] * 3


def test_a_judge_that_never_answers_in_form_stops_with_the_fix(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    make_run(out, 30)
    fake_server.set_handler(lambda ctx: Reply.text("I like it."))
    config = JudgeConfig(output_dir=out, base_urls=(fake_server.base_url,), max_unreadable_answers=6, progress=False, concurrency=1)
    with pytest.raises(UnreadableJudge, match="does not follow the rubric's JSON format"):
        judge_tasks(config)
    records = lines(out / "judgments.jsonl")
    assert len(records) == 6 and all(r["status"] == "unjudged" and "overall" not in r for r in records)
    assert json.loads((out / "run.json").read_text())["judge"]["judged"] == 0


def test_the_writer_judging_itself_is_warned_about(tmp_path: Path) -> None:
    out = tmp_path / "run"
    make_run(out, 2, model="fake-model")
    with FakeOpenAI() as server:
        server.set_handler(judge_handler())
        result = run_cli("judge", str(out), "--base-url", server.base_url, "-q")
    assert result.returncode == 0, result.stderr
    assert "the judge (fake-model) is the model that wrote these tasks" in result.stderr


def test_generate_with_judge_reviews_each_task_as_it_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI() as writer, FakeOpenAI(models=("judge-model",)) as reviewer:
        reviewer.set_handler(judge_handler())
        args = generate_args(out, writer, 30, "--concurrency", "2", "--judge", "--judge-base-url", reviewer.base_url)
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert "judge judge-model" in result.stderr and "30 judged, 0 unjudged" in result.stderr
        assert all(JUDGE_MARK not in r.body["messages"][-1]["content"] for r in writer.completion_requests())
    by_id = {r["id"]: r for r in lines(out / "instructions.jsonl")}
    judged = judged_lines(out)
    assert len(judged) == 30 and {r["task_id"] for r in judged} == set(by_id)
    for record in judged:
        assert record["overall"] == expected(by_id[record["task_id"]]["instruction"])["overall"]
    run = json.loads((out / "run.json").read_text())
    assert run["judge"]["model"] == "judge-model" and run["judge"]["judged"] == 30


def test_a_self_instruct_run_is_judged_per_instance(tmp_path: Path) -> None:
    out = tmp_path / "run"
    from test_self_instruct import SelfInstructServer

    with FakeOpenAI() as server:
        writer, reviewer = SelfInstructServer(), judge_handler()
        server.set_handler(lambda ctx: reviewer(ctx) or writer(ctx))
        generated = run_cli(*generate_args(out, server, 6, "--method", "self-instruct", "--concurrency", "2"))
        assert generated.returncode == 0, generated.stderr
        result = run_cli("judge", str(out), "--base-url", server.base_url, "-q")
        assert result.returncode == 0, result.stderr
    instances = {(t["id"], i) for t in lines(out / "tasks.jsonl") for i in range(len(t["instances"]))}
    judged = judged_lines(out)
    assert instances and {(r["task_id"], r["instance"]) for r in judged} == instances
    dest = tmp_path / "si.json"
    assert run_cli("export", str(out), "-o", str(dest), "--min-overall", "1").returncode == 0
    assert len(json.loads(dest.read_text())) == len(instances)


def test_judge_on_a_directory_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    result = run_cli("judge", str(tmp_path / "nothing"), "--base-url", "http://127.0.0.1:9/v1")
    assert result.returncode == 1
    assert "is not a directory; pass the --output-dir of a generate run" in one_error_line(result.stderr)


def test_calibrate_compares_the_judge_with_human_labels(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    tasks = make_run(out, 10)
    fake_server.set_handler(judge_handler())
    assert run_cli("judge", str(out), "--base-url", fake_server.base_url, "-q").returncode == 0
    ids = [r["id"] for r in lines(out / "instructions.jsonl")]
    labels = tmp_path / "labels.jsonl"
    # The human agrees with the judge on 'output' everywhere, and disagrees on 'valid' for one task.
    rows = []
    for i, (task_id, task) in enumerate(zip(ids, tasks)):
        want = expected(task[0])
        rows.append({"task_id": task_id, "output": want["output"], "valid": want["valid"] != (i == 0)})
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("calibrate", str(out), "--labels", str(labels), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["compared"] == 10 and report["questions"]["valid"]["agree"] == 9
    assert len({r["output"] for r in rows}) == 2  # both classes, so kappa is defined
    assert report["questions"]["output"]["agreement"] == 1.0
    assert report["questions"]["output"]["kappa"] == pytest.approx(1.0)
    assert "input" not in report["questions"] or report["questions"]["input"]["n"] == 0
    readable = run_cli("calibrate", str(out), "--labels", str(labels))
    assert readable.returncode == 0 and "kappa" in readable.stdout.lower()
    missing = run_cli("calibrate", str(out))
    assert missing.returncode == 1 and "flags.jsonl" in one_error_line(missing.stderr)


def test_generate_with_judge_killed_then_resumed_judges_the_backlog_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI(latency=0.02) as writer, FakeOpenAI(models=("judge-model",), latency=0.05, capacity=1) as reviewer:
        reviewer.set_handler(judge_handler())
        args = generate_args(out, writer, 60, "--concurrency", "2", "--judge", "--judge-base-url", reviewer.base_url)
        proc = spawn(args)
        wait_for_lines(out / "instructions.jsonl", 25, proc)  # the judge, one slot, lags behind
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        accepted = len(lines(out / "instructions.jsonl"))
        assert len(judged_lines(out)) < accepted  # a backlog was left
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    by_id = {r["id"]: r for r in lines(out / "instructions.jsonl")}
    judged = judged_lines(out)
    assert len(by_id) == 60
    assert Counter(r["task_id"] for r in judged) == Counter(list(by_id))  # each task exactly once
    for record in judged:
        assert record["overall"] == expected(by_id[record["task_id"]]["instruction"])["overall"]
