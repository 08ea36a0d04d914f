#!/usr/bin/env python3
"""Benchmark the near-duplicate decision and the nearest of accepted tasks, before and after.

Before = ``selfinstruct/similarity.py`` and ``selfinstruct/judge.py`` as of BASELINE_COMMIT (or, with
``--before REV``, the whole package at REV, run the way after is)
(loaded with ``git show`` into temporary modules; the judge calls ``nearest`` on every
candidate and rejects when it is above 0.7). After = the working tree, as its judging processes
use it: the decider asks ``max_above`` (the decision, with the exact nearest of a
near-duplicate); its fork computes the exact nearest of each accepted task with ``nearest``,
starting from the decision's ``runner_up``. Each run and version runs in its own child process,
so its RSS is its own. Times are thread CPU time (the machine may be shared); wall time too.

Runs (``KIND:SIZE``):

* ``instructions`` -- ``benchmarks/instruction_text.py``: templated instructions built from
  the shared sentences with Zipf-distributed frames and topics. The pool is what a run keeps:
  the source's stream (fresh instructions, 30 % paraphrases of kept ones) through the exact
  filter (``instruction_text.filtered_pool``, cached: 52k takes about 1.5 minutes to build, 1M
  about an hour). Candidates: new draws, 30 % paraphrases of pool texts.
* ``sentences`` -- plain sentences of the data file (shuffled): the pool is a prefix, the
  candidates are other sentences and 30 % paraphrases of pool ones. Shows that prose, whose
  nearest is usually far, did not get slower.

Per run and version: the Judge built from the pool as accepted records (a resume) and the
first decision (after: it builds the decision index); ``decision`` per candidate (before:
``nearest``; after: ``max_above``, and ``first_above`` for reference); ``nearest (accepted)``
for the candidates not above 0.7; ``judged/s``: in-process ``Judge.decide`` (filters, exact
copies, nearest, id, add) over a second stream, and after: ``split ms/cand``, the CPU the
two judging processes spend per candidate together (decider + nearest filler) on that
stream; RSS of the child; exactness: after's decisions, (score, id) and accepted lists vs
before's, and vs ``rouge-score`` brute force on a sample for pools up to 52k.

    python benchmarks/bench_similarity.py --quick   # 10k instructions and sentences: ~1 min
    python benchmarks/bench_similarity.py           # instructions 52k, sentences 20k: ~6 min
    python benchmarks/bench_similarity.py --big     # adds instructions 1M (an hour to build once)
    python benchmarks/bench_similarity.py --rounds 2  # before, after, before, after: a machine whose
                                                     # speed drifts shows as a spread between rounds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# A "before" child of --before REV runs with that revision's package first (SELFINSTRUCT_CODE).
for p in (ROOT, ROOT / "benchmarks", *([os.environ["SELFINSTRUCT_CODE"]] if "SELFINSTRUCT_CODE" in os.environ else [])):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from instruction_text import (  # noqa: E402
    DEFAULT_CACHE,
    DEFAULT_DATA,
    NEAR_SHARE,
    POOL_SEED,
    THRESHOLD,
    InstructionSource,
    filtered_pool,
    load_sentences,
)

BASELINE_COMMIT = "9832628"  # main before the decision index and the split judging processes
CAND_SEED = 7


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def load_baseline() -> ModuleType:
    """similarity.py as of BASELINE_COMMIT, as the module selfinstruct._baseline_similarity."""
    src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:selfinstruct/similarity.py"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader("selfinstruct._baseline_similarity", loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "selfinstruct"  # its `from .errors import ...` resolves in the package
    sys.modules[spec.name] = mod
    exec(compile(src, f"{BASELINE_COMMIT[:7]}:selfinstruct/similarity.py", "exec"), mod.__dict__)
    return mod


# -- measuring -------------------------------------------------------------------------------


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so that RSS shows what is still in use."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB (VmRSS, VmHWM: unlike
    ru_maxrss, the peak does not include the parent's RSS inherited at fork)."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def timed(fn: Callable[[str], object], items: list[str]) -> tuple[list[object], dict]:
    out, cpu, wall = [], [], []
    for x in items:
        w, c = time.perf_counter(), time.thread_time()
        out.append(fn(x))
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    return out, stats(cpu, wall)


def stats(cpu: list[float], wall: list[float]) -> dict:
    if not cpu:
        return {}
    a, w = np.array(cpu) * 1e3, np.array(wall) * 1e3
    return {"n": len(a), "mean": a.mean(), "p50": np.percentile(a, 50), "p90": np.percentile(a, 90),
            "p99": np.percentile(a, 99), "max": a.max(), "wall_mean": w.mean(),
            "wall_p99": np.percentile(w, 99)}  # fmt: skip


def load_baseline_judge() -> ModuleType:
    """judge.py as of BASELINE_COMMIT on top of the baseline similarity module."""
    base = load_baseline()
    src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:selfinstruct/judge.py"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout  # fmt: skip
    src = src.replace("from .similarity import", f"from {base.__name__} import")
    spec = importlib.util.spec_from_loader("selfinstruct._baseline_judge", loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "selfinstruct"
    sys.modules[spec.name] = mod
    exec(compile(src, f"{BASELINE_COMMIT[:7]}:selfinstruct/judge.py", "exec"), mod.__dict__)
    return mod


def sentence_pool(data: Path, size: int, queries: int) -> tuple[list[str], list[str], InstructionSource]:
    """Plain sentences: a shuffled prefix as the pool, the rest as fresh candidates."""
    sentences = load_sentences(data)
    random.Random(POOL_SEED).shuffle(sentences)
    if size + 3 * queries > len(sentences):
        sys.exit(f"{data} has {len(sentences):,} sentences: too few for a {size:,} pool")
    return sentences[:size], sentences[size:], InstructionSource(sentences)


def run_child(args: argparse.Namespace, kind: str, size: int, version: str, ref_file: Path) -> dict:
    """One text kind, pool size and version: resume a Judge, time, check; the result as a dict."""
    import gc

    from selfinstruct.filters import FilterConfig
    from selfinstruct.records import AcceptedTask, Candidate

    if kind == "instructions":
        pool, detail = filtered_pool(size, Path(args.cache), Path(args.data))
        src = InstructionSource(load_sentences(Path(args.data)))
        src.detail = detail
        fresh_texts: list[str] = []
    else:
        pool, fresh_texts, src = sentence_pool(Path(args.data), size, args.queries)

    def stream(seed: int, texts: list[str] = pool) -> list[str]:
        src.rng = random.Random(seed)
        if kind == "instructions":
            return src.candidates(args.queries, texts, near_share=NEAR_SHARE)
        out = []
        for _ in range(args.queries):
            near = src.rng.random() < NEAR_SHARE
            out.append(src.paraphrase(src.rng.choice(texts)) if near else src.rng.choice(fresh_texts))
        return out

    # All candidates are drawn before the Judge is built so that the pool list can be freed.
    cands, judge_texts = stream(CAND_SEED), stream(CAND_SEED + 1)
    baseline = version == "before" and not args.before  # else the package first on sys.path
    judge_mod = load_baseline_judge() if baseline else importlib.import_module("selfinstruct.judge")
    # Through the judging processes' questions (max_above, then nearest from its runner-up) unless
    # the version predates them (the default baseline: nearest() for every candidate).
    split = hasattr(judge_mod.Judge, "fill_nearest")
    # A resumed run: the Judge built from every accepted record (no seeds: the pool is the run).
    tasks = [AcceptedTask(id=f"task-{i:07d}", instruction=t, input="", output="x", request=0)
             for i, t in enumerate(pool)]  # fmt: skip
    n_pool = len(pool)
    brute_pool = pool if size <= 52_000 and args.brute > 0 else None
    del pool
    gc.collect()
    t0 = time.perf_counter()
    judge = judge_mod.Judge(filters=FilterConfig(), threshold=THRESHOLD, tokenizer="rouge", seeds=[],
                            accepted=tasks, next_task_number=n_pool)  # fmt: skip
    row: dict = {"kind": kind, "size": size, "version": version, "queries": len(cands),
                 "judge_init_s": time.perf_counter() - t0}  # fmt: skip
    del tasks
    gc.collect()
    release_freed_memory()
    row["rss_built_mb"] = rss_mb()[0]
    idx = judge.index
    gc.disable()  # a collection would land in a random query's time
    t = THRESHOLD
    if not split:
        t1 = time.perf_counter()
        idx.nearest("warm up the caches")
        row["first_decision_s"] = time.perf_counter() - t1
        res, row["decision"] = timed(idx.nearest, cands)
        ref = [(float(sc), i) for sc, i in res]
        ref_file.write_text(json.dumps(ref))
        dup = [sc > t for sc, _ in ref]
        _, row["nearest_accepted"] = timed(idx.nearest, [c for c, d in zip(cands, dup) if not d])
    else:
        ref = [tuple(x) for x in json.loads(ref_file.read_text())] if ref_file.exists() else None
        t1 = time.perf_counter()
        idx.max_above("warm up the caches", t)  # builds the decision index
        row["first_decision_s"] = time.perf_counter() - t1
        hits, row["decision"] = timed(lambda c: idx.max_above(c, t), cands)
        _, row["first_above"] = timed(lambda c: idx.first_above(c, t), cands)
        dup = [h is not None for h in hits]
        accepted = [c for c, d in zip(cands, dup) if not d]
        got = {}  # the judging processes' way: the decision, then nearest() from its runner-up
        cpu, wall = [], []
        for c in accepted:
            assert idx.max_above(c, t) is None
            runner_up = idx.runner_up(c)
            idx._hint = None  # as in the other process: only what the decider sent is known
            w, c0 = time.perf_counter(), time.thread_time()
            got[c] = idx.nearest(c, runner_up=runner_up)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - w)
        row["nearest_accepted"] = stats(cpu, wall)
        res = [h if h is not None else got[c] for c, h in zip(cands, hits)]
        if version == "before":
            ref_file.write_text(json.dumps(res))
        elif ref is not None:
            row["decisions_differ"] = sum((sc > t) != d for (sc, _), d in zip(ref, dup))
            row["nearest_differ"] = sum((sc, i) != tuple(r) for (sc, i), r in zip(ref, res))
    row["rejected"] = sum(dup) / len(dup)
    # rouge-score brute force on a sample of candidates (pools up to 52k).
    if brute_pool is not None:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        sample = random.Random(1).sample(range(len(cands)), min(len(cands), args.brute))
        bad = 0
        for k in sample:
            scores = [scorer.score(p, cands[k])["rougeL"].fmeasure for p in brute_pool]
            best = max(scores)
            want = (best, scores.index(best)) if best > 0 else (0.0, None)
            bad += tuple(res[k]) != want or (best > t) != dup[k]
        row["brute_checked"], row["brute_bad"] = len(sample), bad
        del brute_pool
    # The whole judge path last (it grows the pool): filters, exact copies, the decision, and
    # for an accepted task its id, add() and the exact nearest (Judge.decide).
    items = [Candidate(x, "", "An answer long enough.") for x in judge_texts]
    if split:
        # The two judging processes, one after the other here: a decider and a replica of its pool
        # (built the same way) that fills in the nearest of what it accepted.
        from selfinstruct.judge import Verdict

        def resumed() -> Any:
            return judge_mod.Judge(filters=FilterConfig(), threshold=THRESHOLD, tokenizer="rouge", seeds=[],
                                   accepted=[AcceptedTask(id=f"task-{i:07d}", instruction=judge.index.text(i),
                                                          input="", output="x", request=0) for i in range(n_pool)],
                                   next_task_number=n_pool)  # fmt: skip

        filler, decider = resumed(), resumed()
        filler.index.prepare(t)
        decider.index.prepare(t)
        decider.defer_nearest = True
        c = time.thread_time()
        split = [decider.decide(x) for x in items]
        cpu_decide = time.thread_time() - c
        filled = filler.fill_nearest(Verdict(decisions=split))
        cpu_fill = time.thread_time() - c - cpu_decide
        row["split_ms"] = (1000 * cpu_decide / len(items), 1000 * cpu_fill / len(items))
        split_accepted = [d.candidate.instruction for d in filled.decisions if type(d).__name__ == "Accept"]
        del filler, decider
        # Judging in-process (one core, the Self-Instruct method) never builds the decision index.
        judge = resumed()
        gc.collect()
    w, c = time.perf_counter(), time.thread_time()
    decisions = [judge.decide(x) for x in items]
    cpu, wall = time.thread_time() - c, time.perf_counter() - w
    row["judge_per_s"], row["judge_per_s_wall"] = len(items) / cpu, len(items) / wall
    if split:
        whole = [d for d in decisions if type(d).__name__ == "Accept"]
        row["split_differs"] = split_accepted != [d.candidate.instruction for d in whole] or [
            (d.rouge_l, d.nearest_id) for d in filled.decisions if type(d).__name__ == "Accept"
        ] != [(d.rouge_l, d.nearest_id) for d in whole]
    row["judge_accepted"] = sum(type(d).__name__ == "Accept" for d in decisions) / len(decisions)
    if version == "before":
        Path(str(ref_file) + ".judge").write_text(json.dumps([d.candidate.instruction for d in decisions
                                                              if type(d).__name__ == "Accept"]))  # fmt: skip
    else:
        path = Path(str(ref_file) + ".judge")
        if path.exists():
            want = json.loads(path.read_text())
            row["judge_differ"] = want != [d.candidate.instruction for d in decisions if type(d).__name__ == "Accept"]
    gc.collect()
    release_freed_memory()
    row["rss_mb"], row["rss_peak_mb"] = rss_mb()
    return row


# -- report ----------------------------------------------------------------------------------


def fmt_stats(s: dict) -> str:
    if not s:
        return "-"
    return f"{s['mean']:7.3f} {s['p50']:7.3f} {s['p99']:7.3f} {s['max']:7.2f} | {s['wall_mean']:6.3f} {s['wall_p99']:7.3f}"


def report(rows: list[dict]) -> None:
    print("\nPer candidate: ms of thread CPU time (mean p50 p99 max | wall mean p99).")
    print("decision: before = nearest(), after = max_above() (what the judge asks). nearest (accepted):")
    print("the exact nearest of the candidates not above 0.7 (after: nearest() right after the decision).")
    print("judged/s: Judge.decide on a second candidate stream, CPU (wall). init: Judge(...) from the")
    print("pool as accepted records (a resume); first: the first decision (after: builds its index).")
    for r in rows:
        print(f"\n== {r['kind']} {r['size']:,} -- {r['version']}  (rejected {r['rejected']:.0%} of "
              f"{r['queries']} candidates; judge loop accepted {r['judge_accepted']:.0%})")  # fmt: skip
        for key, label in (("decision", "decision"), ("first_above", "first_above (early exit)"),
                           ("nearest_accepted", "nearest (accepted)")):  # fmt: skip
            if key in r:
                print(f"  {label:26s} {fmt_stats(r[key])}")
        if "split_ms" in r:
            d_ms, f_ms = r["split_ms"]
            print(f"  split judging: decider {d_ms:.3f} + nearest filler {f_ms:.3f} = {d_ms + f_ms:.3f} ms CPU per"
                  f" candidate ({'DIFFERS from' if r['split_differs'] else 'the same tasks and nearests as'}"
                  " in-process)")  # fmt: skip
        print(f"  judged/s {r['judge_per_s']:,.0f} ({r['judge_per_s_wall']:,.0f} wall); init {r['judge_init_s']:.1f} s, "
              f"first decision {r['first_decision_s']:.1f} s; RSS {r['rss_built_mb']:.0f} MB built, "
              f"{r['rss_mb']:.0f} MB at the end, peak {r['rss_peak_mb']:.0f} MB")  # fmt: skip
        checks = []
        if "decisions_differ" in r:
            checks.append(f"vs before: {r['decisions_differ']} decisions, {r['nearest_differ']} (score, id) differ")
        if "judge_differ" in r:
            checks.append(f"judge loop accepted list {'DIFFERS' if r['judge_differ'] else 'identical'}")
        if "brute_checked" in r:
            checks.append(f"vs rouge-score brute force: {r['brute_bad']} of {r['brute_checked']} wrong")
        if checks:
            print("  exactness: " + "; ".join(checks))
    print("\n| text, pool | version | decision mean / p50 / p99 ms | nearest (accepted) mean / p99 ms "
          "| judged/s in-process | split: ms CPU / candidate | Judge init + first decision s | RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, n = r["decision"], r["nearest_accepted"]
        split = f"{sum(r['split_ms']):.3f}" if "split_ms" in r else "-"
        print(f"| {r['kind']} {r['size']:,} | {r['version']} | {d['mean']:.3f} / {d['p50']:.3f} / {d['p99']:.3f} "
              f"| {n['mean']:.3f} / {n['p99']:.3f} | {r['judge_per_s']:,.0f} | {split} "
              f"| {r['judge_init_s']:.1f} + {r['first_decision_s']:.1f} | {r['rss_mb']:.0f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="instructions 10k and sentences 10k, 300 candidates")
    ap.add_argument("--big", action="store_true", help="also the 1M instruction pool (slow: see above)")
    ap.add_argument("--runs", help="comma list of KIND:SIZE (instructions|sentences), overrides the default")
    ap.add_argument("--queries", type=int, help="candidates per run (default 2000, quick 300)")
    ap.add_argument("--brute", type=int, help="candidates checked with rouge-score (default 20)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL with {'instruction': ...}")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="where built pools are kept")
    ap.add_argument("--before", metavar="REV", help="before = the whole package at this git revision (built with its"
                    f" native kernel, if any) instead of {BASELINE_COMMIT}'s similarity.py and judge.py")
    ap.add_argument("--rounds", type=int, default=1, help="run before and after this many times each, alternating")
    ap.add_argument("--versions", default="before,after", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # kind size version ref_file
    args = ap.parse_args()
    args.queries = args.queries or (300 if args.quick else 2000)
    args.brute = args.brute if args.brute is not None else (10 if args.quick else 20)
    if args.child:
        kind, size, version, ref = args.child
        print(json.dumps(run_child(args, kind, int(size), version, Path(ref)), default=float))
        return
    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"data file not found: {data} (use --data)")
    spec = args.runs or ("instructions:10k,sentences:10k" if args.quick else "instructions:52k,sentences:20k")
    if args.big:
        spec += ",instructions:1M"
    runs = [(k.strip(), parse_size(v)) for k, v in (x.split(":") for x in spec.split(","))]
    sizes = [size for kind, size in runs if kind == "instructions"]
    if sizes:
        t0 = time.perf_counter()
        filtered_pool(max(sizes), Path(args.cache), data)
        print(f"instruction pool: {time.perf_counter() - t0:.0f} s to load or build", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {version: dict(os.environ) for version in ("before", "after")}
        if args.before:
            from revisions import package_at

            env["before"]["SELFINSTRUCT_CODE"] = str(package_at(args.before, Path(tmp) / "before-code"))
        for kind, size in runs:
            ref = Path(tmp) / f"ref-{kind}-{size}.json"
            for round_, version in [(r, v) for r in range(1, args.rounds + 1) for v in args.versions.split(",")]:
                cmd = [sys.executable, __file__, "--child", kind, str(size), version, str(ref),
                       "--cache", args.cache, "--data", str(data), "--queries", str(args.queries),
                       "--brute", str(args.brute), *(["--before", args.before] if args.before else [])]  # fmt: skip
                # In the code's own directory: the package imported is that one (see SELFINSTRUCT_CODE).
                cwd = env[version].get("SELFINSTRUCT_CODE", str(ROOT))
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env[version], cwd=cwd).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                if args.rounds > 1:
                    rows[-1]["version"] = f"{version}, round {round_}"
                print(f"done {kind} {size:,} {rows[-1]['version']}", file=sys.stderr, flush=True)
    report(rows)


if __name__ == "__main__":
    main()
