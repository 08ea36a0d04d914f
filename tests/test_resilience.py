"""Nothing lost, ever: crafted crash leftovers, full disks, lost run.json, signals in every phase.

Each test drives the real CLI (or the public API) against a real loopback server, on run
directories shaped the way crashes, editors and users leave them.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, generate_args, lines, one_error_line, run_cli, spawn
from fake_openai import FakeOpenAI, Reply

DATA = Path(__file__).parent / "data"


def task_line(i: int, *, request: int | None = None, output: str = "Knead, rest, shape and bake.") -> bytes:
    record = {
        "schema": 1,
        "id": f"task-{i:06d}",
        "instruction": f"Describe step {i} of baking a sourdough loaf at home in detail.",
        "input": "",
        "output": output,
        "request": i if request is None else request,
    }
    return json.dumps(record).encode() + b"\n"


def fresh(out: Path, *chunks: bytes, name: str = "instructions.jsonl") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(b"".join(chunks))


def resume(out: Path, server: FakeOpenAI, n: int, *extra: str) -> None:
    result = run_cli(*generate_args(out, server, n, *extra))
    assert result.returncode == 0, result.stderr


# -- crash repair never deletes a complete record --------------------------------------------------


@pytest.mark.parametrize("tail", [b'{"schema":1,"instruction":"' + b"y" * (1 << 20) + b"z" * 100, b"\x00" * (1 << 20)])
def test_resume_after_a_torn_tail_longer_than_a_mebibyte(tmp_path: Path, fake_server: FakeOpenAI, tail: bytes) -> None:
    out = tmp_path / "run"
    good = b"".join(task_line(i) for i in range(3))
    fresh(out, good, tail)
    resume(out, fake_server, 6)
    data = (out / "instructions.jsonl").read_bytes()
    assert data.startswith(good) and len(lines(out / "instructions.jsonl")) == 6


def test_a_valid_last_record_over_a_mebibyte_survives_two_resumes(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    records = b"".join(task_line(i) for i in range(49)) + task_line(49, output="crumb " * 250_000)
    fresh(out, records)
    big_rejection = json.dumps({"reason": "too_long", "instruction": "Write " * 300_000, "request": 3}).encode() + b"\n"
    fresh(out, big_rejection, name="rejected.jsonl")
    resume(out, fake_server, 52)
    resume(out, fake_server, 52)
    assert (out / "instructions.jsonl").read_bytes().startswith(records)
    assert (out / "rejected.jsonl").read_bytes().startswith(big_rejection)
    stats = run_cli("stats", str(out), "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["rejected_by_reason"]["too_long"] == 1


def test_a_last_record_without_its_newline_is_kept(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    fresh(out, task_line(0), task_line(1).rstrip(b"\n"))  # as an editor saves a file
    resume(out, fake_server, 4)
    assert (out / "instructions.jsonl").read_bytes().startswith(task_line(0) + task_line(1))
    ids = [r["id"] for r in lines(out / "instructions.jsonl")]
    assert len(ids) == len(set(ids)) == 4


def test_request_numbers_never_repeat_after_a_crash(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    fresh(out, *(task_line(i, request=i) for i in range(3)))
    # The last requests before the crash had only rejected tasks.
    fresh(out, json.dumps({"reason": "too_short", "instruction": "Hi.", "request": 500}).encode() + b"\n", name="rejected.jsonl")
    resume(out, fake_server, 6)
    new = [r["request"] for r in lines(out / "instructions.jsonl")[3:]]
    assert new and min(new) > 500


def test_a_deleted_line_does_not_make_two_tasks_share_an_id(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    fresh(out, *(task_line(i) for i in range(5) if i != 2))  # the user deleted task-000002
    resume(out, fake_server, 8)
    ids = [r["id"] for r in lines(out / "instructions.jsonl")]
    assert len(ids) == len(set(ids)) == 8


def test_counters_and_stats_follow_the_files_not_a_stale_run_json(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    resume(out, fake_server, 5)
    # What a SIGKILL between two saves of run.json leaves: lines the counters have not seen.
    with (out / "instructions.jsonl").open("ab") as fh:
        fh.write(task_line(900, request=900))
    with (out / "rejected.jsonl").open("ab") as fh:
        fh.write(json.dumps({"reason": "too_short", "instruction": "Go.", "request": 900}).encode() + b"\n")
    stats = json.loads(run_cli("stats", str(out), "--json").stdout)
    assert stats["accepted"] == 6 and stats["rejected_by_reason"].get("too_short") == 1
    resume(out, fake_server, 8)
    run = json.loads((out / "run.json").read_text())
    assert run["counters"]["accepted"] == len(lines(out / "instructions.jsonl")) == 8
    assert run["counters"]["rejected_total"] == len(lines(out / "rejected.jsonl"))


@pytest.mark.parametrize("damage", ["delete", "empty"])
def test_the_settings_guard_survives_a_lost_run_json(tmp_path: Path, fake_server: FakeOpenAI, damage: str) -> None:
    out = tmp_path / "run"
    resume(out, fake_server, 4)
    if damage == "delete":
        (out / "run.json").unlink()
    else:
        (out / "run.json").write_bytes(b"")
    result = run_cli(*generate_args(out, fake_server, 8, "--temperature", "0.3", "--similarity-threshold", "0.9"))
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "temperature 1.0 → 0.3" in line and "--allow-config-change" in line
    assert len(lines(out / "instructions.jsonl")) == 4
    resume(out, fake_server, 8)  # the original settings still resume


def test_the_guard_holds_even_when_every_settings_file_is_gone(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    resume(out, fake_server, 4)
    for name in ("run.json", "settings.json"):
        (out / name).unlink(missing_ok=True)
    result = run_cli(*generate_args(out, fake_server, 8, "--temperature", "0.3"))
    assert result.returncode == 1 and "other settings" in one_error_line(result.stderr)


# -- every OS error is a user error -----------------------------------------------------------------


def _file_size_limit(limit: int) -> None:
    # As a full disk does: writes past the limit fail (EFBIG) instead of killing us (SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_write_failing_mid_run_is_one_line_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        args = [sys.executable, "-m", "selfinstruct", *generate_args(out, server, 300, "--concurrency", "2")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        proc = subprocess.run(
            args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
            preexec_fn=lambda: _file_size_limit(20_000),
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        line = one_error_line(proc.stderr)
        assert "instructions.jsonl" in line and "free disk space" in line and "Traceback" not in proc.stderr
        run = json.loads((out / "run.json").read_text())
        assert run["status"] == "failed" and "free disk space" in run["error"]
        assert (out / "rejected.jsonl").stat().st_size > 0 or run["counters"]["rejected_total"] == 0
        raw = (out / "instructions.jsonl").read_bytes()
        kept = [json.loads(x) for x in raw[: raw.rfind(b"\n") + 1].splitlines()]
        assert kept
        resume(out, server, len(kept) + 5)
    after = lines(out / "instructions.jsonl")
    assert after[: len(kept)] == kept and len(after) == len(kept) + 5


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    (tmp_path / "run").write_text("not a directory")
    result = run_cli(*generate_args(tmp_path / "run", fake_server, 3))
    assert result.returncode == 1 and "choose another --output-dir" in one_error_line(result.stderr)
    assert (tmp_path / "run").read_text() == "not a directory"


# -- signals always work --------------------------------------------------------------------------


def _silent_server() -> socket.socket:
    """A server that accepts connections and never answers (a hung /v1/models)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_model_discovery_stops_at_once(tmp_path: Path, sig: int) -> None:
    with _silent_server() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        out = tmp_path / "run"
        proc = spawn(["generate", "-o", str(out), "-n", "5", "--base-url", url, "-q", "--request-timeout", "600"])
        conn, _ = sock.accept()  # the CLI is now waiting for /v1/models
        try:
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=15)  # the old code ignored it for 20 s, twice
        finally:
            conn.close()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


# -- the library is the product ------------------------------------------------------------------


def test_generate_works_inside_a_running_event_loop(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    from selfinstruct import RunConfig, generate

    config = RunConfig(output_dir=tmp_path / "run", base_urls=(fake_server.base_url,), num_instructions=5, progress=False)

    async def notebook_cell() -> int:
        return generate(config).accepted  # as a Jupyter cell calls it

    assert asyncio.run(notebook_cell()) == 5
    assert len(lines(tmp_path / "run" / "instructions.jsonl")) == 5


def test_no_url_from_python_means_the_embedded_model(tmp_path: Path) -> None:
    from selfinstruct import ConfigError, RunConfig, generate

    missing = tmp_path / "no-such-model.gguf"
    config = RunConfig(output_dir=tmp_path / "run", model_path=missing, num_instructions=3, progress=False)
    assert config.resolved().api == "completions" and config.resolved().concurrency == 1
    assert config.resolved().max_tokens == 1024
    with pytest.raises(ConfigError, match="no-such-model.gguf"):
        generate(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("api", "chatt", "api must be one of chat, completions"),
        ("tokenizer", "bpe", "tokenizer must be one of"),
        ("num_instructions", 0, "--num-instructions"),
        ("temperature", float("nan"), "--temperature"),
        ("request_timeout", 0, "--request-timeout"),
        ("base_urls", ("localhost:8000",), r"not an http\(s\) URL"),
        ("output_dir", "", "output_dir is empty"),
    ],
)
def test_run_config_checks_itself(tmp_path: Path, field: str, value: object, message: str) -> None:
    from selfinstruct import ConfigError, RunConfig

    kwargs: dict[str, object] = {"output_dir": tmp_path, field: value}
    with pytest.raises(ConfigError, match=message):
        RunConfig(**kwargs)  # type: ignore[arg-type]


def test_a_finished_run_needs_no_server(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    resume(out, fake_server, 5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    result = run_cli("generate", "-o", str(out), "-n", "5", "--base-url", dead, "--seed", "7", "-q")
    assert result.returncode == 0, result.stderr
    assert "done: 5/5 tasks" in result.stderr
    # Without any URL it would otherwise boot the embedded model: it does not.
    result = run_cli("generate", "-o", str(out), "-n", "5", "-q")
    assert result.returncode == 0 and not (out / "embedded-server.log").exists()


# -- runs written by earlier versions --------------------------------------------------------------


def test_a_run_written_by_version_0_1_resumes(tmp_path: Path, fake_server: FakeOpenAI) -> None:
    out = tmp_path / "run"
    shutil.copytree(DATA / "run-0.1.0", out)
    before = (out / "instructions.jsonl").read_bytes()
    old_counters = json.loads((out / "run.json").read_text())["counters"]
    resume(out, fake_server, 14, "--seed", "5", "--concurrency", "1")  # the settings it was made with
    assert (out / "instructions.jsonl").read_bytes().startswith(before)
    records = lines(out / "instructions.jsonl")
    ids = [r["id"] for r in records]
    assert len(records) == 14 and len(set(ids)) == 14
    run = json.loads((out / "run.json").read_text())
    assert run["counters"]["requests"] > old_counters["requests"]
    assert run["counters"]["prompt_tokens"] > old_counters["prompt_tokens"]
    assert run["counters"]["rejected"]["too_short"] == 1 and run["sessions"] == 2
    assert min(r["request"] for r in records[9:]) >= old_counters["next_request"]


@pytest.mark.parametrize("phase", ["retry wait", "hanging answer"])
def test_a_signal_during_retries_or_a_hanging_answer_stops_at_once(tmp_path: Path, phase: str) -> None:
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        if phase == "retry wait":
            server.set_handler(lambda ctx: Reply.error(503, headers={"Retry-After": "3000"}))
        else:
            server.set_handler(lambda ctx: Reply.slow(3000, Reply.default()))
        proc = spawn(generate_args(out, server, 5, "--retry-wait", "300", "--request-timeout", "3000"))
        server.wait_until(lambda s: len(s.completion_requests()) >= 1, timeout=60)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 130, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


# -- one bad request is not a bad job -----------------------------------------------------------------


def test_one_bad_request_in_many_is_dropped_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: Reply.error(400, "bad sampling value") if ctx.number == 3 else None)
        result = run_cli(*generate_args(out, server, 60, "--concurrency", "2", "--tasks-per-prompt", "8"))
    assert result.returncode == 0, result.stderr
    failed = [r for r in lines(out / "requests.jsonl") if r["outcome"] == "failed"]
    assert [r["error"] for r in failed] == ["http_400"] and "bad sampling value" in failed[0]["detail"]
    assert json.loads((out / "run.json").read_text())["status"] == "done"


def test_context_length_on_every_tenth_request_is_dropped_each_time(tmp_path: Path) -> None:
    out = tmp_path / "run"
    too_long = Reply.error(400, "This model's maximum context length is 2048 tokens", code="context_length_exceeded")
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: too_long if ctx.number % 10 == 0 else None)
        result = run_cli(*generate_args(out, server, 60, "--concurrency", "2", "--tasks-per-prompt", "8"))
    assert result.returncode == 0, result.stderr
    kinds = {r.get("error") for r in lines(out / "requests.jsonl") if r["outcome"] == "failed"}
    assert kinds == {"context_length"}
    assert len(lines(out / "instructions.jsonl")) == 60


def test_the_same_bad_request_every_time_stops_with_the_fix(tmp_path: Path) -> None:
    out = tmp_path / "run"
    too_long = Reply.error(400, "This model's maximum context length is 2048 tokens", code="context_length_exceeded")
    with FakeOpenAI() as server:
        server.set_handler(lambda ctx: too_long)
        result = run_cli(*generate_args(out, server, 10, "--max-consecutive-bad-requests", "5"))
        sent = len(server.completion_requests())
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "--max-tokens" in line and sent <= 10
