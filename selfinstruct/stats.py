"""Numbers and charts that describe a run directory: yield, lengths, similarity and diversity.

``compute_stats`` reads the files only (it never takes the run's lock), so it works while a
``generate`` is still writing; ``format_stats`` prints them, ``plot_stats`` draws PNG charts.

Diversity is measured cheaply by the first word and the first two words of each instruction,
a stand-in for the verb/noun analysis of the Self-Instruct paper (which needs a parser).
"""

from __future__ import annotations

import logging
import math
import os
import re
import string
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, SelfInstructError, StoreError
from .records import CHECKS, Judgment
from .store import (
    JUDGMENTS_FILE,
    read_accepted,
    read_judges,
    read_judgments,
    read_rejections,
    read_run,
    scan_counters,
)

__all__ = [
    "DEFAULT_ROUGE_THRESHOLD",
    "ROUGE_BINS",
    "compute_stats",
    "correlation",
    "first_verdicts",
    "format_stats",
    "judge_order",
    "judge_section",
    "judge_summary",
    "plot_stats",
    "task_output_words",
]

DEFAULT_ROUGE_THRESHOLD = 0.7
# Histogram of ROUGE-L to the nearest task: [0.0, 0.1), ..., [0.6, 0.7); anything higher is "over".
ROUGE_BINS: tuple[tuple[float, float], ...] = tuple((i / 10, (i + 1) / 10) for i in range(7))
TOP_N = 20
# Answers that never became a candidate; they do not count towards the accept rate.
# Where run.json's generation settings keep the similarity threshold (first match wins).
_THRESHOLD_KEYS = ("similarity_threshold", "rouge_threshold")
_STRIP = string.punctuation + "\u201c\u201d\u2018\u2019"


def _words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _lead(text: Any, n: int) -> str | None:
    """The first ``n`` words, lower-cased and without surrounding punctuation; None if too short."""
    if not isinstance(text, str):
        return None
    words = [w.strip(_STRIP).lower() for w in text.split()]
    words = [w for w in words if w]
    return " ".join(words[:n]) if len(words) >= n else None


def _percentiles(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    # numpy's default (linear interpolation between closest ranks).
    p5, p50, p95 = np.percentile(np.asarray(values, dtype=float), [5, 50, 95])
    return {
        "count": len(values),
        "min": float(min(values)),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
        "max": float(max(values)),
        "mean": float(sum(values) / len(values)),
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _threshold(config: dict[str, Any]) -> float:
    for key in _THRESHOLD_KEYS:
        value = _number(config.get(key))
        if value is not None and 0 < value <= 1:
            return value
    return DEFAULT_ROUGE_THRESHOLD


def _rouge_values(records: list[dict[str, Any]]) -> list[float]:
    values = (_number(r.get("rouge_l")) for r in records)
    return [v for v in values if v is not None]


def _near_duplicate_scores(rejected: list[dict[str, Any]]) -> list[float]:
    return _rouge_values([r for r in rejected if r.get("reason") == "near_duplicate"])


def _rouge_histogram(values: list[float]) -> tuple[list[dict[str, Any]], int]:
    counts = [0] * len(ROUGE_BINS)
    over = 0
    for value in values:
        # The epsilon puts a score that is 0.2 on paper but 0.19999999999999998 in floats in [0.2, 0.3).
        index = max(0, math.floor(value * 10 + 1e-9))
        if index < len(counts):
            counts[index] += 1
        else:
            over += 1
    bins = [{"low": low, "high": high, "count": c} for (low, high), c in zip(ROUGE_BINS, counts)]
    return bins, over


def _top(counter: Counter[str], n: int = TOP_N) -> list[tuple[str, int]]:
    # Ties broken alphabetically so the report is stable from run to run.
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:n]


def compute_stats(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a run directory; see the module docstring. Unknown numbers are ``None``.

    Keys: counts (``accepted``, ``candidates``, ``accept_rate``, ``rejected`` total and
    ``rejected_by_reason``), ``with_input``/``without_input``, ``words`` (percentiles of
    instruction/input/output word counts; input only over tasks that have one), ``rouge_l``
    (histogram of accepted tasks' similarity to their nearest earlier task), ``leading_words``
    and ``leading_bigrams``, ``tokens``, ``elapsed_seconds`` and ``tasks_per_minute``;
    ``self_instruct`` for a self-instruct run and ``judge`` once it was judged (see
    :func:`judge_section`: ``current`` fingerprint and one :func:`judge_summary` per judge).
    The result is plain JSON-compatible data.
    """
    return _compute(Path(out_dir))[0]


def _compute(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The stats plus the accepted and rejected records they were computed from."""
    accepted = read_accepted(directory)
    run = read_run(directory)
    # The generation settings: "generation" as the runner writes it, "config" in older layouts.
    config: dict[str, Any] = next((run[k] for k in ("generation", "config") if isinstance(run.get(k), dict)), {})
    # Counted from the files: run.json lags them after a crash.
    totals = scan_counters(directory)
    rejected_records = [r.to_json() for r in read_rejections(directory)]
    by_reason: Counter[str] = Counter(totals.rejected)
    rejected_source = "rejected.jsonl"
    rejected_total = sum(by_reason.values())
    n_accepted = len(accepted)
    candidates: int | None = totals.candidates
    candidates_source = "files"
    accept_rate = n_accepted / candidates if candidates else None
    counters: dict[str, Any] = totals.to_json()
    if not totals.requests:
        counters = {k: None for k in ("requests", "failed_requests", "answers", "prompt_tokens", "completion_tokens")}

    with_input = sum(1 for r in accepted if isinstance(r.get("input"), str) and r["input"].strip())

    words = {
        "instruction": _percentiles([_words(r.get("instruction")) for r in accepted]),
        "input": _percentiles(
            [_words(r["input"]) for r in accepted if isinstance(r.get("input"), str) and r["input"].strip()]
        ),
        "output": _percentiles([_words(r.get("output")) for r in accepted]),
    }

    rouge = _rouge_values(accepted)
    bins, over = _rouge_histogram(rouge)
    rejected_rouge = _near_duplicate_scores(rejected_records)

    first = Counter(w for w in (_lead(r.get("instruction"), 1) for r in accepted) if w)
    pairs = Counter(w for w in (_lead(r.get("instruction"), 2) for r in accepted) if w)

    prompt_tokens = _int(counters.get("prompt_tokens"))
    completion_tokens = _int(counters.get("completion_tokens"))
    total_tokens = (
        (prompt_tokens or 0) + (completion_tokens or 0)
        if prompt_tokens is not None or completion_tokens is not None
        else None
    )
    elapsed = _number(run.get("elapsed_seconds"))

    stats = {
        "out_dir": str(directory),
        "status": run.get("status"),
        "model": config.get("model"),
        "requests": _int(counters.get("requests")),
        "failed_requests": _int(counters.get("failed_requests")),
        "answers": _int(counters.get("answers")),
        "accepted": n_accepted,
        "target": _int(run.get("target")),
        "candidates": candidates,
        "candidates_source": candidates_source,
        "accept_rate": accept_rate,
        "rejected": rejected_total,
        "rejected_by_reason": dict(_top(by_reason, n=len(by_reason))),
        "rejected_source": rejected_source,
        "with_input": with_input,
        "without_input": n_accepted - with_input,
        "words": words,
        "rouge_l": {
            "threshold": _threshold(config),
            "count": len(rouge),
            "mean": sum(rouge) / len(rouge) if rouge else None,
            "bins": bins,
            "over": over,
            "rejected_near_duplicates_scored": len(rejected_rouge),
        },
        "leading_words": {"distinct": len(first), "top": _top(first)},
        "leading_bigrams": {"distinct": len(pairs), "top": _top(pairs)},
        "tokens": {
            "prompt": prompt_tokens,
            "completion": completion_tokens,
            "total": total_tokens,
            "per_accepted": total_tokens / n_accepted if total_tokens is not None and n_accepted else None,
        },
        "elapsed_seconds": elapsed,
        "tasks_per_minute": n_accepted / (elapsed / 60) if elapsed else None,
    }
    si = _self_instruct_stats(directory, run, rejected_records)
    if si is not None:
        stats["self_instruct"] = si
    judge = _judge_stats(directory, accepted)
    if judge is not None:
        stats["judge"] = judge
    return stats, accepted, rejected_records


def _self_instruct_stats(directory: Path, run: dict[str, Any], rejected: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Self-Instruct paper's overview table for a ``--method self-instruct`` run."""
    from .store import TASKS_FILE, read_self_instruct_tasks

    if not (directory / TASKS_FILE).exists():
        return None
    tasks = read_self_instruct_tasks(directory)
    instances = [pair for t in tasks for pair in t.instances]
    decided = [t for t in tasks if t.is_classification is not None]
    by_stage: dict[str, Counter[str]] = {}
    for r in rejected:
        by_stage.setdefault(str(r.get("stage") or "instruction"), Counter())[str(r.get("reason"))] += 1

    def mean(values: list[int]) -> float | None:
        return sum(values) / len(values) if values else None

    rouge = _seed_rouge(run, [t.instruction for t in tasks])
    bins, over = _rouge_histogram(rouge)
    return {
        "instructions": len(tasks),
        "with_instances": sum(1 for t in tasks if t.instances),
        "classification": sum(1 for t in decided if t.is_classification),
        "classification_share": sum(1 for t in decided if t.is_classification) / len(decided) if decided else None,
        "instances": len(instances),
        "instances_empty_input": sum(1 for i, _ in instances if not i.strip()),
        "instances_per_task": len(instances) / len(tasks) if tasks else None,
        "mean_words": {
            "instruction": mean([_words(t.instruction) for t in tasks]),
            "input": mean([_words(i) for i, _ in instances if i.strip()]),
            "output": mean([_words(o) for _, o in instances]),
        },
        "no_instance_reasons": dict(Counter(t.reason for t in tasks if t.reason).most_common()),
        "rejections_by_stage": {stage: dict(c.most_common()) for stage, c in sorted(by_stage.items())},
        "rouge_l_to_nearest_seed": {"count": len(rouge), "bins": bins, "over": over},
    }


def _seed_rouge(run: dict[str, Any], instructions: list[str]) -> list[float]:
    """ROUGE-L of each instruction against its nearest seed (the seed file the run names, if readable)."""
    from .seeds import load_seed_tasks
    from .similarity import RougeLIndex

    session = run.get("session") if isinstance(run.get("session"), dict) else {}
    source = session.get("seed_tasks") if isinstance(session, dict) else None
    try:
        seeds = load_seed_tasks(None if source in (None, "bundled") else source)
    except SelfInstructError:
        return []
    tokenizer = (run.get("generation") or {}).get("tokenizer", "rouge")
    index = RougeLIndex(tokenizer=tokenizer if tokenizer in ("rouge", "unicode") else "rouge")
    index.extend(t.instruction for t in seeds)
    return [index.nearest(text)[0] for text in instructions]


# ---------------------------------------------------------------- judge


SCORE_LEVELS = (1, 2, 3, 4, 5)


def first_verdicts(judgments: Iterable[Judgment], fingerprint: str) -> dict[tuple[str, int | None], Judgment]:
    """The judged record of each task under one judge: the first "judged" line wins.

    Unjudged attempts are never a verdict, whatever comes after them.
    """
    verdicts: dict[tuple[str, int | None], Judgment] = {}
    for j in judgments:
        if j.judge == fingerprint and j.status == "judged" and j.key not in verdicts:
            verdicts[j.key] = j
    return verdicts


def judge_order(judgments: Sequence[Judgment], judges: Sequence[dict[str, Any]]) -> list[str]:
    """Fingerprints that have judgments, the current judge first.

    The current judge is the last one registered in judges.json that has any judgment (the last
    one seen in judgments.jsonl when judges.json does not name it); the others follow, newest first.
    """
    seen: dict[str, int] = {}
    for n, j in enumerate(judgments):
        seen[j.judge] = n  # last appearance
    registered = [h["fingerprint"] for h in judges if h.get("fingerprint") in seen]
    unregistered = sorted((fp for fp in seen if fp not in registered), key=lambda fp: -seen[fp])
    # Registered judges in registration order are oldest first; newest first reads better.
    return registered[::-1] + unregistered


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span (as Spearman's rho needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=float)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if denominator == 0:
        return None  # one side is constant: no correlation to speak of
    return float((dx * dy).sum()) / denominator


def correlation(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman correlation of two equal-length series; None below 3 points or without spread."""
    n = len(xs)
    result: dict[str, Any] = {"n": n, "pearson": None, "spearman": None}
    if n < 3:
        return result
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    result["pearson"] = _pearson(x, y)
    result["spearman"] = _pearson(_ranks(x), _ranks(y))
    return result


def judge_summary(
    fingerprint: str,
    judgments: Sequence[Judgment],
    output_words: Mapping[tuple[str, int | None], int],
    registered: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The numbers of one judge over a run's tasks (``output_words``: each task key's output length)."""
    mine = [j for j in judgments if j.judge == fingerprint]
    verdicts = first_verdicts(mine, fingerprint)
    tried = {j.key for j in mine}
    tasks = set(output_words)
    judged = [v for k, v in verdicts.items() if k in tasks]
    unjudged = len((tried - set(verdicts)) & tasks)
    attempts = len(mine)
    failed_attempts = sum(1 for j in mine if j.status == "unjudged")
    settings = (registered or {}).get("settings") or {}
    model = settings.get("model") or next((j.model for j in mine if j.model), None)
    scores = Counter(v.overall for v in judged)
    n = len(judged)
    prompt = sum(j.prompt_tokens for j in mine)
    completion = sum(j.completion_tokens for j in mine)
    pass_rates = {c: sum(1 for v in judged if v.passed(c)) / n if n else None for c in CHECKS}
    all_pass = sum(1 for v in judged if all(v.passed(c) for c in CHECKS)) / n if n else None
    # Error texts can quote the answer: cut them so the commonest ones group and print on a line.
    errors = Counter((j.error or "unknown")[:60] for j in mine if j.status == "unjudged")
    return {
        "fingerprint": fingerprint,
        "model": model,
        "rubric": settings.get("rubric"),
        "prompt_version": settings.get("prompt_version"),
        "temperature": _number(settings.get("temperature")),
        "since": (registered or {}).get("since"),
        "tasks": len(tasks),
        "judged": n,
        "unjudged": unjudged,
        "not_tried": len(tasks - tried),
        # Judgments of keys the run does not have (a task file rewritten since): counted apart.
        "unknown_tasks": len({j.key for j in mine} - tasks),
        "attempts": attempts,
        "unjudged_attempts": failed_attempts,
        "parse_failure_rate": failed_attempts / attempts if attempts else None,
        "unjudged_reasons": dict(_top(errors, n=5)),
        "parse": dict(_top(Counter(v.parse or "unknown" for v in judged), n=10)),
        "coerced": sum(1 for v in judged if v.coerced),
        "scores": {str(level): scores.get(level, 0) for level in SCORE_LEVELS},
        "mean_overall": sum(v.overall or 0 for v in judged) / n if n else None,
        "pass_rates": pass_rates,
        "all_pass_rate": all_pass,
        "tokens": {
            "prompt": prompt,
            "completion": completion,
            "total": prompt + completion,
            "per_judged": (prompt + completion) / n if n else None,
        },
        "length_bias": correlation(
            [float(v.overall or 0) for v in judged], [float(output_words[v.key]) for v in judged]
        ),
    }


def judge_section(
    judgments: Sequence[Judgment],
    judges: Sequence[dict[str, Any]],
    output_words: Mapping[tuple[str, int | None], int],
) -> dict[str, Any] | None:
    """Every judge with judgments, current first (None when the run was never judged)."""
    order = judge_order(judgments, judges)
    if not order:
        return None
    by_fp = {h["fingerprint"]: h for h in judges}
    return {
        "current": order[0],
        "judges": [judge_summary(fp, judgments, output_words, by_fp.get(fp)) for fp in order],
    }


def task_output_words(directory: Path, accepted: list[dict[str, Any]] | None = None) -> dict[tuple[str, int | None], int]:
    """Output length in words of every judgeable task key of a run.

    A self-instruct run (``tasks.jsonl``) is judged per instance, an Alpaca run per task.
    """
    from .store import TASKS_FILE, read_self_instruct_tasks

    if (directory / TASKS_FILE).exists():
        return {(t.id, i): _words(o) for t in read_self_instruct_tasks(directory) for i, (_, o) in enumerate(t.instances)}
    records = accepted if accepted is not None else read_accepted(directory)
    return {(r["id"], None): _words(r.get("output")) for r in records if isinstance(r.get("id"), str)}


def _judge_stats(directory: Path, accepted: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not (directory / JUDGMENTS_FILE).exists():
        return None
    judgments = read_judgments(directory)
    if not judgments:
        return None
    return judge_section(judgments, read_judges(directory), task_output_words(directory, accepted))


# ---------------------------------------------------------------- text report


def _fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _fmt_num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.{digits}f}"


def _fmt_pct(part: int, whole: int | None) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _table(rows: list[list[str]], indent: int = 2, align: str = "l") -> list[str]:
    """Align columns; ``align`` has one letter per column (``l``/``r``), the last one repeats."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if align[min(i, len(align) - 1)] == "r" else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append((" " * indent + "  ".join(cells)).rstrip())
    return lines


def _bar(count: int, largest: int, width: int = 30) -> str:
    return "#" * max(1 if count else 0, round(width * count / largest)) if largest else ""


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text report of ``compute_stats`` output, with aligned columns, for the terminal."""
    accepted = stats["accepted"]
    lines = [f"Run directory: {stats['out_dir']}"]
    header = [["status", str(stats.get("status") or "-")]]
    if stats.get("model"):
        header.append(["model", str(stats["model"])])
    rate = stats["accept_rate"]
    estimated = stats["candidates_source"] not in ("run.json", "files")
    requests = _fmt_int(stats.get("requests"))
    if stats.get("failed_requests") is not None:
        requests += f" ({stats['failed_requests']:,} failed)"
    accepted_text = _fmt_int(accepted)
    if stats.get("target"):
        accepted_text += f" of {stats['target']:,}"
    if rate is not None:
        accepted_text += f" (accept rate {100 * rate:.1f}%)"
    header += [
        ["requests", requests],
        ["candidates", _fmt_int(stats["candidates"]) + (" (estimated)" if estimated else "")],
        ["accepted", accepted_text],
        ["rejected", _fmt_int(stats["rejected"])],
    ]
    lines += _table(header, indent=0)

    if stats["rejected_by_reason"]:
        lines += ["", f"Rejections by reason (from {stats['rejected_source']})"]
        lines += _table(
            [[reason, _fmt_int(count), _fmt_pct(count, stats["rejected"])]
             for reason, count in stats["rejected_by_reason"].items()],
            align="lr",
        )  # fmt: skip

    lines += ["", "Inputs"]
    lines += _table(
        [
            ["with input", _fmt_int(stats["with_input"]), _fmt_pct(stats["with_input"], accepted)],
            ["without input", _fmt_int(stats["without_input"]), _fmt_pct(stats["without_input"], accepted)],
        ],
        align="lr",
    )

    lines += ["", "Length in words (input: tasks that have one)"]
    rows = [["", "tasks", "min", "p5", "p50", "p95", "max", "mean"]]
    for field, numbers in stats["words"].items():
        if numbers is None:
            rows.append([field, "0"] + ["-"] * 6)
        else:
            rows.append(
                [field, _fmt_int(numbers["count"]), _fmt_int(int(numbers["min"]))]
                + [f"{numbers[k]:,.1f}" for k in ("p5", "p50", "p95")]
                + [_fmt_int(int(numbers["max"])), f"{numbers['mean']:,.1f}"]
            )
    lines += _table(rows, align="lr")

    rouge = stats["rouge_l"]
    lines += [
        "",
        f"ROUGE-L to the nearest earlier task (accepted tasks with a score: {rouge['count']:,}, "
        f"mean {_fmt_num(rouge['mean'], 3)}, threshold {rouge['threshold']:g})",
    ]
    if rouge["count"]:
        largest = max([b["count"] for b in rouge["bins"]] + [rouge["over"]])
        rows = [[f"{b['low']:.1f}-{b['high']:.1f}", _fmt_int(b["count"]), _bar(b["count"], largest)]
                for b in rouge["bins"]]  # fmt: skip
        if rouge["over"]:
            rows.append([f">={ROUGE_BINS[-1][1]:.1f}", _fmt_int(rouge["over"]), _bar(rouge["over"], largest)])
        lines += _table(rows, align="lrl")

    for key, title in (("leading_words", "first words"), ("leading_bigrams", "first two words")):
        block = stats[key]
        lines += ["", f"Distinct {title}: {block['distinct']:,} (top {min(TOP_N, len(block['top']))})"]
        lines += _table(
            [[text, _fmt_int(count), _fmt_pct(count, accepted)] for text, count in block["top"]], align="lr"
        )

    si = stats.get("self_instruct")
    if si:
        lines += ["", "Self-Instruct"]
        rows = [
            ["instructions", _fmt_int(si["instructions"])],
            ["  with instances", _fmt_int(si["with_instances"])],
            ["  classification", f"{_fmt_int(si['classification'])} ({_fmt_pct(si['classification'], si['instructions'])})"],
            ["instances", _fmt_int(si["instances"])],
            ["  with empty input", _fmt_int(si["instances_empty_input"])],
            ["  per instruction", _fmt_num(si["instances_per_task"], 2)],
        ]
        for field, value in si["mean_words"].items():
            rows.append([f"mean {field} words", _fmt_num(value)])
        lines += _table(rows, align="lr")
        for stage, reasons in si["rejections_by_stage"].items():
            lines.append(f"  rejected at {stage}: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
        if si["no_instance_reasons"]:
            lines.append("  no instances: " + ", ".join(f"{k} {v}" for k, v in si["no_instance_reasons"].items()))
        seed = si["rouge_l_to_nearest_seed"]
        if seed["count"]:
            lines.append("  ROUGE-L to the nearest seed: " + " ".join(
                f"{b['low']:.1f}:{b['count']}" for b in seed["bins"]) + f" >=0.7:{seed['over']}")  # fmt: skip

    tokens = stats["tokens"]
    lines += ["", "Tokens"]
    lines += _table(
        [
            ["prompt", _fmt_int(tokens["prompt"])],
            ["completion", _fmt_int(tokens["completion"])],
            ["total", _fmt_int(tokens["total"])],
            ["per accepted task", _fmt_num(tokens["per_accepted"])],
        ],
        align="lr",
    )
    if stats["elapsed_seconds"] is not None:
        lines += ["", "Speed"]
        lines += _table(
            [
                ["elapsed", _fmt_duration(stats["elapsed_seconds"])],
                ["accepted tasks per minute", _fmt_num(stats["tasks_per_minute"], 2)],
            ],
            align="lr",
        )
    if stats.get("judge"):
        lines += _format_judge(stats["judge"], stats["out_dir"])
    return "\n".join(lines) + "\n"


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _fmt_corr(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _format_judge(section: dict[str, Any], out_dir: str) -> list[str]:
    lines: list[str] = []
    for summary in section["judges"]:
        current = summary["fingerprint"] == section["current"]
        what = ", ".join(
            f"{k.replace('_', ' ')} {summary[k]}" for k in ("model", "rubric", "prompt_version") if summary.get(k)
        )
        lines += ["", f"Judge {summary['fingerprint']}" + (f" ({what})" if what else "") + (" - current" if current else "")]
        tasks = summary["tasks"]
        attempts = f"{summary['attempts']:,}"
        if summary["unjudged_attempts"]:
            attempts += f" ({summary['unjudged_attempts']:,} unreadable: {_fmt_rate(summary['parse_failure_rate'])})"
        rows = [
            ["tasks", _fmt_int(tasks)],
            ["judged", f"{summary['judged']:,} ({_fmt_pct(summary['judged'], tasks)})"],
            ["unjudged", _fmt_int(summary["unjudged"])],
            ["not tried", _fmt_int(summary["not_tried"])],
            ["attempts", attempts],
        ]
        if summary["unknown_tasks"]:
            rows.append(["not in the run", _fmt_int(summary["unknown_tasks"])])
        lines += _table(rows, indent=2, align="l")
        if summary["judged"]:
            lines.append(f"  Overall score (mean {_fmt_num(summary['mean_overall'], 2)})")
            counts = summary["scores"]
            largest = max(counts.values())
            lines += _table(
                [[level, _fmt_int(c), _fmt_pct(c, summary["judged"]), _bar(c, largest)] for level, c in counts.items()],
                indent=4,
                align="lrrl",
            )
            lines.append("  Pass rates")
            rates = [[check, _fmt_rate(rate)] for check, rate in summary["pass_rates"].items()]
            rates.append(["all three", _fmt_rate(summary["all_pass_rate"])])
            lines += _table(rates, indent=4, align="lr")
            parse = ", ".join(f"{k} {v:,}" for k, v in summary["parse"].items())
            lines.append(f"  read as: {parse}; drift coerced in {summary['coerced']:,}")
            bias = summary["length_bias"]
            if bias["pearson"] is None and bias["spearman"] is None:
                lines.append("  score vs output words: - (needs 3 judged tasks with differing scores and lengths)")
            else:
                lines.append(
                    f"  score vs output words: Pearson {_fmt_corr(bias['pearson'])}, "
                    f"Spearman {_fmt_corr(bias['spearman'])} (n={bias['n']:,}; near 0 is no length bias)"
                )
        tokens = summary["tokens"]
        lines.append(
            f"  judge tokens: prompt {tokens['prompt']:,}, completion {tokens['completion']:,}, "
            f"per judged task {_fmt_num(tokens['per_judged'])}"
        )
        if summary["unjudged"]:
            reasons = ", ".join(f"{k} {v:,}" for k, v in summary["unjudged_reasons"].items())
            lines.append(
                f"  {summary['unjudged']:,} unjudged: run `selfinstruct judge {out_dir}` again to retry them"
                + (f" (unreadable answers: {reasons})" if reasons else "")
            )
    return lines


# ---------------------------------------------------------------- charts

_log = logging.getLogger("selfinstruct")

# Han ideographs, CJK punctuation, kana, Hangul, full-width forms: what DejaVu Sans has no glyph for.
_CJK_TEXT = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]"
)
# Font families with CJK glyphs, best first; the Debian package is in the comment.
_CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR",  # fonts-noto-cjk
    "Source Han Sans SC", "Source Han Sans CN", "Source Han Sans",
    "Noto Sans SC", "Noto Sans JP", "Noto Sans KR", "Noto Sans TC",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",  # fonts-wqy-zenhei, fonts-wqy-microhei
    "Droid Sans Fallback",  # fonts-droid-fallback
    "Noto Serif CJK SC", "Noto Serif CJK JP", "AR PL UMing CN", "AR PL UKai CN",
    "IPAexGothic", "IPAGothic", "TakaoGothic", "NanumGothic",
)  # fmt: skip
# File names of such fonts, for fonts installed after matplotlib built its font cache.
_CJK_FILES = re.compile(r"cjk|sourcehan|wqy|droidsansfallback|uming|ukai|ipaex?g|takao|nanum", re.IGNORECASE)
_CJK_FONT_PACKAGE = "fonts-noto-cjk"
_LABEL_CHARS = 40


def _cjk_fonts() -> list[tuple[str, str]]:
    """``(family, file)`` of the installed fonts with CJK glyphs that matplotlib can use, best first."""
    from matplotlib import font_manager

    manager = font_manager.fontManager

    def listed() -> list[tuple[str, str]]:
        files: dict[str, str] = {}
        for entry in manager.ttflist:
            files.setdefault(entry.name, entry.fname)
        return [(family, files[family]) for family in _CJK_FAMILIES if family in files]

    fonts = listed()
    if not fonts:
        # matplotlib caches its font list once; look for CJK fonts installed since then.
        cached = {entry.fname for entry in manager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in cached and _CJK_FILES.search(Path(path).name):
                try:
                    manager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue  # unreadable font file: try the others
        fonts = listed()
    return fonts


def _covered(path: str, chars: set[str]) -> set[str]:
    from matplotlib.ft2font import FT2Font

    try:
        charmap = FT2Font(path).get_charmap()
    except (OSError, RuntimeError, ValueError):
        return set()
    return {ch for ch in chars if ord(ch) in charmap}


def _font_settings(texts: list[str]) -> tuple[dict[Any, Any], bool]:  # keys: rcParams names
    """rcParams for charts showing ``texts`` (CJK fonts as fallbacks) and whether glyphs are missing.

    The usual font stays first, so Latin text looks as before; matplotlib takes each glyph it
    lacks from the next family in the list. Not every CJK font has every script (Droid Sans
    Fallback has no Hangul), so fonts are added until every character is covered.
    """
    missing = {ch for text in texts for ch in _CJK_TEXT.findall(text)}
    if not missing:
        return {}, False
    families: list[str] = []
    for family, path in _cjk_fonts():
        covered = _covered(path, missing)
        if covered:
            families.append(family)
            missing -= covered
        if not missing:
            break
    if missing:
        sample = "".join(sorted(missing)[:10])
        _log.warning(
            "no installed font has the characters %s, so the charts show empty boxes in their place; "
            "install one with Chinese/Japanese/Korean glyphs (Debian/Ubuntu: apt install %s) and draw them again",
            sample,
            _CJK_FONT_PACKAGE,
        )
    if not families:
        return {}, bool(missing)
    from matplotlib import rcParams

    return {"font.family": [*rcParams["font.family"], *families]}, bool(missing)


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "\u2026"


def _matplotlib() -> tuple[Any, Any]:
    """``(Figure, MaxNLocator)``, imported only when charts are drawn (the plots extra)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ConfigError('charts need matplotlib: pip install "selfinstruct[plots]"') from exc
    return Figure, MaxNLocator


def _no_data(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _hbar(ax: Any, items: list[tuple[str, int]], color: str) -> None:
    labels = [_short(label) for label, _ in items][::-1]  # largest at the top
    counts = [count for _, count in items][::-1]
    ax.barh(range(len(items)), counts, color=color)
    ax.set_yticks(range(len(items)), labels)
    for y, count in enumerate(counts):
        ax.annotate(f"{count:,}", (count, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.margins(x=0.12)


def _check_chart_dir(dest: Path) -> None:
    """Refuse a chart directory that is a file or lies below one (before anything is computed)."""
    for path in (dest, *dest.parents):
        if path.exists():
            if path.is_dir():
                return
            where = "is" if path == dest else f"cannot be created: {path} is"
            raise ConfigError(
                f"{dest} {where} a file, not a directory; give --plots a directory for the PNG charts"
            )


def plot_stats(out_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw four PNG charts of a run (five once it was judged) into ``dest_dir``; return their paths.

    ``dest_dir`` is created if missing.

    Uses matplotlib's ``Figure`` with the Agg renderer directly, not pyplot, so it changes no
    global backend state and needs no display. Text in Chinese, Japanese or Korean is drawn with
    installed CJK fonts; for characters no installed font has, one warning on the
    ``selfinstruct`` logger names the package to install. A ``dest_dir`` that is a file (or
    lies below one) raises ConfigError, one that cannot be created or written StoreError.
    """
    Figure, MaxNLocator = _matplotlib()
    dest = Path(dest_dir)
    _check_chart_dir(dest)
    stats, records, rejected = _compute(Path(out_dir))
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the chart directory {dest}: {exc.strerror}; give --plots another directory"
        ) from exc
    from matplotlib import rc_context

    run_name = Path(out_dir).resolve().name
    texts = [run_name, *(label for label, _ in stats["leading_words"]["top"]), *stats["rejected_by_reason"]]
    settings, glyphs_missing = _font_settings(texts)
    with rc_context(settings), warnings.catch_warnings():
        if glyphs_missing:  # said once in the log above, not once per character and chart
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        return _draw(stats, records, rejected, dest, run_name, Figure, MaxNLocator)


def _draw(
    stats: dict[str, Any],
    records: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    dest: Path,
    run_name: str,
    Figure: Any,
    MaxNLocator: Any,
) -> list[Path]:
    accepted_rouge = _rouge_values(records)
    rejected_rouge = _near_duplicate_scores(rejected)
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = dest / name
        try:
            fig.savefig(path, format="png", dpi=100)
        except OSError as exc:
            message = f"cannot write {path}: {exc.strerror or exc}; give --plots another directory"
            raise StoreError(message) from exc
        paths.append(path)

    # 1. instruction length
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    lengths = [_words(r.get("instruction")) for r in records]
    if lengths:
        # One bar per word count.
        edges = np.arange(min(lengths), max(lengths) + 2) - 0.5
        ax.hist(lengths, bins=edges, color="#4c72b0", edgecolor="white")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        median = float(np.median(lengths))
        ax.axvline(median, color="#c44e52", linestyle="--", label=f"median {median:g}")
        ax.legend()
    else:
        _no_data(ax, "no accepted tasks yet")
    ax.set_title(f"Instruction length ({len(lengths):,} accepted tasks, {run_name})")
    ax.set_xlabel("words in the instruction")
    ax.set_ylabel("tasks")
    save(fig, "instruction_length.png")

    # 2. similarity to the nearest task, accepted and rejected near-duplicates
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    threshold = stats["rouge_l"]["threshold"]
    if accepted_rouge or rejected_rouge:
        edges = np.linspace(0, 1, 21)
        data, labels, colors = [], [], []
        if accepted_rouge:
            data.append(accepted_rouge)
            labels.append(f"accepted ({len(accepted_rouge):,})")
            colors.append("#4c72b0")
        if rejected_rouge:
            data.append(rejected_rouge)
            labels.append(f"rejected as near duplicate ({len(rejected_rouge):,})")
            colors.append("#dd8452")
        ax.hist(data, bins=edges, stacked=True, label=labels, color=colors, edgecolor="white")
        ax.set_xlim(0, 1)
    else:
        _no_data(ax, "no ROUGE-L scores recorded")
    ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:g}")
    ax.legend()
    ax.set_title("ROUGE-L F to the most similar earlier task")
    ax.set_xlabel("ROUGE-L F")
    ax.set_ylabel("tasks")
    save(fig, "rouge_l.png")

    def bar_chart(items: list, color: str, title: str, xlabel: str, ylabel: str, empty: str, name: str) -> None:
        fig = Figure(figsize=(8, max(4.5, 0.3 * len(items) + 1.5)))
        ax = fig.subplots()
        if items:
            _hbar(ax, items, color)
        else:
            _no_data(ax, empty)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        save(fig, name)

    # 3. leading words
    top = stats["leading_words"]["top"]
    distinct = stats["leading_words"]["distinct"]
    bar_chart(top, "#55a868", f"Top {len(top)} first words of instructions ({distinct:,} distinct)",
              "tasks", "first word", "no accepted tasks yet", "leading_words.png")  # fmt: skip

    # 4. rejection reasons
    reasons = list(stats["rejected_by_reason"].items())
    bar_chart(reasons, "#dd8452", f"Rejected candidates by reason ({stats['rejected']:,} in all)",
              "candidates", "reason", "no rejected candidates", "rejection_reasons.png")  # fmt: skip

    # 5. judge scores (only once the run was judged): the current judge's overall score per level
    judge = stats.get("judge")
    if judge:
        summary = judge["judges"][0]
        fig = Figure(figsize=(8, 4.5))
        ax = fig.subplots()
        levels = [int(level) for level in summary["scores"]]
        counts = list(summary["scores"].values())
        if summary["judged"]:
            ax.bar(levels, counts, color="#8172b3", edgecolor="white")
            for level, count in zip(levels, counts):
                ax.annotate(f"{count:,}", (level, count), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
            ax.set_xticks(levels)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.margins(y=0.12)
        else:
            _no_data(ax, "no task judged yet")
        title = f"Judge overall score ({summary['judged']:,} judged"
        if summary["unjudged"]:
            title += f", {summary['unjudged']:,} unjudged"
        ax.set_title(title + f", mean {_fmt_num(summary['mean_overall'], 2)})")
        ax.set_xlabel(f"overall score ({summary['model'] or summary['fingerprint']})")
        ax.set_ylabel("tasks")
        save(fig, "judge_scores.png")

    return paths
