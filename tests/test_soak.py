"""Soak: many random SIGKILLs, a disk that fills, torn bytes between sessions, a faulty server.

Whatever happens in between, the run ends with exactly the target, unique task ids, unique
request numbers, every task's request on record, and counters equal to what the files hold.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO, generate_args, run_cli
from fake_openai import FakeOpenAI, Reply

TARGET = 400
FILES = ("instructions.jsonl", "rejected.jsonl", "requests.jsonl")


def _complete_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    return [json.loads(line) for line in raw[: raw.rfind(b"\n") + 1].splitlines() if line.strip()]


def _fill_disk_at(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _faults(ctx: object) -> Reply | None:
    number = getattr(ctx, "number", 0) or 0
    kind = random.Random(number).random()
    if kind < 0.05:
        return Reply.error(500)
    if kind < 0.08:
        return Reply.drop()
    if kind < 0.10:
        return Reply.text("Sorry, I cannot produce tasks right now.")
    return None  # the default answer: fresh tasks


def test_soak_kills_full_disk_and_torn_bytes(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    with FakeOpenAI(latency=0.002) as server:
        server.set_handler(_faults)
        args = generate_args(out, server, TARGET, "--concurrency", "4", "--tasks-per-prompt", "8", "--retry-wait", "0.01")
        outcomes = []
        for session in range(12):
            accepted = len(_complete_lines(out / "instructions.jsonl"))
            if accepted >= TARGET - 20:
                break
            if session == 5:
                # The disk fills: a few more lines fit, then every write fails.
                limit = (out / "instructions.jsonl").stat().st_size + 3000
                proc = subprocess.run(
                    [sys.executable, "-m", "selfinstruct", *args], cwd=REPO, env=env, capture_output=True, text=True,
                    timeout=120, preexec_fn=lambda: _fill_disk_at(limit),
                )  # fmt: skip
                assert proc.returncode == 1 and "free disk space" in proc.stderr, proc.stderr
                outcomes.append("disk full")
                continue
            proc = subprocess.Popen(
                [sys.executable, "-m", "selfinstruct", *args], cwd=REPO, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            seen = len(server.completion_requests())
            try:
                server.wait_until(lambda s: len(s.completion_requests()) >= seen + rng.randint(2, 12) or proc.poll() is not None, timeout=60)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)
            outcomes.append("killed")
            # Torn bytes, as a power cut leaves them, in one of the files.
            if rng.random() < 0.6:
                name = rng.choice(FILES)
                with (out / name).open("ab") as fh:
                    fh.write(rng.choice([b'{"schema":2,"id":"task-', b"\x00" * rng.randint(1, 4096), b'{"reason":"too_']))
        assert outcomes.count("killed") >= 5 and "disk full" in outcomes
        final = run_cli(*args, timeout=300)
        assert final.returncode == 0, final.stderr

    tasks = _complete_lines(out / "instructions.jsonl")
    rejected = _complete_lines(out / "rejected.jsonl")
    requests = [r for r in _complete_lines(out / "requests.jsonl") if r["outcome"] != "carried_over"]
    assert len(tasks) == TARGET
    assert len({t["id"] for t in tasks}) == TARGET
    assert len({t["instruction"] for t in tasks}) == TARGET
    numbers = [r["request"] for r in requests]
    assert len(numbers) == len(set(numbers)), "a request number was used twice"
    assert {t["request"] for t in tasks} <= set(numbers)
    assert {r["request"] for r in rejected} <= set(numbers)
    run = json.loads((out / "run.json").read_text())
    counters = run["counters"]
    assert run["status"] == "done"
    assert counters["accepted"] == TARGET
    assert counters["rejected_total"] == len(rejected)
    assert counters["requests"] == len(requests)
    assert counters["failed_requests"] == sum(r["outcome"] == "failed" for r in requests)
    assert counters["completion_tokens"] == sum(r.get("completion_tokens", 0) for r in requests)
    stats = json.loads(run_cli("stats", str(out), "--json").stdout)
    assert stats["accepted"] == TARGET and stats["rejected"] == len(rejected)
