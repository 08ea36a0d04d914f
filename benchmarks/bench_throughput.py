"""How close `generate` comes to saturating model servers, and what the client costs per request.

Every row runs twice in one invocation: "before" is the code of git HEAD (exported with
`git archive` into a temporary directory), "after" is the working tree. Each measurement runs in
its own child process with that code first on sys.path; each fake server runs in its own process
(tests/fake_openai.py), so they do not share our interpreter.

Rows:
1. saturation, 1 and 3 servers × 32 slots × 0.5 s (12–17 tasks per answer, the default list):
   answered requests/s (servers' own counters, after a warm-up) ÷ ideal (servers × 32 / 0.5).
   Random-word tasks (see row 3), so 3 servers also ask the judge for ~3,300 all-new tasks a
   second; `sat3_text`: the same with instruction-like text.
2. saturation of a continuous-batching server: latency 1 s × (1 + in_service/8), up to 128 in
   service; ÷ its full-batch throughput 128 / (1 + 128/8) = 7.53/s.
3. judged candidates/s against an instant server, 40 tasks per answer, from an empty run
   (start-up included), concurrency auto. This row also measures the judge. `judged`: tasks of
   random words from a few hundred (all accepted; every nearest search is a hard one);
   `judged_text`: instruction-like text (benchmarks/instruction_text.py) from its plainest form,
   where a share of the answers reword earlier tasks, as a run from an empty pool meets.
   `pool52k`/`pool1m`: the same text, once a run of that many tasks resumed (not timed).
4. client CPU per request: EndpointPool.generate, 128 in flight, against an instant server;
   user+system CPU of our process ÷ requests.

Mean and p99: the event loop's stall (a 10 ms timer's delay) for the runs of the pipeline, and
the request latency the client saw (from requests.jsonl).

The machine matters: with 2 cores, the fake servers and this process share them, so rows 3 and 4
are bounded by the fake's own CPU as much as by ours (it answers ~800 requests/s on one core).

Run:  python benchmarks/bench_throughput.py [--seconds 30] [--batch-seconds 150] [--only after] [--before REV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from revisions import native_kernel, package_at

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fake_openai.py"


class FakeProcess:
    """tests/fake_openai.py as its own process."""

    def __init__(
        self, latency: float, capacity: int | None, seed: int, batch_slowdown: float | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        args = [sys.executable, str(FAKE), "--latency", str(latency), "--seed", str(seed), *extra]
        if capacity:
            args += ["--capacity", str(capacity)]
        if batch_slowdown:
            args += ["--batch-slowdown", str(batch_slowdown)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip().rsplit(" ", 1)[-1]

    def stats(self) -> dict[str, Any]:
        root = self.base_url.rsplit("/v1", 1)[0]
        with urllib.request.urlopen(f"{root}/_fake/stats", timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=30)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _loop_lag(stop: asyncio.Event, samples: list[float]) -> None:
    """Delay of a 10 ms timer: how long our own CPU work held the event loop."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append(time.perf_counter() - start - 0.01)


def _latencies(run_dir: Path) -> list[float]:
    out = []
    path = run_dir / "requests.jsonl"
    if path.exists():
        for line in path.open():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record.get("latency"), (int, float)):
                out.append(float(record["latency"]))
    return out


def _limits(summary: Any) -> dict[str, tuple[Any, Any, Any]]:
    """Each endpoint's concurrency limit, its peak and how often it was cut."""
    return {u: (e.get("concurrency_limit"), e.get("concurrency_peak"), e.get("concurrency_cuts")) for u, e in summary.endpoints.items()}


def _run_config(out: Path, urls: tuple[str, ...], **kwargs: Any) -> Any:
    from selfinstruct.config import RunConfig

    return RunConfig(output_dir=out, base_urls=urls, num_instructions=10_000_000, progress=False, seed=1, **kwargs)


# -- the rows (each runs in a child process: see main) -----------------------------------------


def saturation(servers: list[FakeProcess], ideal: float, seconds: float, warmup: float, **config: Any) -> dict[str, Any]:
    from selfinstruct import run_generation

    async def timed(cfg: Any) -> dict[str, Any]:
        stop = asyncio.Event()
        lags: list[float] = []
        lag_task = asyncio.create_task(_loop_lag(stop, lags))
        run = asyncio.create_task(run_generation(cfg, stop=stop))
        await asyncio.sleep(warmup)
        before = [s.stats() for s in servers]
        t0 = time.perf_counter()
        await asyncio.sleep(seconds - warmup)
        after = [s.stats() for s in servers]
        elapsed = time.perf_counter() - t0
        stop.set()
        summary = await run
        await lag_task
        answered = sum(a["answered"] - b["answered"] for a, b in zip(after, before))
        emitted = sum(a["emitted"] - b["emitted"] for a, b in zip(after, before))
        return {
            "answered_per_s": answered / elapsed,
            "tasks_per_answer": emitted / max(1, answered),
            "max_serving": max(a["max_serving"] for a in after),
            "loop_lag_mean_ms": 1000 * sum(lags) / max(1, len(lags)),
            "loop_lag_p99_ms": 1000 * _percentile(lags, 0.99),
            "limits": _limits(summary),
        }

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        result = asyncio.run(timed(_run_config(out, tuple(s.base_url for s in servers), concurrency=None, **config)))
        latencies = _latencies(out)
    result["latency_mean_s"] = sum(latencies) / max(1, len(latencies))
    result["latency_p99_s"] = _percentile(latencies, 0.99)
    result["ideal_per_s"] = ideal
    result["ratio"] = result["answered_per_s"] / ideal
    return result


def row_saturation(args: argparse.Namespace) -> dict[str, Any]:
    text = ("--instruction-text", "0") if args.text else ()  # see row_judged
    servers = [FakeProcess(0.5, 32, seed=100 + i, extra=text) for i in range(args.servers)]
    try:
        return saturation(servers, args.servers * 32 / 0.5, args.seconds, min(8.0, args.seconds / 3))
    finally:
        for s in servers:
            s.stop()


def row_batching(args: argparse.Namespace) -> dict[str, Any]:
    server = FakeProcess(1.0, 128, seed=7, batch_slowdown=8)
    try:
        full_batch = 128 / (1.0 * (1 + 128 / 8))
        # Half the run to find the level (round trips of up to 17 s), the rest measured.
        return saturation([server], full_batch, args.batch_seconds, args.batch_seconds / 2)
    finally:
        server.stop()


def row_judged(args: argparse.Namespace) -> dict[str, Any]:
    from selfinstruct import run_generation

    # Random words (every task new: the costliest nearest searches) or, with --text, instructions
    # as a model writes them (shared openings, Zipf topics, rewordings), from their plainest form.
    text = ("--instruction-text", "0") if args.text else ()
    server = FakeProcess(0.0, None, seed=9, extra=(*text, "--max-tasks", "40"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            cfg = _run_config(out, (server.base_url,), concurrency=None, tasks_per_prompt=40)

            counter = _DecisionCounter(out)

            async def go() -> Any:
                stop = asyncio.Event()
                lags: list[float] = []
                lag_task = asyncio.create_task(_loop_lag(stop, lags))
                run = asyncio.create_task(run_generation(cfg, stop=stop))
                warmup = min(5.0, args.seconds / 3)  # for the CPU reading only: start-up counts in the rate
                await asyncio.sleep(warmup)
                c0, cpu0 = counter.poll(), _tree_cpu()
                await asyncio.sleep(args.seconds - warmup)
                c1, cpu1 = counter.poll(), _tree_cpu()
                stop.set()
                summary = await run
                await lag_task
                return summary, lags, _cpu_per_candidate(cpu0, cpu1, c1 - c0)

            start = time.perf_counter()
            summary, lags, cpu_ms = asyncio.run(go())
            elapsed = time.perf_counter() - start
            latencies = _latencies(out)
        stats = server.stats()
    finally:
        server.stop()
    candidates = summary.session_candidates
    return {
        "candidates_per_s": candidates / elapsed,
        "candidates": candidates,
        "accepted": summary.accepted,
        "accept_share": summary.added / max(1, candidates),
        "tasks_per_answer": stats["emitted"] / max(1, stats["answered"]),
        "loop_lag_mean_ms": 1000 * sum(lags) / max(1, len(lags)),
        "loop_lag_p99_ms": 1000 * _percentile(lags, 0.99),
        "latency_mean_s": sum(latencies) / max(1, len(latencies)),
        "latency_p99_s": _percentile(latencies, 0.99),
        "limits": _limits(summary),
        "cpu_ms_per_candidate": cpu_ms,
    }


def _tree_cpu() -> float | None:
    """CPU seconds (user + system) of this process and every live descendant (the judging
    processes, the fake server), from /proc; None where there is no /proc."""
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()  # after the command name, which may hold spaces
        except OSError:
            continue  # ended meanwhile
        parent[int(entry)], ticks[int(entry)] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(ticks[pid] for pid in tree if pid in ticks) / os.sysconf("SC_CLK_TCK")


def _cpu_per_candidate(cpu0: float | None, cpu1: float | None, candidates: int) -> float | None:
    """ms of CPU, all processes of the run together, per candidate decided in the window."""
    if cpu0 is None or cpu1 is None or candidates <= 0:
        return None
    return 1000 * (cpu1 - cpu0) / candidates


class _DecisionCounter:
    """Candidates decided so far: lines appended to instructions.jsonl and rejected.jsonl."""

    def __init__(self, run_dir: Path) -> None:
        self.files = [run_dir / "instructions.jsonl", run_dir / "rejected.jsonl"]
        self.offsets = [p.stat().st_size if p.exists() else 0 for p in self.files]
        self.count = 0

    def poll(self) -> int:
        for i, path in enumerate(self.files):
            if not path.exists():
                continue
            with path.open("rb") as fh:
                fh.seek(self.offsets[i])
                data = fh.read()
            cut = data.rfind(b"\n") + 1
            self.count += data[:cut].count(b"\n")
            self.offsets[i] += cut
        return self.count


def _write_run(directory: Path, instructions: list[str]) -> None:
    from selfinstruct.records import AcceptedTask
    from selfinstruct.store import RunStore

    with RunStore(directory) as store:
        for start in range(0, len(instructions), 10_000):
            store.commit(None, [
                AcceptedTask(id=f"task-{n:06d}", instruction=text, input="", output=f"Answer {n}.", request=n // 20)
                for n, text in enumerate(instructions[start : start + 10_000], start)
            ])  # fmt: skip


def row_judged_pool(args: argparse.Namespace) -> dict[str, Any]:
    """Candidates judged per second once a run of ``args.pool`` real-looking instructions resumed."""
    from instruction_text import filtered_pool

    from selfinstruct import run_generation

    pool, detail = filtered_pool(args.pool)
    server = FakeProcess(0.0, None, seed=9, extra=("--instruction-text", str(detail), "--max-tasks", "40"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            _write_run(out, pool)
            del pool
            cfg = _run_config(out, (server.base_url,), concurrency=None, tasks_per_prompt=40)
            counter = _DecisionCounter(out)

            async def go() -> Any:
                stop = asyncio.Event()
                lags: list[float] = []
                run = asyncio.create_task(run_generation(cfg, stop=stop))
                while counter.poll() == 0 and not run.done():  # resuming: not measured here
                    await asyncio.sleep(0.2)
                await asyncio.sleep(3.0)  # warm-up
                lag_task = asyncio.create_task(_loop_lag(stop, lags))
                c0, t0, cpu0 = counter.poll(), time.perf_counter(), _tree_cpu()
                await asyncio.sleep(args.seconds)
                c1, t1, cpu1 = counter.poll(), time.perf_counter(), _tree_cpu()
                stop.set()
                summary = await run
                await lag_task
                return (c1 - c0) / (t1 - t0), summary, lags, _cpu_per_candidate(cpu0, cpu1, c1 - c0)

            rate, summary, lags, cpu_ms = asyncio.run(go())
        stats = server.stats()
    finally:
        server.stop()
    return {
        "candidates_per_s": rate,
        "candidates": summary.session_candidates,
        "accepted": summary.accepted,
        "accept_share": summary.added / max(1, summary.session_candidates),
        "tasks_per_answer": stats["emitted"] / max(1, stats["answered"]),
        "loop_lag_mean_ms": 1000 * sum(lags) / max(1, len(lags)),
        "loop_lag_p99_ms": 1000 * _percentile(lags, 0.99),
        "limits": _limits(summary),
        "cpu_ms_per_candidate": cpu_ms,
    }


def row_cpu(args: argparse.Namespace) -> dict[str, Any]:
    from selfinstruct.llm import EndpointPool, GenerationRequest

    request = GenerationRequest(
        "chat", [{"role": "user", "content": "Come up with a list of 15 diverse task instructions. " * 30}], 2048
    )
    in_flight, total = 128, 128 * 40
    server = FakeProcess(0.0, None, seed=11)

    async def go() -> dict[str, Any]:
        pool = EndpointPool([server.base_url], api_key="sk-bench", model="fake-model", concurrency=in_flight)

        async def worker(n: int, latencies: list[float]) -> None:
            for _ in range(n):
                t = time.perf_counter()
                await pool.generate(request)
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(worker(5, []) for _ in range(in_flight)))  # connections open, caches warm
        latencies: list[float] = []
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await asyncio.gather(*(worker(total // in_flight, latencies) for _ in range(in_flight)))
        r1, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
        await pool.aclose()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return {
            "cpu_ms_per_request": 1000 * cpu / total,
            "requests_per_s": total / elapsed,
            "latency_mean_ms": 1000 * sum(latencies) / len(latencies),
            "latency_p99_ms": 1000 * _percentile(latencies, 0.99),
        }

    try:
        return asyncio.run(go())
    finally:
        server.stop()


ROWS = {"saturation": row_saturation, "batching": row_batching, "judged": row_judged, "judged_pool": row_judged_pool,
        "cpu": row_cpu}


# -- driver ------------------------------------------------------------------------------------


def _child(code: Path, row: str, extra: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))
    # In the code's own directory: `python -m` (the judging process) imports from its working
    # directory first, so anywhere else (the repository) the before column would run after's code.
    proc = subprocess.run(
        [sys.executable, __file__, "--row", row, *extra], env=env, capture_output=True, text=True, timeout=3600,
        cwd=code,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "native_kernel": native_kernel(code)}


def _fmt(r: dict[str, Any], key: str, spec: str) -> str:
    value = r.get(key)
    return "error" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the saturation and judged runs")
    parser.add_argument("--batch-seconds", type=float, default=150.0, help="length of the continuous-batching run")
    parser.add_argument("--only", choices=["before", "after"], default=None)
    parser.add_argument("--before", default="HEAD", metavar="REV", help="git revision for the before column (default HEAD)")
    parser.add_argument("--rows", default="sat1,sat3,sat3_text,batching,judged,judged_text,pool52k,pool1m,cpu")
    parser.add_argument("--row", choices=sorted(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--servers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=int, default=52_000, help=argparse.SUPPRESS)
    parser.add_argument("--text", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:  # a child: one measurement with whatever selfinstruct is first on sys.path
        import selfinstruct

        result = ROWS[args.row](args)
        result["code"] = str(Path(selfinstruct.__file__).parent)
        print(json.dumps(result))
        return

    timing = ["--seconds", str(args.seconds), "--batch-seconds", str(args.batch_seconds)]
    plans = {
        "sat1": ("saturation", ["--servers", "1"]),
        "sat3": ("saturation", ["--servers", "3"]),
        "sat3_text": ("saturation", ["--servers", "3", "--text"]),
        "batching": ("batching", []),
        "judged": ("judged", []),
        "judged_text": ("judged", ["--text"]),
        "pool52k": ("judged_pool", ["--pool", "52000"]),
        "pool1m": ("judged_pool", ["--pool", "1000000"]),
        "cpu": ("cpu", []),
    }
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"before": package_at(args.before, Path(tmp)), "after": REPO}
        columns = [args.only] if args.only else ["before", "after"]
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for name in args.rows.split(","):
            row, extra = plans[name]
            for column in columns:
                results.setdefault(name, {})[column] = r = _child(codes[column], row, extra + timing)
                print(f"{name:>8} {column:>6}: {json.dumps(r)}", file=sys.stderr, flush=True)

    print(f"\n{os.cpu_count()} cores; fake servers in their own processes on the same cores.")
    print(f"{'row':<44} {'column':>6} {'value':>10} {'goal':>8}  details")
    goals = {"sat1": "≥ 0.90", "sat3": "≥ 0.90", "sat3_text": "≥ 0.90", "batching": "≥ 0.90", "judged": "≥ 5000", "judged_text": "≥ 5000", "pool52k": "≥ 5000",
             "pool1m": "≥ 1500", "cpu": "≤ 0.5"}
    titles = {
        "sat1": "saturation, 1 server × 32 slots × 0.5 s",
        "sat3": "saturation, 3 servers × 32 slots × 0.5 s",
        "sat3_text": "same, instruction text",
        "batching": "saturation, continuous batching (of 7.53/s)",
        "judged": "judged candidates/s, instant server, 40/ans",
        "judged_text": "same, instruction text from empty",
        "pool52k": "judged/s, instruction text, 52k pool",
        "pool1m": "judged/s, instruction text, 1M pool",
        "cpu": "client CPU per request, ms (128 in flight)",
    }
    for name, by_column in results.items():
        for column, r in by_column.items():
            if "error" in r:
                print(f"{titles[name]:<44} {column:>6} {'error':>10} {goals[name]:>8}  {r['error']}")
                continue
            if name == "cpu":
                value = _fmt(r, "cpu_ms_per_request", ".3f")
                details = f"{r['requests_per_s']:.0f} req/s; latency mean {r['latency_mean_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms"
            elif name.startswith("judged"):
                value = _fmt(r, "candidates_per_s", ".0f")
                details = (
                    f"{r['tasks_per_answer']:.1f} tasks/answer, {r['accept_share']:.0%} accepted; "
                    f"{_fmt(r, 'cpu_ms_per_candidate', '.3f')} ms CPU/candidate, all processes; limit/peak/cuts {list(r['limits'].values())}; "
                    f"loop stall mean {r['loop_lag_mean_ms']:.1f} p99 {r['loop_lag_p99_ms']:.1f} ms; "
                    f"latency mean {1000 * r['latency_mean_s']:.1f} p99 {1000 * r['latency_p99_s']:.1f} ms"
                )
            elif name.startswith("pool"):
                value = _fmt(r, "candidates_per_s", ".0f")
                details = (
                    f"{r['tasks_per_answer']:.1f} tasks/answer, {r['accept_share']:.0%} accepted; "
                    f"{_fmt(r, 'cpu_ms_per_candidate', '.3f')} ms CPU/candidate, all processes; "
                    f"limit/peak/cuts {list(r['limits'].values())}; "
                    f"loop stall mean {r['loop_lag_mean_ms']:.1f} p99 {r['loop_lag_p99_ms']:.1f} ms"
                )
            else:
                value = _fmt(r, "ratio", ".3f")
                details = (
                    f"{r['answered_per_s']:.1f}/{r['ideal_per_s']:.1f} req/s, {r['tasks_per_answer']:.1f} tasks/answer; "
                    f"limit/peak/cuts {list(r['limits'].values())}; loop stall mean {r['loop_lag_mean_ms']:.1f} "
                    f"p99 {r['loop_lag_p99_ms']:.1f} ms; latency mean {r['latency_mean_s']:.2f} p99 {r['latency_p99_s']:.2f} s"
                )
            print(f"{titles[name]:<44} {column:>6} {value:>10} {goals[name]:>8}  {details}")


if __name__ == "__main__":
    main()
