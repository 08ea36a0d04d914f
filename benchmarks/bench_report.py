#!/usr/bin/env python3
"""Benchmark ``selfinstruct report``: file size, page load and search in headless Chromium.

Builds synthetic run directories that look like real ones: instructions are an opening frame
("Write a", "Generate a list of", "Classify the following", ...) plus a real English sentence
(``shared/data/english_sentences.jsonl``), outputs and inputs are real sentences, rejections
have realistic reasons, near-duplicates are word-level edits of an earlier task with their true
ROUGE-L F (rouge-score's tokenizer, LCS by rapidfuzz), the accept rate falls as the run goes
on, and requests.jsonl spreads the requests over three endpoints and a few hours.

Single file (per size): report build time, file size, time from navigation to the first list on
screen, and search latency (keystroke to updated list, including the page's 120 ms debounce).
--serve (one size): time from starting ``selfinstruct report --serve`` to the first page in the
browser, time until the whole run is read, server RSS, and search latency at the API and in the
browser. Screenshots of every tab can be written at one size (--screenshots DIR).

Needs Debian's chromium and the playwright package (never ``playwright install``)::

    python3 benchmarks/bench_report.py --sizes 10k,52k --serve-size 1M --screenshots docs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rapidfuzz.distance import LCSseq  # noqa: E402

from selfinstruct.records import AcceptedTask, Rejection, RequestRecord  # noqa: E402
from selfinstruct.seeds import load_seed_tasks  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "english_sentences.jsonl"
SEED = 20240611
THRESHOLD = 0.7
FRAMES = [
    "Write a short story about", "Write a poem about", "Generate a list of ideas for", "Classify the following sentence:",
    "Explain why", "Summarize the following text:", "Rewrite the following sentence in a formal tone:",
    "Give three examples of", "Describe", "Create a headline for", "Translate into French:", "What is the main idea of:",
    "Identify the subject of the sentence:", "Generate a question about", "Find the error in the sentence:",
    "Suggest a title for an article about", "Compose a tweet about", "Write a product description for",
    "Give advice to someone who says:", "Is the following statement true or false?", "Paraphrase:",
    "List the nouns in:", "Come up with a slogan for", "Explain to a child:", "Edit the sentence for clarity:",
]  # fmt: skip
FILLERS = ["please", "briefly", "quickly", "clearly", "simply", "now", "carefully"]
REASONS = [  # (reason, weight, detail) besides near_duplicate
    ("too_short", 6, "2 words"), ("too_long", 5, "163 words"), ("blacklisted_word", 4, "contains 'image'"),
    ("write_a_program", 2, "asks for a program"), ("starts_with_punctuation", 1, "starts with '-'"),
    ("non_ascii_start", 1, "starts with a non-ASCII character"), ("empty_output", 3, "the output is empty"),
]  # fmt: skip
ENDPOINTS = ["http://gpu0:8000/v1", "http://gpu1:8000/v1", "http://gpu2:8000/v1"]
_TOKEN = re.compile(r"[a-z0-9]+")


def load_sentences(path: Path) -> list[str]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["instruction"].replace("<|endoftext|>", "").strip()
            if 4 <= len(text.split()) <= 60:
                out.append(text)
    return out


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F as rouge-score computes it (its default tokenizer, no stemming)."""
    ta, tb = _TOKEN.findall(a.lower()), _TOKEN.findall(b.lower())
    if not ta or not tb:
        return 0.0
    lcs = LCSseq.similarity(ta, tb)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(tb), lcs / len(ta)
    return 2 * p * r / (p + r)


def paraphrase(rng: random.Random, text: str) -> str:
    """A near-copy: one or two word-level edits."""
    words = text.split()
    for _ in range(rng.choice((1, 1, 2))):
        i = rng.randrange(1, max(2, len(words)))
        op = rng.random()
        if op < 0.4:
            words.insert(i, rng.choice(FILLERS))
        elif op < 0.7 and len(words) > 4:
            del words[min(i, len(words) - 1)]
        else:
            words[min(i, len(words) - 1)] = rng.choice(FILLERS)
    return " ".join(words)


def make_run(directory: Path, n_accepted: int, *, seed: int = SEED, data: Path = DEFAULT_DATA) -> Path:
    """Write a synthetic, valid run directory with ``n_accepted`` tasks (see the module docstring)."""
    rng = random.Random(seed)
    sentences = load_sentences(data)
    seeds = load_seed_tasks()
    directory.mkdir(parents=True, exist_ok=True)
    start = datetime(2025, 3, 1, 8, 0, 0, tzinfo=timezone.utc)
    settings = "3f9c2a71d04be6a8"
    by_frame: dict[str, list[int]] = {}
    instructions: list[str] = []
    ids: list[str] = []
    request = 0
    seconds = 0.0
    accepted_n = 0
    with (directory / "instructions.jsonl").open("w", encoding="utf-8") as acc_fh, (
        directory / "rejected.jsonl"
    ).open("w", encoding="utf-8") as rej_fh, (directory / "requests.jsonl").open("w", encoding="utf-8") as req_fh:
        while accepted_n < n_accepted:
            endpoint = rng.choices(range(3), weights=(5, 4, 3))[0]
            seconds += rng.expovariate(1.0)  # about one answer a second: a 52k run takes two hours
            now = (start + timedelta(seconds=seconds)).isoformat(timespec="seconds").replace("+00:00", "Z")
            # gpu2 drops out for a while in the middle of the run: failures, then it recovers.
            progress = accepted_n / n_accepted
            if endpoint == 2 and 0.45 < progress < 0.52 and rng.random() < 0.8:
                req_fh.write(json.dumps(RequestRecord(request=request, outcome="failed", endpoint=ENDPOINTS[2], error="timeout",
                                                      detail="no answer in 600 s", created=now, settings=settings).to_json()) + "\n")  # fmt: skip
                request += 1
                continue
            candidates = rng.randint(8, 16)
            accept_p = 0.85 - 0.5 * progress  # the pool fills up: more near-duplicates later
            lines_acc, lines_rej = [], []
            for _ in range(candidates):
                if accepted_n + len(lines_acc) >= n_accepted:
                    break
                if rng.random() < accept_p:
                    frame = rng.choice(FRAMES)
                    text = f"{frame} {rng.choice(sentences)}"
                    task_id = f"task-{accepted_n + len(lines_acc):06d}"
                    # Nearest: an earlier task with the same opening (or a seed early on).
                    pool = by_frame.get(frame)
                    if pool and rng.random() < 0.9:
                        k = rng.choice(pool[-200:])
                        near_text, near_id = instructions[k], ids[k]
                    else:
                        s = rng.choice(seeds)
                        near_text, near_id = s.instruction, s.id
                    task_input = "" if rng.random() < 0.4 else " ".join(rng.sample(sentences, rng.randint(1, 2)))
                    output = " ".join(rng.sample(sentences, rng.randint(1, 5)))
                    lines_acc.append(AcceptedTask(
                        id=task_id, instruction=text, input=task_input, output=output, request=request,
                        most_similar_instruction=near_text, rouge_l=min(rouge_l(text, near_text), THRESHOLD),
                        nearest_id=near_id, model="Llama-3.1-8B-Instruct", endpoint=ENDPOINTS[endpoint],
                        finish_reason="stop", created=now, settings=settings,
                    ))  # fmt: skip
                    by_frame.setdefault(frame, []).append(len(instructions))
                    instructions.append(text)
                    ids.append(task_id)
                elif instructions and rng.random() < 0.75:  # most rejections are near-duplicates
                    k = rng.randrange(max(0, len(instructions) - 5000), len(instructions))
                    text = paraphrase(rng, instructions[k])
                    score = rouge_l(text, instructions[k])
                    if score <= THRESHOLD:
                        text, score = instructions[k], 1.0
                    detail = "the same instruction is already in the pool" if text == instructions[k] else f"ROUGE-L {score:.3f} > {THRESHOLD}"
                    lines_rej.append(Rejection(
                        reason="near_duplicate", detail=detail, instruction=text, input="",
                        output=" ".join(rng.sample(sentences, rng.randint(1, 3))), request=request, rouge_l=score,
                        most_similar_instruction=instructions[k], nearest_id=ids[k], created=now, settings=settings,
                    ))  # fmt: skip
                else:
                    reason, _, detail = rng.choices(REASONS, weights=[w for _, w, _ in REASONS])[0]
                    words = rng.choice(sentences).split()
                    text = " ".join(words[:2]) if reason == "too_short" else f"{rng.choice(FRAMES)} {' '.join(words)}"
                    if reason == "too_long":
                        text = " ".join(rng.sample(sentences, 8))
                    lines_rej.append(Rejection(
                        reason=reason, detail=detail, instruction=text, input="",
                        output="" if reason == "empty_output" else rng.choice(sentences), request=request,
                        created=now, settings=settings,
                    ))  # fmt: skip
            if rng.random() < 0.01:
                lines_rej.append(Rejection(reason="unparseable", detail="no task found in the answer (finish_reason length)",
                                           instruction="", input="", output=rng.choice(sentences) * 3, request=request,
                                           created=now, settings=settings))  # fmt: skip
            completion = rng.randint(900, 2400)
            latency = {0: 6.0, 1: 8.0, 2: 11.0}[endpoint] * rng.uniform(0.7, 1.5)
            req_fh.write(json.dumps(RequestRecord(
                request=request, outcome="answered", endpoint=ENDPOINTS[endpoint], finish_reason="stop",
                prompt_tokens=rng.randint(500, 700), completion_tokens=completion, candidates=candidates,
                latency=latency, created=now, settings=settings,
            ).to_json()) + "\n")  # fmt: skip
            for r in lines_rej:
                rej_fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            for a in lines_acc:
                acc_fh.write(json.dumps(a.to_json(), ensure_ascii=False) + "\n")
            accepted_n += len(lines_acc)
            request += 1
    run = {
        "schema": 2, "status": "done", "target": n_accepted, "elapsed_seconds": seconds,
        "generation": {"model": "Llama-3.1-8B-Instruct", "similarity_threshold": THRESHOLD},
    }  # fmt: skip
    (directory / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return directory


def _size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(float(text[:-1]) * 1_000_000) if text.endswith("m") else int(text)


def _run_dir(work: Path, n: int) -> Path:
    directory = work / f"run-{n}"
    if not (directory / "run.json").exists():
        t = time.perf_counter()
        shutil.rmtree(directory, ignore_errors=True)
        make_run(directory, n)
        print(f"  made {directory} in {time.perf_counter() - t:.0f} s", flush=True)
    return directory


def _browser(playwright: Any) -> Any:
    executable = shutil.which(os.environ.get("CHROMIUM", "")) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=executable, args=["--disable-gpu", "--no-sandbox"])


def _wait_ready(page: Any, timeout: float = 300_000) -> None:
    # Selector waits: the page's CSP (rightly) refuses the eval that wait_for_function uses.
    page.wait_for_selector('body[data-ready="1"]', state="attached", timeout=timeout)


def _search(page: Any, text: str, view: str = "accepted") -> tuple[float, str, str | None]:
    """Type a query into a tab's search box: seconds until its row count changed (including the
    page's 120 ms debounce), that count, and the page's own time for the query and first render."""
    box = page.locator(f"section[data-tab={view}] input[type=search]")
    total = page.locator(f"section[data-tab={view}] .total")
    from playwright.sync_api import expect

    before = total.text_content() or ""
    t = time.perf_counter()
    box.fill(text)
    expect(total).not_to_have_text(before, timeout=300_000)
    return time.perf_counter() - t, total.text_content() or "", page.locator("body").get_attribute("data-query-ms")


def bench_file(work: Path, n: int, browser: Any, screenshots: Path | None) -> dict[str, Any]:
    from selfinstruct.report import write_report

    directory = _run_dir(work, n)
    html = work / f"report-{n}.html"
    t = time.perf_counter()
    counts = write_report(directory, html)
    build = time.perf_counter() - t
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    t = time.perf_counter()
    page.goto(html.as_uri(), wait_until="commit", timeout=300_000)
    _wait_ready(page)
    load = time.perf_counter() - t
    heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
    rows_in_dom = page.evaluate("document.querySelectorAll('.row').length")
    searches = []
    for query in ("climate", "write a poem", '"the main idea"', "zzqx-nothing"):
        seconds, shown, in_page = _search(page, query)
        searches.append((query, round(seconds * 1000), in_page, shown))
    page.locator("section[data-tab=accepted] input[type=search]").fill("")
    result = {
        "size": n, "accepted": counts["accepted"], "rejected": f"{counts['rejected']}/{counts['rejected_total']}",
        "file_mb": round(counts["bytes"] / 1e6, 1), "build_s": round(build, 2), "load_s": round(load, 2),
        "heap_mb": round(heap / 1e6) if heap else None, "rows_in_dom": rows_in_dom,
        "search_ms [query, keystroke to list, in page, rows]": searches,
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    if screenshots:
        _screenshots(page, screenshots)
    page.close()
    return result


def _screenshots(page: Any, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    page.evaluate("location.hash = 'tab-accepted'")
    page.locator("section[data-tab=accepted] input[type=search]").fill("climate")
    page.wait_for_timeout(400)
    page.locator("section[data-tab=accepted] .row").nth(2).click()
    page.wait_for_timeout(300)
    page.screenshot(path=str(dest / "report-accepted.png"))
    page.evaluate("location.hash = 'tab-rejected'")
    page.wait_for_timeout(300)
    page.locator(".facet[data-reason=too_long]").click()
    page.wait_for_timeout(300)
    page.locator("section[data-tab=rejected] .row").nth(1).click()
    page.wait_for_timeout(300)
    page.screenshot(path=str(dest / "report-rejected.png"))
    page.evaluate("location.hash = 'tab-near'")
    page.wait_for_timeout(500)
    page.locator("section[data-tab=near] .row").nth(8).click()
    page.wait_for_timeout(300)
    page.screenshot(path=str(dest / "report-near-duplicates.png"))
    page.evaluate("location.hash = 'tab-run'")
    page.wait_for_timeout(800)
    page.screenshot(path=str(dest / "report-run.png"), full_page=False)
    page.set_viewport_size({"width": 1440, "height": 2200})
    page.wait_for_timeout(300)
    page.screenshot(path=str(dest / "report-run-full.png"))
    page.set_viewport_size({"width": 1440, "height": 900})
    print(f"  screenshots in {dest}", flush=True)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def bench_serve(work: Path, n: int, browser: Any) -> dict[str, Any]:
    directory = _run_dir(work, n)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfinstruct", "report", str(directory), "--serve", "--port", "0"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if not match:
            raise RuntimeError(f"no URL from the server: {line!r}")
        url = match.group(1)
        listening = time.perf_counter() - t0
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url, wait_until="commit")
        _wait_ready(page)
        first_page = time.perf_counter() - t0
        first_rows = page.evaluate("document.querySelector('section[data-tab=accepted] .total').textContent")
        while json.load(urllib.request.urlopen(url + "api/meta"))["loading"]:
            time.sleep(0.2)  # the benchmark waits for the loader; nothing asserts on time here
        loaded = time.perf_counter() - t0
        rss = _rss_mb(proc.pid)
        api = []
        for query in ("climate", "write a poem", '"the main idea"', "zzqx-nothing"):
            q = urllib.parse.quote(query)
            t = time.perf_counter()
            answer = json.load(urllib.request.urlopen(f"{url}api/list?view=accepted&q={q}&limit=200"))
            api.append((query, round((time.perf_counter() - t) * 1000), answer["total"]))
        t = time.perf_counter()
        json.load(urllib.request.urlopen(f"{url}api/list?view=accepted&sort=ow&desc=1&limit=200"))
        sort_ms = round((time.perf_counter() - t) * 1000)
        page.reload(wait_until="commit")
        _wait_ready(page)
        browser_search = []
        for query in ("climate", "write a poem poetry"):
            seconds, shown, in_page = _search(page, query)
            browser_search.append((query, round(seconds * 1000), in_page, shown))
        page.close()
        return {
            "size": n, "listening_s": round(listening, 2), "first_page_s": round(first_page, 2),
            "first_page_rows": first_rows, "fully_read_s": round(loaded, 1), "server_rss_mb": round(rss),
            "api_search_ms": api, "api_sort_ms": sort_ms, "browser_search_ms": browser_search,
        }  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10k,52k", help="single-file sizes (accepted tasks)")
    ap.add_argument("--serve-size", default="1M", help="--serve size ('' to skip)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-report"), help="where the synthetic runs go (kept)")
    ap.add_argument("--screenshots", type=Path, help="write PNGs of each tab at the largest single-file size here")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [_size(s) for s in args.sizes.split(",") if s]
    with sync_playwright() as pw:
        browser = _browser(pw)
        # Other work on the machine skews every number here: say how busy it was.
        print(f"chromium {browser.version}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        for n in sizes:
            shots = args.screenshots if args.screenshots and n == max(sizes) else None
            bench_file(args.work, n, browser, shots)
        if args.serve_size:
            print(json.dumps(bench_serve(args.work, _size(args.serve_size), browser)), flush=True)
        browser.close()
        print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
