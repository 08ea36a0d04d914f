"""Alpaca vs Self-Instruct on the embedded SmolLM2-135M: what each method yields per generated token.

Runs `generate` to a fixed target with each method (completions API, the embedded default) and
reads the run directory: instructions and training rows (instances) per 1k generated tokens, the
share of classification tasks found, and where candidates were lost.

Run:  python benchmarks/bench_methods.py [--alpaca 20] [--self-instruct 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(method: str, target: int, seed: int, max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "selfinstruct", "generate", "-o", str(out), "-n", str(target), "--method", method,
             "--api", "completions", "--seed", str(seed), "--max-tokens", str(max_tokens), "-q"],
            capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"{method} failed: {proc.stderr[-2000:]}")
        requests = _lines(out / "requests.jsonl")
        tokens_by_stage: Counter[str] = Counter()
        for r in requests:
            tokens_by_stage[r.get("stage") or "tasks"] += r.get("completion_tokens", 0)
        instructions = _lines(out / "instructions.jsonl")
        tasks = _lines(out / "tasks.jsonl")
        rows = sum(len(t["instances"]) for t in tasks) if tasks else len(instructions)
        decided = [t for t in tasks if t.get("is_classification") is not None]
        tokens = sum(tokens_by_stage.values())
        return {
            "method": method,
            "instructions": len(instructions),
            "rows": rows,
            "tokens": tokens,
            "tokens_by_stage": dict(tokens_by_stage),
            "instructions_per_1k": 1000 * len(instructions) / max(1, tokens),
            "rows_per_1k": 1000 * rows / max(1, tokens),
            "classification_share": (sum(t["is_classification"] for t in decided) / len(decided)) if decided else None,
            "no_instances": dict(Counter(t["reason"] for t in tasks if t.get("reason"))),
            "rejected": dict(Counter(r["reason"] for r in _lines(out / "rejected.jsonl")).most_common(6)),
            "seconds": seconds,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alpaca", type=int, default=20, help="target tasks for the alpaca run")
    parser.add_argument("--self-instruct", type=int, default=10, help="target instructions for the self-instruct run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=1024)
    args = parser.parse_args()
    for method, target in (("alpaca", args.alpaca), ("self-instruct", args.self_instruct)):
        r = run(method, target, args.seed, args.max_tokens)
        share = "-" if r["classification_share"] is None else f"{r['classification_share']:.0%}"
        print(
            f"{method:<14} instructions {r['instructions']:>3}  rows {r['rows']:>3}  gen tokens {r['tokens']:>6}  "
            f"instructions/1k tok {r['instructions_per_1k']:.2f}  rows/1k tok {r['rows_per_1k']:.2f}  "
            f"classification {share}  {r['seconds']:.0f} s",
            flush=True,
        )
        print(f"  tokens by stage {r['tokens_by_stage']}; no instances {r['no_instances']}; rejected {r['rejected']}")


if __name__ == "__main__":
    main()
