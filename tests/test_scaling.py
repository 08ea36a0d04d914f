"""Several endpoints and adaptive concurrency, judged by what the fake servers themselves saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from fake_openai import FakeOpenAI, Reply, RequestContext
from test_generate import assert_valid_dataset, lines


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_failing_endpoint_is_rested_and_the_healthy_one_carries_the_load(tmp_path: Path, fault: str) -> None:
    bad_reply = Reply.error(503) if fault == "503" else Reply.drop()
    out = tmp_path / "run"
    with FakeOpenAI(seed=1) as healthy, FakeOpenAI(seed=2) as broken:
        broken.set_handler(lambda ctx: bad_reply)
        result = run_cli(
            "generate", "-o", str(out), "-n", "60", "-q", "--seed", "3",
            "--base-url", f"{broken.base_url},{healthy.base_url}",
            "--retry-wait", "0.05", "--retry-wait-max", "0.2", "--tasks-per-prompt", "5",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert_valid_dataset(out, 60, healthy)
        # The broken endpoint was tried, then rested instead of being hammered.
        assert broken.completion_requests()
        assert len(broken.completion_requests()) < len(healthy.completion_requests())
    assert {r["endpoint"] for r in lines(out / "instructions.jsonl")} == {healthy.base_url}
    endpoints = json.loads((out / "run.json").read_text())["endpoints"]
    assert endpoints[broken.base_url]["successes"] == 0
    assert endpoints[broken.base_url]["rests"] >= 1
    assert endpoints[healthy.base_url]["successes"] > 0


def test_every_endpoint_down_fails_with_a_clear_message(tmp_path: Path) -> None:
    with FakeOpenAI() as one, FakeOpenAI() as two:
        for server in (one, two):
            server.set_handler(lambda ctx: Reply.error(503))
        result = run_cli(
            "generate", "-o", str(tmp_path / "run"), "-n", "5", "-q",
            "--base-url", one.base_url, "--base-url", two.base_url,
            "--retry-wait", "0.01", "--retry-wait-max", "0.05", "--give-up-after", "2",
        )  # fmt: skip
    assert result.returncode == 1
    assert "no model server has answered" in result.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_sustained_429_shrinks_in_flight_which_recovers_afterwards(tmp_path: Path) -> None:
    """Phases by arrival number: ramp up, a storm of 429s, then calm again."""
    calm_until, storm_until = 150, 350
    seen: dict[int, int] = {}

    def handler(ctx: RequestContext) -> Reply:
        seen[ctx.number] = ctx.in_flight
        if calm_until <= ctx.number < storm_until:
            return Reply.error(429, headers={"Retry-After": "0"})
        return Reply.default(count=1)

    with FakeOpenAI(latency=0.05, seed=5) as server:
        server.set_handler(handler)
        result = run_cli(
            "generate", "-o", str(tmp_path / "run"), "-n", "300", "-q", "--seed", "4",
            "--base-url", server.base_url, "--concurrency", "auto", "--max-attempts", "50",
            "--retry-wait", "0.01", "--retry-wait-max", "0.05",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    before = max(seen[n] for n in range(100, calm_until))
    storm_tail = max(seen[n] for n in range(storm_until - 50, storm_until))
    after = max(n for k, n in seen.items() if k >= storm_until + 100)
    # The concurrency the server saw grew, collapsed under the 429s, and grew back.
    assert before >= 16, seen
    assert storm_tail <= before / 4, (before, storm_tail)
    # Back to at least half the level that worked before, not crawling up one slot at a time.
    assert after >= before / 2 and after >= 2 * storm_tail, (before, storm_tail, after)


def test_requests_are_held_back_near_the_target(tmp_path: Path) -> None:
    """With 64 slots open, the last rounds must not send 64 requests for a few missing tasks."""
    with FakeOpenAI(latency=0.05, seed=8) as server:
        server.set_handler(lambda ctx: Reply.default(count=10))
        result = run_cli(
            "generate", "-o", str(tmp_path / "run"), "-n", "2000", "-q", "--seed", "5",
            "--base-url", server.base_url, "--concurrency", "64",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        sent = len(server.completion_requests())
    counters = json.loads((tmp_path / "run" / "run.json").read_text())["counters"]
    used = counters["answers"]
    assert used >= 200  # 10 tasks an answer, a few rejected
    # 64 in the first wave are unavoidable; after that only what the target still needs.
    assert sent - used <= 40, (sent, used)
