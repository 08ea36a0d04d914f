"""Resuming a big run: seconds from `selfinstruct generate` to its first new request, and memory.

A run directory of N accepted tasks (instruction-like text from `instruction_text.py`) is written
once; each measurement gets a fresh copy, starts the real CLI against a loopback fake server, and
records the time until the server sees the first completion request, and the peak resident memory
of the whole process tree (the CLI and, when used, its judging processes) until then and for 3 s
more, sampled every 20-50 ms, as the sum of RSS and the sum of PSS (shared pages counted once).
Then the run is stopped with SIGTERM.

Columns: "before" is the code of a git revision (default: the one before judging moved to its
own process), "after" the working tree, "in-process" the working tree with
`--filter-process no`. All in one invocation on one machine.

Run:  python benchmarks/bench_resume.py [--sizes 200k,1M] [--before REV]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

from fake_openai import FakeOpenAI, Reply  # noqa: E402
from instruction_text import InstructionSource  # noqa: E402
from revisions import package_at  # noqa: E402

from selfinstruct.records import AcceptedTask  # noqa: E402
from selfinstruct.store import RunStore  # noqa: E402


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if factor > 1 else text) * factor)


def write_run(directory: Path, size: int) -> None:
    source = InstructionSource(seed=5)
    with RunStore(directory) as store:
        batch: list[AcceptedTask] = []
        for n in range(size):
            text = source.fresh()
            batch.append(AcceptedTask(id=f"task-{n:06d}", instruction=text, input="", output=f"Answer {n}.", request=n // 20))
            if len(batch) == 10_000:
                store.commit(None, batch)
                batch = []
        if batch:
            store.commit(None, batch)


def tree_memory_mb(root: int) -> tuple[float, float]:
    """Resident memory of ``root`` and its descendants: the sum of their RSS, and of their PSS.

    A forked process shares its parent's pages until either writes them; RSS counts a shared page
    in each process, PSS divides it among them, so the PSS sum is what the tree really holds."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(proc.name))
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            rollup = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def measure(template: Path, size: int, code: Path, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(template, run)
        first = threading.Event()

        def handler(ctx: object) -> Reply:
            first.set()
            return Reply.default(count=10)

        with FakeOpenAI() as server:
            server.set_handler(handler)
            env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
            env["PYTHONPATH"] = str(code)
            args = [sys.executable, "-m", "selfinstruct", "generate", "-o", str(run), "-n", str(size + 1000),
                    "--base-url", server.base_url, "--seed", "1", "-q", "--concurrency", "1", *extra]  # fmt: skip
            start = time.monotonic()
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp)
            peak_rss = peak_pss = 0.0

            def sample() -> None:
                nonlocal peak_rss, peak_pss
                rss, pss = tree_memory_mb(proc.pid)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)

            while not first.is_set() and proc.poll() is None:
                sample()
                first.wait(0.02)
            seconds = time.monotonic() - start
            settle = time.monotonic() + 3.0  # the judging process forks after its pool is built
            while time.monotonic() < settle and proc.poll() is None:
                sample()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=120)
            if not first.is_set():
                raise RuntimeError(f"no request was sent: {stderr.decode()[-500:]}")
    return {"seconds": seconds, "rss_mb": peak_rss, "pss_mb": peak_pss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200k", help="comma list of run sizes, e.g. 200k,1M")
    parser.add_argument("--before", default="05182f6^", help="git revision for the before column")
    parser.add_argument("--columns", default="before,after,in-process",
                        help="which columns to run (comma list of before, after, in-process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = package_at(args.before, Path(tmp) / "before")
        columns = [("before", before, []), ("after", REPO, []), ("in-process", REPO, ["--filter-process", "no"])]
        print(f"{'tasks':>9}  {'column':<20} {'to first request':>17} {'peak RSS (tree)':>16} {'peak PSS (tree)':>16}")
        for size in (parse_size(s) for s in args.sizes.split(",")):
            template = Path(tmp) / f"run-{size}"
            started = time.monotonic()
            write_run(template, size)
            print(f"# wrote {size:,} tasks in {time.monotonic() - started:.0f} s", file=sys.stderr)
            for name, code, extra in columns:
                if name not in args.columns.split(","):
                    continue
                if name == "in-process" and size > 200_000:
                    continue  # the same index in one process: the before column shows its cost
                result = measure(template, size, code, extra)
                print(f"{size:>9,}  {name:<20} {result['seconds']:>15.1f} s {result['rss_mb']:>13.0f} MB"
                      f" {result['pss_mb']:>13.0f} MB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
