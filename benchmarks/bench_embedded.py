"""Which API suits the embedded SmolLM2-135M best: chat or completions?

Runs `generate` on the embedded llama.cpp server in each mode to the same target with the same
demo seed, then prints accepted tasks per 1k generated tokens and accepted tasks per minute.
This is how the embedded model's default `--api` was chosen.

Run:  python benchmarks/bench_embedded.py [--target 20] [--seeds 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(api: str, target: int, seed: int, max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "selfinstruct", "generate", "-o", str(out), "-n", str(target),
             "--api", api, "--seed", str(seed), "--max-tokens", str(max_tokens), "-q"],
            capture_output=True, text=True,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{api} failed: {proc.stderr[-2000:]}")
        counters = json.loads((out / "run.json").read_text())["counters"]
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
    parser.add_argument("--target", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-tokens", type=int, default=1024)
    args = parser.parse_args()
    rows = [run(api, args.target, seed, args.max_tokens) for seed in args.seeds for api in ("completions", "chat")]
    print(f"{'api':<12} {'seed':>4} {'accepted':>8} {'requests':>8} {'gen tokens':>10} {'per 1k tok':>10} {'per min':>8} {'s':>6}  rejected")
    for r in rows:
        print(
            f"{r['api']:<12} {r['seed']:>4} {r['accepted']:>8} {r['requests']:>8} {r['completion_tokens']:>10} "
            f"{r['per_1k_tokens']:>10.2f} {r['per_minute']:>8.2f} {r['elapsed_s']:>6.0f}  {r['rejected']}"
        )
    for api in ("completions", "chat"):
        mine = [r for r in rows if r["api"] == api]
        tokens = sum(r["completion_tokens"] for r in mine)
        accepted = sum(r["accepted"] for r in mine)
        seconds = sum(r["elapsed_s"] for r in mine)
        print(f"{api}: {1000 * accepted / tokens:.2f} accepted per 1k tokens, {60 * accepted / seconds:.2f} tasks/min")


if __name__ == "__main__":
    main()
