"""Shared fixtures: isolation from the developer's environment, a fake OpenAI server, CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from rouge_score import rouge_scorer

from fake_openai import FakeOpenAI
from selfinstruct.filters import check_candidate
from selfinstruct.records import Candidate
from selfinstruct.seeds import load_seed_tasks

if TYPE_CHECKING:
    from selfinstruct.store import RunStore

REPO = Path(__file__).resolve().parents[1]

# Tiers, for `pytest -m unit` and friends: unit tests are pure logic and crafted files;
# integration tests run the real CLI or client against a loopback server; soak and e2e are the
# long ones (e2e needs the real embedded llama.cpp server).
INTEGRATION = {
    "test_generate", "test_resilience", "test_hostile_cli", "test_self_instruct", "test_scaling",
    "test_pool_hostile", "test_fake_openai", "test_report_browser",
    "test_judge_stage", "test_exactness", "test_judge_worker",
}  # fmt: skip
SLOW = {"test_soak": "soak", "test_e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__ if item.module is not None else ""
        tier = SLOW.get(module) or ("integration" if module in INTEGRATION else "unit")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let a developer's real server or key leak into a test."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "SELFINSTRUCT_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run the real console entry point in a child process (as a user would)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SELFINSTRUCT_"))}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "selfinstruct", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def add_tasks(
    store: RunStore,
    tasks: list[tuple[str, str, str]],
    *,
    rejected: list[tuple[str, str]] = (),  # type: ignore[assignment]
    **fields: object,
) -> None:
    """Commit ``(instruction, input, output)`` tasks (and ``(reason, instruction)`` rejections) as one request."""
    from selfinstruct.records import AcceptedTask, Rejection, RequestRecord

    number = store.new_request_number()
    accepted = [
        AcceptedTask(id=store.new_task_id(), instruction=i, input=x, output=o, request=number, **fields)  # type: ignore[arg-type]
        for i, x, o in tasks
    ]
    rejections = [Rejection(reason=r, detail="", instruction=i, input="", output="", request=number) for r, i in rejected]
    store.commit(RequestRecord(request=number, outcome="answered", candidates=len(tasks)), accepted, rejections)


# -- helpers shared by the CLI tests ----------------------------------------------------------

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
SEEDS = [t.instruction for t in load_seed_tasks()]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_valid_dataset(out: Path, target: int, server: FakeOpenAI, threshold: float = 0.7) -> list[dict]:
    """The properties every finished run must have, checked with the reference scorer."""
    records = lines(out / "instructions.jsonl")
    assert len(records) == target
    instructions = [r["instruction"] for r in records]
    assert len(set(instructions)) == target
    emitted = set(server.emitted)
    for record in records:
        assert (record["instruction"], record["input"], record["output"]) in emitted
        assert check_candidate(Candidate(record["instruction"], record["input"], record["output"])) is None
    for i, text in enumerate(instructions):
        for other in SEEDS + instructions[:i]:
            assert SCORER.score(other, text)["rougeL"].fmeasure <= threshold, (text, other)
    return records


def generate_args(out: Path, server: FakeOpenAI, n: int, *extra: str) -> list[str]:
    return ["generate", "-o", str(out), "-n", str(n), "--base-url", server.base_url, "--seed", "7", "-q", *extra]


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen, deadline: float = 120.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            return
        time.sleep(0.005)
    raise AssertionError(f"{path} did not reach {count} lines")


_SPAWNED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def kill_leftover_processes() -> Iterator[None]:
    """A test that fails (or times out) half-way must not leave its `selfinstruct` running."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def spawn(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfinstruct", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _SPAWNED.append(proc)
    return proc


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("selfinstruct: error:")]
    assert len(errors) == 1, stderr
    return errors[0]
