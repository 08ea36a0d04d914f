"""`selfinstruct generate` end to end against a real loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

from conftest import (
    SCORER,
    SEEDS,
    add_tasks,
    assert_valid_dataset,
    generate_args,
    lines,
    one_error_line,
    run_cli,
    spawn,
    wait_for_lines,
)
from fake_openai import FakeOpenAI, Reply
from selfinstruct.store import RunStore


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_reaches_target_exactly(tmp_path: Path, fake_server: FakeOpenAI, api: str) -> None:
    out = tmp_path / "run"
    result = run_cli(*generate_args(out, fake_server, 45, "--api", api, "--concurrency", "6"))
    assert result.returncode == 0, result.stderr
    records = assert_valid_dataset(out, 45, fake_server)
    nearest = records[0]["most_similar_instruction"]
    assert nearest and SCORER.score(nearest, records[0]["instruction"])["rougeL"].fmeasure == pytest.approx(
        records[0]["rouge_l"], abs=0
    )
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done"
    assert run["counters"]["accepted"] == 45
    assert run["counters"]["completion_tokens"] > 0
    paths = {r.path for r in fake_server.completion_requests()}
    assert paths == {"/v1/chat/completions" if api == "chat" else "/v1/completions"}
    # Rerunning a finished run adds nothing and asks the server for nothing new.
    before = len(fake_server.completion_requests())
    again = run_cli(*generate_args(out, fake_server, 45, "--api", api))
    assert again.returncode == 0, again.stderr
    assert len(lines(out / "instructions.jsonl")) == 45
    assert len(fake_server.completion_requests()) == before


PLANTED = {
    "too_short": ("Tell a joke.", "", "Why did the chicken cross the road? To get to the other side."),
    "too_long": (" ".join(["Describe"] + ["carefully"] * 155) + ".", "", "A long description."),
    "blacklisted_word": ("Describe the image below in two short sentences for a catalogue.", "", "A red bicycle."),
    "write_a_program": ("Write a program that prints the first ten prime numbers.", "", "2 3 5 7 11 13 17 19 23 29"),
    "starts_with_punctuation": ("(Optional) Summarize the water cycle for a ten year old reader.", "", "Water rises, cools and falls."),
    "non_ascii_start": ("Écris une phrase courte sur le printemps en français.", "", "Le printemps arrive."),
    "empty_output": ("Name three rivers that flow through more than two countries.", "", ""),
}


def test_faults_and_planted_tasks(tmp_path: Path) -> None:
    seed_copy = SEEDS[10]
    twin = "Explain in plain words how a refrigerator keeps the food inside cold and fresh."
    planted = [PLANTED[k] for k in PLANTED] + [
        (seed_copy, "", "A copy of a seed."),
        (twin, "", "It pumps heat out."),
        (twin + " Keep it short.", "", "Again."),
    ]
    script = {
        0: Reply.error(429, headers={"Retry-After": "1"}),
        1: Reply.error(500),
        2: Reply.error(503),
        3: Reply.drop(),
        4: Reply.slow(0.3, Reply.default()),
        5: Reply.text("I am sorry, I cannot help with that request today."),
        6: Reply.truncated([("Outline a weekly meal plan for a family of four on a budget.", "", "Monday: lentil soup."),
                            ("Compare two ways of saving money for a holiday trip abroad.", "", "One way is")]),
        7: Reply.tasks(planted),
    }  # fmt: skip
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: script.get(ctx.number))
        out = tmp_path / "run"
        result = run_cli(*generate_args(out, server, 40, "--concurrency", "3"))
        assert result.returncode == 0, result.stderr
        assert_valid_dataset(out, 40, server)
    rejected = lines(out / "rejected.jsonl")
    reasons = {(r["instruction"], r["reason"]) for r in rejected}
    for reason, (instruction, _, _) in PLANTED.items():
        assert (instruction, reason) in reasons, reason
    assert (seed_copy, "near_duplicate") in reasons
    assert (twin + " Keep it short.", "near_duplicate") in reasons
    assert any(r["reason"] == "unparseable" for r in rejected)
    accepted = {r["instruction"] for r in lines(out / "instructions.jsonl")}
    assert twin in accepted
    # The task cut by finish_reason=length is dropped, the one before it kept.
    assert "Outline a weekly meal plan for a family of four on a budget." in accepted
    assert not any(i.startswith("Compare two ways of saving money") for i in accepted)
    run = json.loads((out / "run.json").read_text())
    assert run["counters"]["incomplete_tasks"] == 1
    assert run["counters"]["rejected"]["near_duplicate"] >= 2
    endpoint = next(iter(run["endpoints"].values()))
    assert endpoint["errors"]["http_429"] == 1 and endpoint["errors"]["connection"] >= 1


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    rng = random.Random(1234)
    target = 120
    out = tmp_path / "run"
    with FakeOpenAI(latency=0.01) as server:
        args = generate_args(out, server, target, "--concurrency", "4", "--tasks-per-prompt", "8")
        kills = 0
        while kills < 5:
            # Complete lines only: the last kill may have left a torn line for generate to repair.
            have = (out / "instructions.jsonl").read_bytes().count(b"\n") if (out / "instructions.jsonl").exists() else 0
            proc = spawn(args)
            wait_for_lines(out / "instructions.jsonl", min(target - 5, have + rng.randint(1, 20)), proc)
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            kills += 1
            # Whatever the moment of the kill, every complete line on disk is a valid record.
            raw = (out / "instructions.jsonl").read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            assert all(json.loads(line) for line in complete.splitlines())
        assert kills >= 3
        final = run_cli(*args)
        assert final.returncode == 0, final.stderr
        records = assert_valid_dataset(out, target, server)
    assert [r["id"] for r in records] == [f"task-{i:06d}" for i in range(target)]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["sessions"] >= kills + 1


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        args = generate_args(out, server, 200, "--concurrency", "2", "--tasks-per-prompt", "6")
        proc = spawn(args)
        wait_for_lines(out / "instructions.jsonl", 5, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "Resume with the same command" in stderr
        run = json.loads((out / "run.json").read_text())
        assert run["status"] == "interrupted"
        have = len(lines(out / "instructions.jsonl"))
        assert 5 <= have < 200
        result = run_cli(*generate_args(out, server, 30 if have < 30 else have + 5, "--concurrency", "2", "--tasks-per-prompt", "6"))
        assert result.returncode == 0, result.stderr


# -- bad input: one clear line, non-zero exit, nothing lost ---------------------------------


def test_missing_empty_and_invalid_seed_files(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    missing = run_cli(*generate_args(out, fake_server, 5, "--seed-tasks", str(tmp_path / "nope.jsonl")))
    assert missing.returncode == 1 and "does not exist" in one_error_line(missing.stderr)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = run_cli(*generate_args(out, fake_server, 5, "--seed-tasks", str(empty)))
    assert result.returncode == 1 and "is empty" in one_error_line(result.stderr)
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "a", "instruction": "Name a color that mixes from blue and yellow.", "instances": [{"input": "", "output": "Green"}]})
    bad.write_text(good + "\n" + good.replace('"a"', '"b"').replace("color", "colour") + "\n{not json\n")
    result = run_cli(*generate_args(out, fake_server, 5, "--seed-tasks", str(bad)))
    assert result.returncode == 1 and "line 3" in one_error_line(result.stderr)
    assert fake_server.completion_requests() == []


def test_unreachable_server(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli("generate", "-o", str(tmp_path / "run"), "-n", "5", "--base-url", f"http://127.0.0.1:{port}/v1", "-q")
    assert result.returncode == 1
    assert "cannot reach the model server" in one_error_line(result.stderr)


def test_wrong_key_is_refused_and_never_shown(tmp_path: Path) -> None:
    secret = "sk-test-must-not-leak-42"
    with FakeOpenAI(api_key="the-right-key") as server:
        result = run_cli(*generate_args(tmp_path / "run", server, 5, "--api-key", secret))
    assert result.returncode == 1
    assert "rejected the API key" in one_error_line(result.stderr)
    assert secret not in result.stderr + result.stdout
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace")


def test_unknown_model_lists_available(tmp_path: Path) -> None:
    with FakeOpenAI(models=("alpha-7b", "beta-13b")) as server:
        result = run_cli(*generate_args(tmp_path / "run", server, 5, "--model", "gamma"))
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "gamma" in line and "alpha-7b" in line and "beta-13b" in line


def test_locked_output_dir(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    with RunStore(out) as store:
        add_tasks(store, [("kept", "", "x")])
        before = (out / "instructions.jsonl").read_bytes()
        result = run_cli(*generate_args(out, fake_server, 5))
    assert result.returncode == 1 and "in use" in one_error_line(result.stderr)
    assert (out / "instructions.jsonl").read_bytes() == before
    assert [r["instruction"] for r in lines(out / "instructions.jsonl")] == ["kept"]


def test_config_change_on_resume_is_refused(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    assert run_cli(*generate_args(out, fake_server, 6)).returncode == 0
    before = (out / "instructions.jsonl").read_bytes()
    result = run_cli(*generate_args(out, fake_server, 12, "--temperature", "0.5"))
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "temperature 1.0 → 0.5" in line and "--allow-config-change" in line
    assert (out / "instructions.jsonl").read_bytes() == before
    # Where and how fast may change freely; so may the target.
    assert run_cli(*generate_args(out, fake_server, 9, "--concurrency", "2")).returncode == 0
    assert len(lines(out / "instructions.jsonl")) == 9
    forced = run_cli(*generate_args(out, fake_server, 12, "--temperature", "0.5", "--allow-config-change"))
    assert forced.returncode == 0, forced.stderr
    assert len(lines(out / "instructions.jsonl")) == 12


def test_export_and_stats_commands_on_a_generated_run(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    assert run_cli(*generate_args(out, fake_server, 12)).returncode == 0
    alpaca = tmp_path / "alpaca.json"
    result = run_cli("export", str(out), "--format", "alpaca", "-o", str(alpaca))
    assert result.returncode == 0, result.stderr
    rows = json.loads(alpaca.read_text())
    records = lines(out / "instructions.jsonl")
    assert rows == [{k: r[k] for k in ("instruction", "input", "output")} for r in records]
    sharegpt = run_cli("export", str(out), "--format", "sharegpt", "-o", "-")
    conversations = [json.loads(line)["conversations"] for line in sharegpt.stdout.splitlines()]
    assert [c[1]["value"] for c in conversations] == [r["output"] for r in records]
    stats = run_cli("stats", str(out), "--json", "--plots", str(tmp_path / "plots"))
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["accepted"] == 12
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 4 and all((tmp_path / "plots" / p).read_bytes().startswith(b"\x89PNG") for p in pngs)
    missing = run_cli("export", str(tmp_path / "nope"), "-o", str(tmp_path / "x.json"))
    assert missing.returncode == 1 and "nope" in one_error_line(missing.stderr)


def test_a_prompt_template_aims_generation_and_is_guarded(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    template = tmp_path / "cooking.json"
    template.write_text(json.dumps({"alpaca_header": "Write {total} cooking tasks; {no_input} marks an empty input.\n"}))
    out = tmp_path / "run"
    result = run_cli(*generate_args(out, fake_server, 5, "--prompt-template", str(template)))
    assert result.returncode == 0, result.stderr
    assert all(r.body["messages"][0]["content"].split("\n\n", 1)[1].startswith("Write 20 cooking tasks") for r in fake_server.completion_requests())
    again = run_cli(*generate_args(out, fake_server, 8))  # without it: another prompt, refused
    assert again.returncode == 1 and "prompt changed" in one_error_line(again.stderr)
