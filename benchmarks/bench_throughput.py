"""How close `generate` comes to saturating model servers, and what the pipeline itself costs.

1. Saturation: loopback fake servers (separate processes) with a fixed latency and capacity (requests
   beyond it queue). `generate` runs against 1 and against 3 of them with adaptive concurrency;
   we report answered requests/s ÷ ideal (capacity × endpoints ÷ latency), measured on the
   servers' own counters over the steady part of the run, and the event loop's worst stall.
2. Pipeline overhead: an instant server (no latency) and a run directory preloaded with 52k
   accepted instructions; candidates judged per second on this machine.

Run:  python benchmarks/bench_throughput.py [--seconds 30] [--pool 52000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selfinstruct.pipeline import RunConfig, run_generation
from selfinstruct.store import RunStore

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "english_sentences.jsonl"


class FakeProcess:
    """tests/fake_openai.py as its own process, so it does not share our interpreter."""

    def __init__(self, latency: float, capacity: int | None, seed: int) -> None:
        args = [sys.executable, str(REPO / "tests" / "fake_openai.py"), "--latency", str(latency), "--seed", str(seed)]
        if capacity:
            args += ["--capacity", str(capacity)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.base_url = line.strip().rsplit(" ", 1)[-1]

    def stats(self) -> dict:
        root = self.base_url.rsplit("/v1", 1)[0]
        with urllib.request.urlopen(f"{root}/_fake/stats", timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=10)


async def _loop_lag(stop: asyncio.Event, samples: list[float]) -> None:
    """Worst delay of a 10 ms timer: how long our own CPU work held the event loop."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append(time.perf_counter() - start - 0.01)


async def _timed_run(config: RunConfig, seconds: float, servers: list[FakeProcess], warmup: float) -> dict:
    stop = asyncio.Event()
    lags: list[float] = []
    lag_task = asyncio.create_task(_loop_lag(stop, lags))
    run = asyncio.create_task(run_generation(config, stop=stop))
    await asyncio.sleep(warmup)
    answered_at_warmup = sum(s.stats()["answered"] for s in servers)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds - warmup)
    answered = sum(s.stats()["answered"] for s in servers) - answered_at_warmup
    elapsed = time.perf_counter() - t0
    stop.set()
    summary = await run
    await lag_task
    lags.sort()
    return {
        "answered_per_s": answered / elapsed,
        "max_serving": max(s.stats()["max_serving"] for s in servers),
        "loop_lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)] if lags else 0.0,
        "loop_lag_max_ms": 1000 * lags[-1] if lags else 0.0,
        "accepted": summary.accepted,
        "endpoints": summary.endpoints,
    }


def saturation(endpoints: int, seconds: float, latency: float, capacity: int) -> dict:
    servers = [FakeProcess(latency, capacity, seed=100 + i) for i in range(endpoints)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = RunConfig(
                output_dir=Path(tmp) / "run",
                base_urls=tuple(s.base_url for s in servers),
                num_instructions=10_000_000,
                concurrency=None,
                tasks_per_prompt=5,  # two new tasks an answer: measure the transport, not the judge
                progress=False,
                seed=1,
            )
            result = asyncio.run(_timed_run(config, seconds, servers, warmup=min(5.0, seconds / 4)))
    finally:
        for s in servers:
            s.stop()
    ideal = capacity * endpoints / latency
    result["ideal_per_s"] = ideal
    result["saturation"] = result["answered_per_s"] / ideal
    return result


def overhead(pool: int, seconds: float) -> dict:
    sentences = [json.loads(line)["instruction"] for line in DATA.open()][:pool]
    server = FakeProcess(0.0, None, seed=7)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            with RunStore(out) as store:
                for k, text in enumerate(sentences):
                    store.append_accepted({"id": f"pre-{k}", "instruction": text, "input": "", "output": "x"})
            config = RunConfig(
                output_dir=out,
                base_urls=(server.base_url,),
                num_instructions=len(sentences) + 1_000_000,
                concurrency=8,
                progress=False,
                seed=1,
            )

            async def go() -> dict:
                stop = asyncio.Event()
                run = asyncio.create_task(run_generation(config, stop=stop))
                await asyncio.sleep(seconds)
                stop.set()
                return (await run).counters

            start = time.perf_counter()
            counters = asyncio.run(go())
            elapsed = time.perf_counter() - start
    finally:
        server.stop()
    # Start-up (reading 52k lines, building the index) is inside `elapsed`: report it honestly.
    return {
        "pool": len(sentences),
        "session_candidates": counters["session_candidates"],
        "candidates_per_s": counters["session_candidates"] / elapsed,
        "elapsed_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--capacity", type=int, default=32)
    parser.add_argument("--pool", type=int, default=52_000)
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    print(f"saturation: latency {args.latency} s, capacity {args.capacity} per endpoint, {args.seconds:.0f} s runs")
    print(f"{'endpoints':>9} {'ideal/s':>8} {'answered/s':>11} {'ratio':>6} {'max serving':>12} {'loop p99 ms':>12} {'loop max ms':>12}")
    for endpoints in (1, 3):
        r = saturation(endpoints, args.seconds, args.latency, args.capacity)
        print(
            f"{endpoints:>9} {r['ideal_per_s']:>8.1f} {r['answered_per_s']:>11.1f} {r['saturation']:>6.3f} "
            f"{r['max_serving']:>12} {r['loop_lag_p99_ms']:>12.1f} {r['loop_lag_max_ms']:>12.1f}"
        )
        for url, stats in r["endpoints"].items():
            print(f"          {url}: limit {stats['concurrency_limit']} peak {stats['concurrency_peak']} cuts {stats['concurrency_cuts']}")
    if not args.skip_overhead:
        r = overhead(args.pool, args.seconds)
        print(
            f"pipeline overhead: pool {r['pool']}, {r['session_candidates']} candidates in {r['elapsed_s']:.1f} s "
            f"(start-up included) = {r['candidates_per_s']:.0f} candidates/s"
        )


if __name__ == "__main__":
    main()
