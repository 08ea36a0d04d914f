"""Hostile servers and hostile inputs through the real CLI: never hang, never leak a secret."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import REPO, generate_args, lines, one_error_line, run_cli, spawn
from fake_openai import FakeOpenAI, Reply

# -- progress is the liveness signal, not HTTP 200 -------------------------------------------------


@pytest.mark.parametrize(
    "reply, named",
    [
        (Reply.text("Lorem ipsum dolor sit amet; no tasks in here at all."), "unparseable"),
        (Reply.tasks([("Hi.", "", "Hello."), ("Yo.", "", "Hey.")]), "too_short"),
    ],
)
def test_answers_that_never_give_a_task_stop_the_job_with_what_they_are(tmp_path: Path, reply: Reply, named: str) -> None:
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: reply)
        # The old code looped at full speed forever here (8,795 requests in 38 s); the timeout fails it.
        result = run_cli(*generate_args(tmp_path / "run", server, 50, "--max-fruitless-answers", "30"), timeout=120)
        sent = len(server.completion_requests())
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "gave no usable task" in line and named in line
    assert sent < 200
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_fruitless_streak_resets_when_a_task_gets_in(tmp_path: Path) -> None:
    # Nine useless answers, then a useful one, again and again: slow, but progress; never stopped.
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: None if ctx.number % 10 == 9 else Reply.text("nothing"))
        result = run_cli(*generate_args(tmp_path / "run", server, 12, "--max-fruitless-answers", "10", "--concurrency", "1"))
    assert result.returncode == 0, result.stderr
    assert len(lines(tmp_path / "run" / "instructions.jsonl")) == 12


# -- secrets are never printed or stored -----------------------------------------------------------


def test_the_resume_line_never_shows_the_key_or_url_password(tmp_path: Path) -> None:
    key = "sk-live-do-not-print-7731"
    password = "p@ssWORD-9"
    out = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        url = server.base_url.replace("http://", f"http://alice:{password}@")
        proc = spawn(["generate", "-o", str(out), "-n", "500", "--base-url", url, "--api-key", key, "--concurrency", "1", "-q"])
        server.wait_until(lambda s: len(s.completion_requests()) >= 2, timeout=60)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Resume with the same command" in stderr and '--api-key "$OPENAI_API_KEY"' in stderr
    assert key not in stderr and password not in stderr and "ssWORD" not in stderr
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert key not in text and "ssWORD" not in text, path


def test_sighup_leaves_an_interrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        proc = spawn(generate_args(out, server, 500, "--concurrency", "1"))
        server.wait_until(lambda s: len(s.completion_requests()) >= 2, timeout=60)
        proc.send_signal(signal.SIGHUP)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGHUP, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_a_signal_while_the_seed_file_is_read_stops_at_once(tmp_path: Path) -> None:
    # A FIFO as the seed file: the CLI blocks reading it for as long as we like (a 50 MB seed
    # check took 100 s and ignored Ctrl-C), and we know exactly when it has started.
    fifo = tmp_path / "seeds.jsonl"
    os.mkfifo(fifo)
    with FakeOpenAI() as server:
        proc = spawn(generate_args(tmp_path / "run", server, 5, "--seed-tasks", str(fifo)))
        with fifo.open("w") as writer:  # returns once the CLI has opened the file for reading
            writer.write(json.dumps({"id": "a", "instruction": "Name a fruit that is yellow.",
                                     "instances": [{"input": "", "output": "Banana"}]}) + "\n")  # fmt: skip
            writer.flush()
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert server.completion_requests() == []


# -- messages that say what happened -----------------------------------------------------------------


def test_summary_wording(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    first = run_cli(*generate_args(out, fake_server, 1))
    assert "done: 1/1 task in" in first.stderr
    run_cli(*generate_args(out, fake_server, 5))
    lowered = run_cli(*generate_args(out, fake_server, 3))
    assert lowered.returncode == 0 and "done: 5 tasks (more than the target of 3)" in lowered.stderr


def test_every_option_has_help() -> None:
    text = run_cli("generate", "--help").stdout
    assert "sampling temperature" in text and "nucleus sampling" in text
    assert "run directory of `generate`" in run_cli("stats", "--help").stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-o", ""], "is empty"),
        (["--request-timeout", "0"], "--request-timeout must be in (0"),
        (["--temperature", "3"], "--temperature must be in [0, 2]"),
    ],
)
def test_bad_values_are_one_clear_line(tmp_path: Path, fake_server: FakeOpenAI, args: list[str], expected: str) -> None:
    base = ["generate", "-n", "3", "--base-url", fake_server.base_url, "-q"]
    if "-o" not in args:
        base += ["-o", str(tmp_path / "run")]
    result = run_cli(*base, *args)
    assert result.returncode in (1, 2) and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert fake_server.completion_requests() == []
    assert not (REPO / "instructions.jsonl").exists()


def test_a_malformed_answer_now_and_then_does_not_end_the_job(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: Reply.raw(b'{"choices": [{"message": ', status=200) if ctx.number % 10 == 3 else None)
        result = run_cli(*generate_args(tmp_path / "run", server, 60, "--concurrency", "2", "--tasks-per-prompt", "8",
                                        "--retry-wait", "0.01"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(lines(tmp_path / "run" / "instructions.jsonl")) == 60


def test_a_server_failing_every_request_leaves_counters_that_say_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: Reply.error(500))
        result = run_cli(*generate_args(out, server, 5, "--max-attempts", "1", "--retry-wait", "0.01",
                                        "--retry-wait-max", "0.02", "--give-up-after", "3"))  # fmt: skip
    assert result.returncode == 1 and "http_500" in one_error_line(result.stderr)
    counters = json.loads((out / "run.json").read_text())["counters"]
    assert counters["requests"] == counters["failed_requests"] > 0
    assert counters["failures"] == {"http_500": counters["failed_requests"]}


def test_allow_config_change_on_a_finished_run_changes_nothing(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    assert run_cli(*generate_args(out, fake_server, 5)).returncode == 0
    before = {name: (out / name).read_bytes() for name in ("instructions.jsonl", "settings.json")}
    again = run_cli(*generate_args(out, fake_server, 5, "--temperature", "0.2", "--allow-config-change"))
    assert again.returncode == 0, again.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
