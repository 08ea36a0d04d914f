#!/usr/bin/env python3
"""Benchmark selfinstruct.similarity.RougeLIndex against rouge-score brute force.

Pools are built from real English sentences (one {"instruction": ...} per line). The 1M pool
is the real sentences plus recombinations (first half of one sentence + second half of
another, fixed seed). Queries are held-out sentences (realistic new candidates) plus edited
copies of pool sentences (near-duplicates with scores spread around the 0.7 threshold).

Every size runs in its own child process so that peak RSS belongs to that size alone.
Per size it prints: median / p90 ms per ``nearest``; rouge-score brute force ms per query
(measured in full at small sizes, extrapolated from the measured per-pair cost at large ones,
marked "~"); their ratio; peak RSS (taken after build and the timed queries, before any
checking); build time; and accept/reject disagreements at threshold 0.7:
  * vs rouge-score brute force on a sample of queries (all sizes up to 52k);
  * vs an independent exact full scan (same tokenizer, rapidfuzz LCS of the query against
    every pool text, no pruning) for all queries -- at 1M for the first --check-1m queries.
Score mismatches (any float difference from the full scan) are counted too.

    python3 benchmarks/bench_similarity.py --sizes 1k,10k,52k,1M --queries 200
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "english_sentences.jsonl"
THRESHOLD = 0.7
SEED = 20240611


LEGEND = """
ours/held/near = median (p90) ms per nearest() over all / held-out / near-duplicate queries.
brute ms = rouge-score brute force per query; '~' = extrapolated: measured per-pair cost x size.
ratio = brute ms / ours ms (all queries). RSS = peak of the child process after build + queries.
build s = extend() + 1000 add(); add us = mean add() cost.  rej = queries scoring >= 0.7.
brute chk/dis/mis = queries brute-forced with rouge-score / decision disagreements / (score, id)
  mismatches.  scan chk/dis/mis = the same against an exact full scan (no pruning)."""


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def load_sentences(path: Path) -> list[str]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line)["instruction"])
    return out


def make_workload(
    sentences: list[str], size: int, n_queries: int
) -> tuple[list[str], list[str], list[str]]:
    """Return (pool, held-out queries, near-duplicate queries), deterministic for a seed."""
    rng = random.Random(SEED)
    sents = list(dict.fromkeys(sentences))  # drop exact repeats so held-out means unseen
    rng.shuffle(sents)
    n_held = n_queries - n_queries // 4
    held, material = sents[:n_held], sents[n_held:]
    if size <= len(material):
        pool = material[:size]
    else:
        pool = list(material)
        words = [s.split() for s in material]
        while len(pool) < size:
            a, b = rng.choice(words), rng.choice(words)
            pool.append(" ".join(a[: len(a) // 2] + b[len(b) // 2 :]))
    vocab = [w for s in material[:5000] for w in s.split()]
    near = []
    for _ in range(n_queries // 4):
        ws = rng.choice(pool).split()
        for _ in range(rng.randint(0, max(1, len(ws) // 3))):  # edits push F around 0.7
            op, i = rng.random(), rng.randrange(len(ws))
            if op < 0.4:
                ws[i] = rng.choice(vocab)
            elif op < 0.7 and len(ws) > 1:
                del ws[i]
            else:
                ws.insert(i, rng.choice(vocab))
        near.append(" ".join(ws))
    return pool, held, near


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(args: argparse.Namespace, size: int) -> dict:
    import numpy as np
    from rapidfuzz.distance import LCSseq
    from rapidfuzz.process import cdist

    from selfinstruct.similarity import RougeLIndex, tokenize

    sentences = load_sentences(Path(args.data))
    pool, held, near = make_workload(sentences, size, args.queries)
    del sentences
    queries = held + near

    idx = RougeLIndex()
    t0 = time.perf_counter()
    idx.extend(pool[: max(0, size - 1000)])
    t1 = time.perf_counter()
    for text in pool[max(0, size - 1000) :]:
        idx.add(text)
    t2 = time.perf_counter()
    n_added = size - max(0, size - 1000)

    idx.nearest(queries[0])  # warm caches once
    times, ours = [], []
    for q in queries:
        t = time.perf_counter()
        ours.append(idx.nearest(q))
        times.append((time.perf_counter() - t) * 1000)
    peak = rss_peak_mb()
    held_ms = times[: len(held)]
    near_ms = times[len(held) :]

    # rouge-score brute force: full scans where affordable, else a per-pair sample. Imported
    # only now so that its dependencies (nltk, absl) do not count in the index's peak RSS.
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    brute_full = size <= args.brute_full_max
    rng = random.Random(SEED + 1)
    brute_ms: list[float] = []
    brute_checked = brute_disagree = brute_mismatch = 0
    if brute_full:
        n_brute = max(3, min(len(queries), args.brute_pairs // size))
        sample = rng.sample(range(len(queries)), min(n_brute, len(queries)))
        for qi in sample:
            t = time.perf_counter()
            scores = [scorer.score(p, queries[qi])["rougeL"].fmeasure for p in pool]
            brute_ms.append((time.perf_counter() - t) * 1000)
            best = max(scores)
            brute_checked += 1
            brute_disagree += (best >= THRESHOLD) != (ours[qi][0] >= THRESHOLD)
            best_id = scores.index(best) if best > 0 else None
            brute_mismatch += (best, best_id) != ours[qi]
        brute_q_ms = statistics.median(brute_ms)
    else:
        # Per-pair cost on random pairs, times the pool size.
        pairs = [
            (rng.choice(pool), rng.choice(queries)) for _ in range(min(args.brute_pairs, 30_000))
        ]
        t = time.perf_counter()
        for p, q in pairs:
            scorer.score(p, q)
        brute_q_ms = (time.perf_counter() - t) / len(pairs) * size * 1000

    # Independent exact full scan: same tokenizer, LCS of the query with every pool text.
    n_scan = len(queries) if size <= 100_000 else min(len(queries), args.check_1m)
    near_part = min(len(near), n_scan // 4)
    scan_idx = list(range(n_scan - near_part)) + list(range(len(held), len(held) + near_part))
    vocab: dict[str, str] = {}

    def enc(text: str) -> str:
        return "".join(vocab.setdefault(t, chr(0x10000 + len(vocab))) for t in tokenize(text))

    del idx
    pool_seqs = [enc(p) for p in pool]
    lens = np.array([len(s) for s in pool_seqs], dtype=np.int64)
    scan_disagree = scan_mismatch = 0
    for qi in scan_idx:
        qs = enc(queries[qi])
        n = len(qs)
        if n == 0:
            best, best_id = 0.0, None
        else:
            lcs = cdist([qs], pool_seqs, scorer=LCSseq.similarity, dtype=np.int32, workers=1)[0]
            with np.errstate(invalid="ignore", divide="ignore"):
                pr, rc = lcs / n, lcs / lens
                f = 2 * pr * rc / (pr + rc)
            f[lcs == 0] = 0.0
            best = float(f.max())
            best_id = int(np.flatnonzero(f == best)[0]) if best > 0 else None
        scan_disagree += (best >= THRESHOLD) != (ours[qi][0] >= THRESHOLD)
        scan_mismatch += (best, best_id) != ours[qi]

    ours_ms = statistics.median(times)
    return {
        "size": size,
        "ours_ms": ours_ms,
        "held_ms": statistics.median(held_ms),
        "held_p90": float(np.percentile(held_ms, 90)),
        "near_ms": statistics.median(near_ms) if near_ms else float("nan"),
        "brute_ms": brute_q_ms,
        "brute_full": brute_full,
        "brute_checked": brute_checked,
        "brute_bad": brute_disagree,
        "brute_mismatch": brute_mismatch,
        "ratio": brute_q_ms / ours_ms,
        "rss_mb": peak,
        "build_s": t2 - t0,
        "add_us": (t2 - t1) / max(1, n_added) * 1e6,
        "scan_checked": len(scan_idx),
        "scan_disagree": scan_disagree,
        "scan_mismatch": scan_mismatch,
        "rejects": sum(s >= THRESHOLD for s, _ in ours),
        "n_queries": len(queries),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL with {'instruction': ...}")
    ap.add_argument("--sizes", default="1k,10k,52k,1M", help="comma list, e.g. 1k,52k,1M")
    ap.add_argument("--queries", type=int, default=200, help="queries per size (1/4 near-dups)")
    ap.add_argument("--brute-pairs", type=int, default=300_000,
                    help="rouge-score pairs per size for timing/checking")  # fmt: skip
    ap.add_argument("--brute-full-max", type=int, default=52_000,
                    help="largest pool scanned in full by rouge-score")  # fmt: skip
    ap.add_argument("--check-1m", type=int, default=50,
                    help="queries checked by full exact scan on pools > 100k")  # fmt: skip
    ap.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"data file not found: {args.data} (use --data)")

    if args.one_size is not None:
        print(json.dumps(run_one(args, args.one_size)))
        return

    rows = []
    for size in map(parse_size, args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--one-size", str(size)]
        for flag in ("data", "queries", "brute_pairs", "brute_full_max", "check_1m"):
            cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(f"done {size}", file=sys.stderr, flush=True)

    hdr = (f"{'pool':>8} {'ours ms':>8} {'held p50':>8} {'held p90':>8} {'near p50':>8} "
           f"{'brute ms':>11} {'ratio':>8} {'RSS MB':>7} {'build s':>8} {'add us':>7} "
           f"{'rej':>4} {'brute chk/dis/mis':>17} {'scan chk/dis/mis':>16}")  # fmt: skip
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        brute = f"{'' if r['brute_full'] else '~'}{r['brute_ms']:.1f}"
        scan = f"{r['scan_checked']}/{r['scan_disagree']}/{r['scan_mismatch']}"
        bchk = (f"{r['brute_checked']}/{r['brute_bad']}/{r['brute_mismatch']}"
                if r["brute_full"] else "-")  # fmt: skip
        print(f"{r['size']:>8} {r['ours_ms']:>8.3f} {r['held_ms']:>8.3f} {r['held_p90']:>8.3f} "
              f"{r['near_ms']:>8.3f} {brute:>11} {r['ratio']:>7.0f}x {r['rss_mb']:>7.0f} "
              f"{r['build_s']:>8.2f} {r['add_us']:>7.1f} {r['rejects']:>4} {bchk:>17} "
              f"{scan:>16}")  # fmt: skip
    print(LEGEND)


if __name__ == "__main__":
    main()
