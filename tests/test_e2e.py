"""End to end on a real LLM: the embedded llama.cpp server with SmolLM2-135M-Instruct.

These start the real server through `selfinstruct generate` (no --base-url), so they need the
`local` extra. Outside CI they are skipped when it is missing; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from conftest import REPO, run_cli
from selfinstruct.errors import ConfigError
from selfinstruct.filters import check_candidate
from selfinstruct.local import find_default_model
from selfinstruct.records import Candidate
from selfinstruct.seeds import load_seed_tasks

# A real 135M model on 2 shared cores: each run gets its own 900 s bound (run_cli), so the
# per-test limit must not cut it first.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

try:
    find_default_model()
    MISSING = ""
except ConfigError as exc:
    MISSING = str(exc)

if MISSING:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must run the end-to-end tests, but: {MISSING}")
    pytest.skip(f"embedded model not installed: {MISSING}", allow_module_level=True)

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
# Small answers keep a 135M model on 2 cores quick; the behaviour under test is the same.
FAST = ("--max-tokens", "400", "--tasks-per-prompt", "8", "-q")


def server_pids(out: Path) -> set[int]:
    """Processes that hold this run's embedded-server log open: the server we started."""
    log = str(out / "embedded-server.log")
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == log for fd in (proc / "fd").iterdir()):
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def wait_for(condition, what: str, deadline: float = 180.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def spawn(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.Popen(
        [sys.executable, "-m", "selfinstruct", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )


def accepted(out: Path) -> list[dict]:
    path = out / "instructions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_valid(out: Path, target: int) -> None:
    records = accepted(out)
    assert len(records) == target
    seeds = [t.instruction for t in load_seed_tasks()]
    texts = [r["instruction"] for r in records]
    for i, record in enumerate(records):
        assert check_candidate(Candidate(record["instruction"], record["input"], record["output"])) is None
        for other in seeds + texts[:i]:
            assert SCORER.score(other, texts[i])["rougeL"].fmeasure <= 0.7
    counters = json.loads((out / "run.json").read_text())["counters"]
    assert counters["completion_tokens"] > 0 and counters["prompt_tokens"] > 0


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_generate_on_the_embedded_model(tmp_path: Path, api: str) -> None:
    out = tmp_path / "run"
    result = run_cli("generate", "-o", str(out), "-n", "3", "--api", api, "--seed", "1", *FAST, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "embedded model" in result.stderr
    assert_valid(out, 3)
    assert server_pids(out) == set()  # stopped when the job ended


def test_sigkill_and_resume_against_the_real_server(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("generate", "-o", str(out), "-n", "4", "--seed", "2", *FAST)
    proc = spawn(*args)
    wait_for(lambda: len(accepted(out)) >= 1 or proc.poll() is not None, "a first accepted task", 600)
    server = server_pids(out)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # Our process died without any chance to clean up; the server must follow it (no orphan).
    wait_for(lambda: not server_pids(out), "the orphaned server to exit", 30)
    assert server, "the server was running while generate was"
    result = run_cli(*args, timeout=900)
    assert result.returncode == 0, result.stderr
    assert_valid(out, 4)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_server_is_stopped_on_interrupt(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = spawn("generate", "-o", str(out), "-n", "500", "--seed", "3", *FAST)
    try:
        wait_for(lambda: server_pids(out) or proc.poll() is not None, "the embedded server to start")
        wait_for(lambda: (out / "run.json").exists() or proc.poll() is not None, "the run to begin")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:  # a run that ignored the signal must not go on through the tests after this one
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + sig, stderr
    assert "Resume with the same command" in stderr
    assert server_pids(out) == set()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_server_is_stopped_after_an_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("generate", "-o", str(out), "-n", "2", "--model", "no-such-model", *FAST, timeout=300)
    assert result.returncode == 1
    assert "does not serve model 'no-such-model'" in result.stderr
    assert (out / "embedded-server.log").exists()
    assert server_pids(out) == set()


def test_self_instruct_run_finishes_on_the_embedded_model(tmp_path: Path) -> None:
    out = tmp_path / "si"
    result = run_cli("generate", "-o", str(out), "-n", "3", "--method", "self-instruct", "--max-tokens", "300",
                     "--max-instances", "3", "-q", timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr
    instructions = accepted(out)
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert len(instructions) == 3
    # Every instruction got its decision: instances, or none and the reason why.
    assert sorted(t["id"] for t in tasks) == sorted(i["id"] for i in instructions)
    for task in tasks:
        assert task["instances"] or task["reason"]
        assert len(task["instances"]) <= 3
    stages = {json.loads(line).get("stage") for line in (out / "requests.jsonl").read_text().splitlines()}
    assert {"instruction", "classification", "instances"} <= stages


def test_generate_with_judge_on_the_embedded_model(tmp_path: Path) -> None:
    """The judge stage's plumbing on a real model: one llama.cpp server both writes and reviews."""
    out = tmp_path / "run"
    result = run_cli("generate", "-o", str(out), "-n", "3", "--seed", "1", "--judge", *FAST, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "the judge (SmolLM2" in result.stderr  # the writer judging itself is called out
    tasks = {json.loads(line)["id"] for line in (out / "instructions.jsonl").read_text().splitlines()}
    records = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert {r["task_id"] for r in records} == tasks  # every task had its attempt
    judged = [r for r in records if r["status"] == "judged"]
    for r in records:
        if r["status"] == "judged":
            assert 1 <= r["overall"] <= 5 and set(r["checks"]) == {"valid", "input", "output"}
        else:
            assert "overall" not in r and "checks" not in r and r["error"]
    run = json.loads((out / "run.json").read_text())
    assert run["judge"]["judged"] == len({r["task_id"] for r in judged})
    assert run["judge"]["completion_tokens"] == sum(r["completion_tokens"] for r in records)
    # Nothing left to judge: the standalone command sends nothing and writes nothing.
    again = run_cli("judge", str(out), "-q", timeout=600)
    assert again.returncode == 0, again.stderr
    assert len((out / "judgments.jsonl").read_text().splitlines()) == len(records)
    dest = tmp_path / "judged.json"
    exported = run_cli("export", str(out), "-o", str(dest), "--min-overall", "1")
    assert exported.returncode == 0, exported.stderr
    assert len(json.loads(dest.read_text())) == len({r["task_id"] for r in judged})
    stats = json.loads(run_cli("stats", str(out), "--json").stdout)
    assert stats["judge"]["judges"][0]["judged"] == len({r["task_id"] for r in judged})
