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
