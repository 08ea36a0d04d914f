"""Shared fixtures: isolation from the developer's environment, a fake OpenAI server, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from selfinstruct.records import AcceptedTask, Rejection, RequestRecord
from selfinstruct.store import RunStore

REPO = Path(__file__).resolve().parents[1]


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
    number = store.new_request_number()
    accepted = [
        AcceptedTask(id=store.new_task_id(), instruction=i, input=x, output=o, request=number, **fields)  # type: ignore[arg-type]
        for i, x, o in tasks
    ]
    rejections = [Rejection(reason=r, detail="", instruction=i, input="", output="", request=number) for r, i in rejected]
    store.commit(RequestRecord(request=number, outcome="answered", candidates=len(tasks)), accepted, rejections)
