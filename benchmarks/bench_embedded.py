"""Which API suits the embedded SmolLM2-135M best: chat or completions?

Runs `generate` on the embedded llama.cpp server in each mode for the same time budget with the
same demo seeds (stopping it with SIGINT, as a user would), then prints accepted tasks per 1k
generated tokens and accepted tasks per minute. This is how the embedded model's default `--api`
was chosen.

Run:  python benchmarks/bench_embedded.py [--seconds 240] [--seeds 1 2]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(api: str, seconds: float, seed: int, max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        proc = subprocess.Popen(
            [sys.executable, "-m", "selfinstruct", "generate", "-o", str(out), "-n", "100000",
             "--api", api, "--seed", str(seed), "--max-tokens", str(max_tokens), "-q"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(seconds)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate()
        if proc.returncode != 130:
            raise SystemExit(f"{api} failed: {stderr[-2000:]}")
        run = json.loads((out / "run.json").read_text())
        counters, elapsed = run["counters"], run["elapsed_seconds"]
    tokens = counters["completion_tokens"]
    return {
        "api": api,
        "seed": seed,
        "accepted": counters["accepted"],
        "requests": counters["requests"],
        "candidates": counters["candidates"],
        "completion_tokens": tokens,
        "per_1k_tokens": 1000 * counters["accepted"] / max(1, tokens),
        "per_minute": 60 * counters["accepted"] / elapsed,
        "rejected": counters["rejected"],
        "elapsed_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0, help="time budget per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-tokens", type=int, default=1024)
    args = parser.parse_args()
    print(f"{'api':<12} {'seed':>4} {'accepted':>8} {'requests':>8} {'gen tokens':>10} {'per 1k tok':>10} {'per min':>8} {'s':>6}  rejected")
    rows = []
    for seed in args.seeds:
        for api in ("completions", "chat"):
            rows.append(r := run(api, args.seconds, seed, args.max_tokens))
            print(
                f"{r['api']:<12} {r['seed']:>4} {r['accepted']:>8} {r['requests']:>8} {r['completion_tokens']:>10} "
                f"{r['per_1k_tokens']:>10.2f} {r['per_minute']:>8.2f} {r['elapsed_s']:>6.0f}  {r['rejected']}",
                flush=True,
            )
    for api in ("completions", "chat"):
        mine = [r for r in rows if r["api"] == api]
        tokens = sum(r["completion_tokens"] for r in mine)
        accepted = sum(r["accepted"] for r in mine)
        seconds = sum(r["elapsed_s"] for r in mine)
        print(f"{api}: {1000 * accepted / tokens:.2f} accepted per 1k tokens, {60 * accepted / seconds:.2f} tasks/min")


if __name__ == "__main__":
    main()
