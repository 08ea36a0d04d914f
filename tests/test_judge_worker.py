"""Judging in a process of its own: same data as on the event loop, and no orphan or silent loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_valid_dataset, generate_args, lines, one_error_line, run_cli, spawn, wait_for_lines
from fake_openai import FakeOpenAI


def worker_pids(parent: int) -> list[int]:
    """Our judging process: a child of ``parent`` running selfinstruct.judge_worker."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"selfinstruct.judge_worker" in cmdline:
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_worker_gives_the_same_dataset_as_the_event_loop(tmp_path: Path) -> None:
    datasets = []
    for mode in ("yes", "no"):
        out = tmp_path / mode
        with FakeOpenAI(seed=3) as server:
            result = run_cli(*generate_args(out, server, 60, "--concurrency", "1", "--filter-process", mode))
            assert result.returncode == 0, result.stderr
            assert_valid_dataset(out, 60, server)
        datasets.append([(r["id"], r["instruction"], r["rouge_l"], r.get("nearest_id")) for r in lines(out / "instructions.jsonl")])
        datasets.append([(r["reason"], r["instruction"]) for r in lines(out / "rejected.jsonl")])
    assert datasets[0] == datasets[2] and datasets[1] == datasets[3]


def start_with_worker(out: Path, server: FakeOpenAI) -> tuple[subprocess.Popen, int, int]:
    """A run under way (20 tasks in), the pid of its deciding process and of the fork filling in nearests."""
    proc = spawn(generate_args(out, server, 400, "--concurrency", "2", "--filter-process", "yes"))
    wait_for_lines(out / "instructions.jsonl", 20, proc)
    pids = worker_pids(proc.pid)
    assert len(pids) == 1, pids
    forks = worker_pids(pids[0])
    assert len(forks) == 1, forks
    return proc, pids[0], forks[0]


@pytest.mark.parametrize("which", ["decider", "nearest"])
def test_a_dead_worker_is_one_clear_error_and_the_run_resumes(tmp_path: Path, which: str) -> None:
    out = tmp_path / "run"
    with FakeOpenAI(latency=0.02) as server:
        proc, decider, nearest = start_with_worker(out, server)
        os.kill(decider if which == "decider" else nearest, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 1, stderr
        assert "the judging process ended unexpectedly" in one_error_line(stderr)
        assert json.loads((out / "run.json").read_text())["status"] == "failed"
        result = run_cli(*generate_args(out, server, 400, "--concurrency", "2", "--filter-process", "yes"))
        assert result.returncode == 0, result.stderr
        assert_valid_dataset(out, 400, server)


def test_killing_the_run_leaves_no_judging_process_behind(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI(latency=0.02) as server:
        proc, decider, nearest = start_with_worker(out, server)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while (alive(decider) or alive(nearest)) and time.monotonic() < deadline:  # each sees its pipe close
            time.sleep(0.05)
        assert not alive(decider) and not alive(nearest)
        result = run_cli(*generate_args(out, server, 400, "--concurrency", "2", "--filter-process", "yes"))
        assert result.returncode == 0, result.stderr
        assert_valid_dataset(out, 400, server)


def _pool_checks(tmp_path: Path, *, torn_last_line: bool) -> None:
    import asyncio

    from fake_openai import format_tasks
    from selfinstruct.filters import FilterConfig
    from selfinstruct.judge import Accept, Judge, Reject
    from selfinstruct.judge_worker import JudgeWorker
    from selfinstruct.records import AcceptedTask
    from selfinstruct.seeds import load_seed_tasks

    tasks = [
        AcceptedTask(id=f"task-{n:06d}", instruction=f"Describe the history of lighthouse number {n} on the northern coast",
                     input="", output="A story.", request=n)  # fmt: skip
        for n in range(30)
    ]
    path = tmp_path / "instructions.jsonl"
    data = "".join(json.dumps(t.to_json()) + "\n" for t in tasks)
    path.write_text(data[:-1] if torn_last_line else data)  # the store keeps a complete last record

    async def go() -> list:
        worker = JudgeWorker()
        worker.launch(filters=FilterConfig(), threshold=0.7, tokenizer="rouge", seeds=load_seed_tasks(), accepted_file=str(path))
        try:
            await worker.start(tasks, next_task_number=30, room=5)
            answer = format_tasks([
                (tasks[-1].instruction, "", "A copy of the last task."),
                ("Plan a week of vegetarian dinners for a family of four on a small budget", "", "Monday: lentils."),
            ])  # fmt: skip
            verdict = await worker.judge(answer, finish_reason="stop", continuation_number=None)
            return verdict.decisions
        finally:
            await worker.close()

    copy, fresh = asyncio.run(go())
    assert isinstance(copy, Reject) and copy.reason == "near_duplicate" and copy.nearest_id == tasks[-1].id
    assert isinstance(fresh, Accept) and fresh.id == "task-000030"
    # Its nearest, filled in by the fork, is the one a judge in this process finds.
    here = Judge(filters=FilterConfig(), threshold=0.7, tokenizer="rouge", seeds=load_seed_tasks(), accepted=tasks,
                 next_task_number=30)  # fmt: skip
    expected = here.decide(fresh.candidate)
    assert isinstance(expected, Accept) and expected.nearest_id is not None
    assert (fresh.rouge_l, fresh.nearest, fresh.nearest_id) == (expected.rouge_l, expected.nearest, expected.nearest_id)


def test_the_worker_reads_the_pool_itself_and_numbers_on(tmp_path: Path) -> None:
    _pool_checks(tmp_path, torn_last_line=False)


def test_a_pool_that_differs_from_the_store_is_sent_whole(tmp_path: Path) -> None:
    # The child skips a last line without its newline; the store keeps it: the counts differ,
    # and the worker is given the store's pool instead, so the last task still counts.
    _pool_checks(tmp_path, torn_last_line=True)


def test_the_worker_runs_this_package_not_one_in_the_working_directory(tmp_path: Path) -> None:
    # `python -m` imports from its working directory first: a `selfinstruct` folder there (another
    # checkout) must not become the judging process's code. The run's directory is relative, too.
    script = Path(sys.executable).parent / "selfinstruct"
    if not script.exists():
        pytest.skip("the console script is not installed")
    decoy = tmp_path / "selfinstruct"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy package in the working directory was imported')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SELFINSTRUCT_", "PYTHONPATH"))}
    with FakeOpenAI(seed=3) as server:
        result = subprocess.run(
            [str(script), "generate", "-o", "run", "-n", "30", "--base-url", server.base_url, "--seed", "7", "-q",
             "--filter-process", "yes"],
            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert_valid_dataset(tmp_path / "run", 30, server)


def test_the_worker_holds_the_pool_texts_compactly_and_gives_them_back_exactly() -> None:
    from selfinstruct.judge_worker import _Strings

    texts = ["Name a bird.", "", "Décris un oiseau \ud83d.", "鳥を説明してください", "task-000001"]
    strings = _Strings()
    for text in texts:
        strings.append(text)
    assert len(strings) == len(texts) and list(strings) == texts and list(strings) == texts  # twice: a pool build reads them twice
    assert [strings[i] for i in range(-len(texts), len(texts))] == texts + texts
    assert strings[1:3] == texts[1:3]
    with pytest.raises(IndexError):
        strings[len(texts)]
    assert list(_Strings()) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the nearest-filling fork exists where fork does")
def test_the_decider_sees_how_many_verdicts_the_fork_has_yet_to_pass_on() -> None:
    from selfinstruct.judge_worker import _Backlog

    backlog = _Backlog()
    backlog.sent = 5
    pid = os.fork()
    if pid == 0:  # the fork's side: passes three on
        for _ in range(3):
            backlog.passed_on()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert backlog.waiting() == 2
