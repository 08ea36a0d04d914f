"""See a run: one self-contained HTML page of its tasks, rejections, near-duplicates and numbers.

``write_report(run, "run.html")`` reads the run with the store's read-only readers (never the
lock, so it works while ``generate`` writes) and writes ONE file: the page's own CSS and JS
inline, the records in an inline JSON block, nothing fetched from anywhere. Rejections are
sampled per reason (``max_rejected``) so big runs stay openable; counts are always the full ones.

``serve_report(run)`` (``selfinstruct report RUN --serve``) is for runs too big for one file: the
same page, served with paged JSON from a stdlib HTTP server bound to 127.0.0.1. It reads the
files incrementally from byte offsets (the first page is there after the first chunk, and a run
that is still writing shows its new rows), and writes flags to ``flags.jsonl`` in the run
directory, one appended line per change.

Safety against the data itself: every text reaches the page only as JSON (in a script block of
type application/json, with ``<``, ``>``, ``&`` and the line separators escaped so nothing can
close the block) and the page only ever sets it with ``textContent``. A Content-Security-Policy
that allows nothing but the hash of the page's own script and style is the second wall.

Layout of the page data (file mode; ``--serve`` sends the same rows page by page)::

    acc   accepted tasks, column by column; "near" is the resolved nearest neighbour:
          k >= 0 the accepted task at index k, k < 0 the seed -1-k, null unresolved ("nearRaw")
    rej   the included rejections (same columns plus reason/detail; "n" = position in the file)
    seeds only the seed tasks some record names as its nearest
    dict  code tables of the repetitive columns (model, endpoint, finish, settings, reason)
    stats the numbers of ``selfinstruct stats`` and the series the Run tab draws

Once the run was judged (``judgments.jsonl``), the current judge's verdicts fill the accepted
rows' ``score`` (overall 1-5), ``checks`` (bits: 1 valid, 2 input, 4 output) and ``why`` (its
reasoning); a self-instruct task judged per instance shows its weakest instance. The Run tab
gets the judge numbers of ``selfinstruct stats``.
"""

from __future__ import annotations

import base64
import bisect
import gc
import hashlib
import html
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .errors import ConfigError, SelfInstructError, StoreError
from .records import CHECKS, AcceptedTask, Counters, Judgment, RecordError, Rejection, RequestRecord, SeedTask
from .store import (
    ACCEPTED_FILE,
    JUDGMENTS_FILE,
    REJECTED_FILE,
    REQUESTS_FILE,
    TASKS_FILE,
    _add_legacy_counters,
    _check_run_dir,
    now_utc,
    read_accepted,
    read_judges,
    read_judgments,
    read_rejections,
    read_run,
)

__all__ = [
    "DEFAULT_MAX_REJECTED",
    "FLAGS_FILE",
    "SERVE_SUGGESTED_ROWS",
    "ReportServer",
    "RunData",
    "build_page_data",
    "load_run",
    "read_requests",
    "render_page",
    "run_stats",
    "serve_report",
    "write_report",
]

log = logging.getLogger("selfinstruct")

FLAGS_FILE = "flags.jsonl"
DEFAULT_MAX_REJECTED = 10_000  # per reason, in the single-file report
SERVE_SUGGESTED_ROWS = 150_000  # above this many rows a single file gets slow to open; --serve
_SAMPLE_SEED = 13  # the rejection sample is the same every time the report is built
_SHORT = 300  # characters of an instruction shown in a list row
_PAGE_LIMIT = 500  # most rows one /api/list answer carries
_READ_CHUNK = 8 << 20  # bytes per file per step of --serve: the lock is held for one step's rows
_FIRST_CHUNK = 1 << 20  # the step before listening: small, so the first page comes at once
_BLOCK_ROWS = 65_536  # rows per search block of --serve
_TIME_BUCKETS = 60
_SCORE_FIELDS = ("judge_score", "score")  # a later judge's score, when records carry one
_WHY = 1000  # characters of a judge's reasoning carried per task
_ACCEPTED_KEYS = (
    "id", "instruction", "input", "output", "most_similar_instruction", "rouge_l", "nearest_id",
    "request", "model", "endpoint", "finish_reason", "created", "settings",
)  # fmt: skip
_REJECTED_KEYS = (
    "reason", "detail", "instruction", "input", "output", "request", "rouge_l",
    "most_similar_instruction", "nearest_id", "created", "settings",
)  # fmt: skip
_QUERY_TERMS = re.compile(r'"([^"]+)"|(\S+)')


# -- columns ------------------------------------------------------------------------------------


class _Codes:
    """Repetitive strings (model, endpoint, reason...) as small integers, in first-seen order."""

    def __init__(self) -> None:
        self.values: list[str | None] = []
        self._index: dict[str | None, int] = {}

    def code(self, value: str | None) -> int:
        found = self._index.get(value)
        if found is None:
            found = self._index[value] = len(self.values)
            self.values.append(value)
        return found


def _words(text: str) -> int:
    return len(text.split())  # what `stats` counts


class RunData:
    """The records of a run, column by column (a million rows fit; dicts per row would not).

    Filled by :func:`load_run` (the single-file report) or by the incremental reader of
    ``--serve``; both go through ``add_accepted``/``add_rejections``/``add_requests``.
    """

    def __init__(self, directory: Path, seeds: Sequence[SeedTask] = ()) -> None:
        self.directory = directory
        self.seeds = list(seeds)
        self.seed_by_id: dict[str, int] = {}
        self.seed_by_text: dict[str, int] = {}
        for i, seed in enumerate(self.seeds):
            self.seed_by_id.setdefault(seed.id, i)
            self.seed_by_text.setdefault(seed.instruction, i)
        self.codes = {name: _Codes() for name in ("model", "endpoint", "finish", "settings", "reason")}
        # accepted
        self.a_id: list[str] = []
        self.a_instruction: list[str] = []
        self.a_input: list[str] = []
        self.a_output: list[str] = []
        self.a_similar: list[str] = []
        self.a_rouge: list[float] = []
        self.a_nearest_id: list[str | None] = []
        self.a_request: list[int] = []
        self.a_model: list[int] = []
        self.a_endpoint: list[int] = []
        self.a_finish: list[int] = []
        self.a_created: list[str] = []
        self.a_settings: list[int] = []
        self.a_score: list[float | None] = []
        self.a_words: list[tuple[int, int, int]] = []
        self.a_checks: list[int | None] = []  # the judge's three checks as bits (CHECKS order)
        self.a_why: list[str | None] = []
        self.has_score = False
        # judgments: all of them (for the numbers), and the first verdict per task key per judge
        self.judgments: list[Judgment] = []
        self.judges: list[dict[str, Any]] = []
        self.judge_fp: str | None = None  # the judge whose verdicts the rows show
        self._verdicts: dict[str, dict[str, dict[int | None, Judgment]]] = {}  # judge -> task id -> instance
        self.id_index: dict[str, int] = {}
        self.text_index: dict[str, int] = {}  # for runs written before records carried nearest_id
        # rejected (all of them; the file report samples when it writes)
        self.r_n: list[int] = []
        self.r_reason: list[int] = []
        self.r_detail: list[str] = []
        self.r_instruction: list[str] = []
        self.r_input: list[str] = []
        self.r_output: list[str] = []
        self.r_rouge: list[float | None] = []
        self.r_similar: list[str | None] = []
        self.r_nearest_id: list[str | None] = []
        self.r_request: list[int] = []
        self.r_created: list[str] = []
        self.r_settings: list[int] = []
        self.r_words: list[tuple[int, int, int]] = []
        # requests: (request, outcome, endpoint code, created, prompt, completion, latency)
        self.requests: list[tuple[int, str, int, str, int, int, float | None]] = []
        self.counters = Counters()
        self.skipped_lines = 0

    @property
    def n_accepted(self) -> int:
        return len(self.a_id)

    @property
    def n_rejected(self) -> int:
        return len(self.r_n)

    # -- filling --------------------------------------------------------------------------------

    def add_accepted(self, records: Iterable[tuple[AcceptedTask, float | None]]) -> None:
        """Append accepted tasks, each with its judge score (None when it has none)."""
        model, endpoint = self.codes["model"].code, self.codes["endpoint"].code
        finish, settings = self.codes["finish"].code, self.codes["settings"].code
        id_index, text_index = self.id_index, self.text_index
        index = first = len(self.a_id)
        for task, score in records:  # a million rows go through here: plain appends, no lookups
            self.a_id.append(task.id)
            self.a_instruction.append(task.instruction)
            self.a_input.append(task.input)
            self.a_output.append(task.output)
            self.a_similar.append(task.most_similar_instruction)
            self.a_rouge.append(task.rouge_l if math.isfinite(task.rouge_l) else 0.0)  # JSON has no NaN
            self.a_nearest_id.append(task.nearest_id)
            self.a_request.append(task.request)
            self.a_model.append(model(task.model))
            self.a_endpoint.append(endpoint(task.endpoint))
            self.a_finish.append(finish(task.finish_reason))
            self.a_created.append(task.created)
            self.a_settings.append(settings(task.settings))
            self.a_score.append(score)
            self.a_checks.append(None)
            self.a_why.append(None)
            if score is not None:
                self.has_score = True
            self.a_words.append((_words(task.instruction), _words(task.input), _words(task.output)))
            if task.id and task.id not in id_index:
                id_index[task.id] = index
            if task.instruction not in text_index:
                text_index[task.instruction] = index
            index += 1
        self.counters.accepted = len(self.a_id)
        if self.judge_fp is not None:  # verdicts read before their task (--serve reads files in steps)
            self._show_verdicts(range(first, index))

    def add_judgments(self, records: Iterable[Judgment], judges: list[dict[str, Any]]) -> None:
        """Add judge attempts; the rows show the current judge's verdicts (see the module docstring)."""
        from .stats import judge_order

        touched: set[str] = set()
        for j in records:
            self.judgments.append(j)
            if j.status == "judged":
                mine = self._verdicts.setdefault(j.judge, {}).setdefault(j.task_id, {})
                if j.instance not in mine:  # the first judged line wins; unjudged ones never score
                    mine[j.instance] = j
                    touched.add(j.task_id)
        self.judges = judges
        order = judge_order(self.judgments, judges)
        current = order[0] if order else None
        if current != self.judge_fp:
            self.judge_fp = current
            self._show_verdicts(range(self.n_accepted))
        elif touched:
            rows = [self.id_index[t] for t in touched if t in self.id_index]
            self._show_verdicts(rows)

    def _show_verdicts(self, rows: Iterable[int]) -> None:
        verdicts = self._verdicts.get(self.judge_fp or "", {})
        for i in rows:
            found = verdicts.get(self.a_id[i])
            if not found:
                self.a_score[i], self.a_checks[i], self.a_why[i] = None, None, None
                continue
            worst = min(found.values(), key=lambda v: (v.overall or 0, v.instance or 0))
            bits = 0
            for bit, check in enumerate(CHECKS):
                if all(v.passed(check) for v in found.values()):
                    bits |= 1 << bit
            self.a_score[i] = float(worst.overall or 0)
            self.a_checks[i] = bits
            self.a_why[i] = worst.reasoning[:_WHY] if worst.reasoning else None
            self.has_score = True

    def add_rejections(self, records: Iterable[Rejection]) -> None:
        reasons = self.codes["reason"]
        for rejection in records:
            self.r_n.append(len(self.r_n))
            self.r_reason.append(reasons.code(rejection.reason))
            self.r_detail.append(rejection.detail)
            self.r_instruction.append(rejection.instruction)
            self.r_input.append(rejection.input)
            self.r_output.append(rejection.output)
            rouge = rejection.rouge_l
            self.r_rouge.append(rouge if rouge is not None and math.isfinite(rouge) else None)
            self.r_similar.append(rejection.most_similar_instruction)
            self.r_nearest_id.append(rejection.nearest_id)
            self.r_request.append(rejection.request)
            self.r_created.append(rejection.created)
            self.r_settings.append(self.codes["settings"].code(rejection.settings))
            self.r_words.append((_words(rejection.instruction), _words(rejection.input), _words(rejection.output)))
            self.counters.add_rejection(rejection)

    def add_requests(self, records: Iterable[RequestRecord]) -> None:
        endpoints = self.codes["endpoint"]
        for record in records:
            self.counters.add_request(record)
            if record.carried is None:
                self.requests.append(
                    (
                        record.request, record.outcome, endpoints.code(record.endpoint), record.created,
                        record.prompt_tokens, record.completion_tokens, record.latency,
                    )
                )  # fmt: skip

    # -- reading back ---------------------------------------------------------------------------

    def resolve(self, nearest_id: str | None, similar: str | None) -> int | None:
        """The nearest neighbour as an index: k >= 0 accepted task k, k < 0 seed -1-k; None unknown.

        The id is the link; its text must agree (a custom seed file may reuse the bundled ids).
        Records written before ids were stored are matched by the text alone.
        """
        if nearest_id:
            index = self.id_index.get(nearest_id)
            if index is not None and (not similar or self.a_instruction[index] == similar):
                return index
            seed = self.seed_by_id.get(nearest_id)
            if seed is not None and (not similar or self.seeds[seed].instruction == similar):
                return -1 - seed
        if similar:
            index = self.text_index.get(similar)
            if index is not None:
                return index
            seed = self.seed_by_text.get(similar)
            if seed is not None:
                return -1 - seed
        return None

    def accepted_json(self, i: int) -> dict[str, Any]:
        """Task ``i`` with the fields it has on disk (schema left out, as exports do)."""
        codes = self.codes
        record: dict[str, Any] = {
            "id": self.a_id[i],
            "instruction": self.a_instruction[i],
            "input": self.a_input[i],
            "output": self.a_output[i],
            "most_similar_instruction": self.a_similar[i],
            "rouge_l": self.a_rouge[i],
            "nearest_id": self.a_nearest_id[i],
            "request": self.a_request[i],
            "model": codes["model"].values[self.a_model[i]],
            "endpoint": codes["endpoint"].values[self.a_endpoint[i]],
            "finish_reason": codes["finish"].values[self.a_finish[i]],
            "created": self.a_created[i],
            "settings": codes["settings"].values[self.a_settings[i]],
            "judge_score": self.a_score[i],
            "judge_checks": _check_dict(self.a_checks[i]),
            "judge_reasoning": self.a_why[i],
        }
        return {k: v for k, v in record.items() if v is not None}

    def rejected_json(self, i: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "reason": self.codes["reason"].values[self.r_reason[i]],
            "detail": self.r_detail[i],
            "instruction": self.r_instruction[i],
            "input": self.r_input[i],
            "output": self.r_output[i],
            "request": self.r_request[i],
            "rouge_l": self.r_rouge[i],
            "most_similar_instruction": self.r_similar[i],
            "nearest_id": self.r_nearest_id[i],
            "created": self.r_created[i] or None,
            "settings": self.codes["settings"].values[self.r_settings[i]],
        }
        return {k: v for k, v in record.items() if v is not None}

    def neighbour_json(self, ref: int | None, nearest_id: str | None, similar: str | None) -> dict[str, Any] | None:
        """What the page shows of a nearest neighbour: a link when it is known, else the text."""
        if ref is not None and ref >= 0:
            return {
                "kind": "a", "key": ref, "id": self.a_id[ref], "instruction": self.a_instruction[ref],
                "input": self.a_input[ref], "output": self.a_output[ref],
            }  # fmt: skip
        if ref is not None:
            seed = self.seeds[-1 - ref]
            return {
                "kind": "s", "key": -1 - ref, "id": seed.id, "instruction": seed.instruction,
                "input": seed.input, "output": seed.output,
            }  # fmt: skip
        if similar or nearest_id:
            return {"kind": "t", "id": nearest_id or "", "instruction": similar or ""}
        return None

    def nearest_of(self, side: str, i: int) -> dict[str, Any] | None:
        """The neighbour of accepted task ``i`` (side "a") or of rejection ``i`` (side "r")."""
        nearest_id = self.a_nearest_id[i] if side == "a" else self.r_nearest_id[i]
        similar = self.a_similar[i] if side == "a" else self.r_similar[i]
        return self.neighbour_json(self.resolve(nearest_id, similar), nearest_id, similar)


def _check_dict(bits: int | None) -> dict[str, bool] | None:
    return None if bits is None else {check: bool(bits >> n & 1) for n, check in enumerate(CHECKS)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scored_task(raw: Any) -> tuple[AcceptedTask, float | None]:
    """A line of instructions.jsonl checked as an AcceptedTask, with a later judge's score if any."""
    task = AcceptedTask.from_json(raw)
    for key in _SCORE_FIELDS:
        value = raw.get(key)
        if value is not None and _is_number(value):
            return task, float(value)
    return task, None


# -- reading a run --------------------------------------------------------------------------------


def _load_seeds(path: str | os.PathLike[str] | None) -> list[SeedTask]:
    from .seeds import load_seed_tasks

    try:
        return load_seed_tasks(path)
    except SelfInstructError as exc:
        if path is not None:
            raise
        log.warning(f"report: the bundled seed tasks could not be read ({exc}); seeds will show as text")
        return []


def load_run(run_dir: str | os.PathLike[str], seed_tasks: str | os.PathLike[str] | None = None) -> RunData:
    """Read a run directory completely (read-only, no lock; a torn last line is left for later).

    ``seed_tasks`` is the seed file the run used when it was not the bundled one, so pairs whose
    nearest task is a seed link to it.
    """
    directory = Path(run_dir)
    _check_run_dir(directory)
    data = RunData(directory, _load_seeds(seed_tasks))
    # Accepted before rejected: a rejection's nearest task is then always already known.
    data.add_accepted(_scored_task(raw) for raw in read_accepted(directory))
    data.add_rejections(read_rejections(directory))
    data.add_requests(read_requests(directory))
    if not data.requests:
        _add_legacy_counters(data.counters, read_run(directory))  # a run made before requests.jsonl
    if (directory / JUDGMENTS_FILE).exists():
        data.add_judgments(read_judgments(directory), _judges(directory, []))
    return data


def _judges(directory: Path, fallback: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """judges.json, or ``fallback`` when it is unreadable (the report still shows the judgments)."""
    try:
        return read_judges(directory)
    except StoreError as exc:
        log.warning(f"report: {exc}")
        return fallback


def read_requests(run_dir: str | os.PathLike[str]) -> list[RequestRecord]:
    """The lines of ``requests.jsonl`` (read-only like the store's readers; [] when there is none)."""
    tail = _Tail(Path(run_dir) / REQUESTS_FILE, RequestRecord.from_json)
    records: list[RequestRecord] = []
    while True:
        chunk, _ = tail.read()
        if not chunk:
            return records
        records.extend(chunk)


class _Tail:
    """The complete lines appended to one JSONL file since the last read, parsed and checked.

    Read-only and lock-free like the store's readers: an unfinished last line waits for the next
    read, an unreadable line is skipped with a warning. ``read`` reports ``reset`` when the file
    was replaced or cut below what was read (``generate`` moved a bad line to quarantine), after
    which the caller starts over.
    """

    def __init__(self, path: Path, parse: Callable[[Any], Any]) -> None:
        self.path = path
        self.parse = parse
        self.offset = 0
        self.inode: int | None = None
        self.check = b""  # the bytes just before offset, to notice a rewrite
        self.skipped = 0

    def _replaced(self, fh: Any, size: int, inode: int) -> bool:
        if self.inode is None:
            return False
        if inode != self.inode or size < self.offset:
            return True
        fh.seek(self.offset - len(self.check))
        return bool(fh.read(len(self.check)) != self.check)

    def read(self, limit: int = _READ_CHUNK) -> tuple[list[Any], bool]:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return [], self.offset > 0
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from exc
        with fh:
            info = os.fstat(fh.fileno())
            if self._replaced(fh, info.st_size, info.st_ino):
                return [], True
            self.inode = info.st_ino
            fh.seek(self.offset)
            data = fh.read(limit)
            cut = data.rfind(b"\n")
            while cut < 0 and len(data) >= limit:  # one line longer than a chunk: read on to its end
                more = fh.read(limit)
                if not more:
                    break
                data += more
                cut = data.rfind(b"\n")
        if cut < 0:
            return [], False
        body = data[: cut + 1]
        self.offset += len(body)
        self.check = body[-64:]
        values = [_loads_or_none(raw) for raw in body.split(b"\n") if raw.strip()]
        records = []
        bad = 0
        for value in values:
            try:
                records.append(self.parse(value))
            except (ValueError, RecordError, AttributeError):  # AttributeError: None from a bad line
                bad += 1
        if bad:
            self.skipped += bad
            log.warning(f"{self.path.name}: skipped {bad} unreadable line(s)")
        return records, False


def _loads_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


# -- statistics for the Run tab ----------------------------------------------------------------------


def _epoch(text: str, cache: dict[str, float | None]) -> float | None:
    if text in cache:
        return cache[text]
    value: float | None = None
    if text:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            value = moment.timestamp()
        except ValueError:
            value = None
    cache[text] = value
    return value


def _histogram(values: Sequence[int], bins: int = 30) -> list[list[float]]:
    """[[low, high, count], ...] over whole numbers, bins of a round width."""
    if not values:
        return []
    array = np.asarray(values)
    top = int(np.percentile(array, 99)) + 1  # the long tail goes into the last bin
    width = max(1, math.ceil(top / bins))
    counts = np.bincount(np.minimum(array // width, bins - 1), minlength=bins)
    last = int(np.nonzero(counts)[0].max()) + 1
    return [[i * width, (i + 1) * width, int(c)] for i, c in enumerate(counts[:last])]


def _time_axis(times: list[float | None], fallback: Sequence[int]) -> tuple[str, np.ndarray]:
    """Times when most records have one, else request numbers (runs made before timestamps)."""
    known = sum(1 for t in times if t is not None)
    if times and known * 2 >= len(times):
        return "time", np.asarray([np.nan if t is None else t for t in times], dtype=float)
    return "request", np.asarray(fallback, dtype=float)


def run_stats(data: RunData) -> dict[str, Any]:
    """The numbers ``selfinstruct stats`` prints plus the series the page charts (JSON data)."""
    from .stats import ROUGE_BINS, _lead, _percentiles, _rouge_histogram, _threshold, _top

    run = read_run(data.directory)
    config: dict[str, Any] = next((run[k] for k in ("generation", "config") if isinstance(run.get(k), dict)), {})
    counters = data.counters
    n = data.n_accepted
    candidates = counters.candidates
    words = data.a_words
    with_input = [w[1] for w, text in zip(words, data.a_input) if text.strip()]
    rouge_bins, over = _rouge_histogram(data.a_rouge)
    near_code = data.codes["reason"]._index.get("near_duplicate")
    near_scores = [
        r for code, r in zip(data.r_reason, data.r_rouge) if code == near_code and r is not None and math.isfinite(r)
    ]
    near_bins = np.histogram(near_scores, bins=10, range=(0.0, 1.0))[0].tolist() if near_scores else []
    tokens_total = counters.prompt_tokens + counters.completion_tokens if counters.requests else None
    elapsed = run.get("elapsed_seconds") if _is_number(run.get("elapsed_seconds")) else None

    first = Counter(w for w in (_lead(t, 1) for t in data.a_instruction) if w)
    pairs = Counter(w for w in (_lead(t, 2) for t in data.a_instruction) if w)
    stats: dict[str, Any] = {
        "summary": {
            "status": run.get("status"),
            "model": config.get("model"),
            "target": run.get("target") if _is_number(run.get("target")) else None,
            "accepted": n,
            "candidates": candidates,
            "accept_rate": n / candidates if candidates else None,
            "rejected": counters.rejected_total,
            "requests": counters.requests or None,
            "failed_requests": counters.failed_requests if counters.requests else None,
            "prompt_tokens": counters.prompt_tokens if counters.requests else None,
            "completion_tokens": counters.completion_tokens if counters.requests else None,
            "tokens_per_accepted": tokens_total / n if tokens_total is not None and n else None,
            "elapsed_seconds": elapsed,
            "tasks_per_minute": n / (elapsed / 60) if elapsed else None,
            "with_input": len(with_input),
            "without_input": n - len(with_input),
            "skipped_lines": data.skipped_lines,
        },
        "rejected_by_reason": [[k, v] for k, v in _top(counters.rejected, n=len(counters.rejected))],
        "failures": [[k, v] for k, v in _top(counters.failures, n=len(counters.failures))],
        "words": {},
        "rouge": {
            "threshold": _threshold(config),
            "bins": [[b["low"], b["high"], b["count"]] for b in rouge_bins],
            "over": over,
            "edges": [low for low, _ in ROUGE_BINS],
            "mean": sum(data.a_rouge) / n if n else None,
            "near_duplicate_bins": near_bins,
        },
        "leading_words": {"distinct": len(first), "top": [[k, v] for k, v in _top(first)]},
        "leading_bigrams": {"distinct": len(pairs), "top": [[k, v] for k, v in _top(pairs)]},
    }
    for name, column in (
        ("instruction", [w[0] for w in words]),
        ("input", with_input),
        ("output", [w[2] for w in words]),
    ):
        stats["words"][name] = {"percentiles": _percentiles(column), "histogram": _histogram(column)}
    stats["timeline"] = _timeline(data)
    stats["endpoints"] = _endpoints(data)
    judge = _judge_numbers(data)
    if judge is not None:
        stats["judge"] = judge
    return stats


def _judge_numbers(data: RunData) -> dict[str, Any] | None:
    """The judge section of ``selfinstruct stats``, from the judgments the report has read."""
    from .stats import judge_section, task_output_words

    if not data.judgments:
        return None
    if (data.directory / TASKS_FILE).exists():
        output_words = task_output_words(data.directory)  # judged per instance: their outputs
    else:
        output_words = {(task_id, None): words[2] for task_id, words in zip(data.a_id, data.a_words) if task_id}
    return judge_section(data.judgments, data.judges, output_words)


def _timeline(data: RunData) -> dict[str, Any]:
    """Accepted and judged candidates per time bucket: the accept rate as the run went on."""
    cache: dict[str, float | None] = {}
    request_time = {r[0]: _epoch(r[3], cache) for r in data.requests}
    unparseable = data.codes["reason"]._index.get("unparseable")

    def when(created: list[str], requests: list[int]) -> list[float | None]:
        return [_epoch(c, cache) if c else request_time.get(q) for c, q in zip(created, requests)]

    judged = [i for i, code in enumerate(data.r_reason) if code != unparseable]
    a_kind, a_x = _time_axis(when(data.a_created, data.a_request), data.a_request)
    r_kind, r_x = _time_axis(
        when([data.r_created[i] for i in judged], [data.r_request[i] for i in judged]),
        [data.r_request[i] for i in judged],
    )
    if a_kind != r_kind:  # one file has times and the other not: fall back to request numbers
        a_kind, a_x = "request", np.asarray(data.a_request, dtype=float)
        r_kind, r_x = "request", np.asarray([data.r_request[i] for i in judged], dtype=float)
    both = np.concatenate([a_x, r_x])
    both = both[np.isfinite(both)]
    if both.size == 0:
        return {"axis": a_kind, "edges": [], "accepted": [], "candidates": []}
    low, high = float(both.min()), float(both.max())
    if high <= low:
        high = low + 1
    edges = np.linspace(low, high, _TIME_BUCKETS + 1)
    accepted = np.histogram(a_x[np.isfinite(a_x)], bins=edges)[0]
    rejected = np.histogram(r_x[np.isfinite(r_x)], bins=edges)[0]
    return {
        "axis": a_kind,
        "edges": edges.tolist(),
        "accepted": accepted.tolist(),
        "candidates": (accepted + rejected).tolist(),
    }


def _endpoints(data: RunData) -> dict[str, Any]:
    """Per endpoint: requests, failures, tokens, latency, and completion tokens per second over time."""
    cache: dict[str, float | None] = {}
    names = data.codes["endpoint"].values
    rows: dict[int, dict[str, Any]] = {}
    latencies: dict[int, list[float]] = {}
    times: list[tuple[int, float, int]] = []
    for request, outcome, endpoint, created, prompt, completion, latency in data.requests:
        row = rows.setdefault(
            endpoint,
            {"endpoint": names[endpoint] or "(none)", "requests": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0},
        )
        row["requests"] += 1
        row["failed"] += outcome != "answered"
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
        if latency is not None:
            latencies.setdefault(endpoint, []).append(latency)
        moment = _epoch(created, cache)
        if moment is not None:
            times.append((endpoint, moment, completion))
    for code, row in rows.items():
        values = latencies.get(code)
        row["latency_mean"] = float(np.mean(values)) if values else None
        row["latency_p95"] = float(np.percentile(values, 95)) if values else None
    result: dict[str, Any] = {"rows": sorted(rows.values(), key=lambda r: -r["requests"]), "edges": [], "series": []}
    if len(times) >= 2:
        stamps = np.asarray([t for _, t, _ in times])
        low, high = float(stamps.min()), float(stamps.max())
        if high > low:
            edges = np.linspace(low, high, _TIME_BUCKETS + 1)
            width = (high - low) / _TIME_BUCKETS
            for code in sorted(rows, key=lambda c: -rows[c]["requests"]):
                mine = [(t, c) for e, t, c in times if e == code]
                tokens = np.histogram([t for t, _ in mine], bins=edges, weights=[c for _, c in mine])[0]
                for_row = rows[code]
                span = max(t for t, _ in mine) - min(t for t, _ in mine) if mine else 0
                for_row["completion_tokens_per_s"] = for_row["completion_tokens"] / span if span > 0 else None
                result["series"].append({"endpoint": for_row["endpoint"], "tokens_per_s": (tokens / width).tolist()})
            result["edges"] = edges.tolist()
    return result


# -- the page --------------------------------------------------------------------------------------

_PAGE_FILES = ("page.html", "page.css", "page.js")
_MARKER = re.compile(r"\{\{(TITLE|CSP|CSS|JS|DATA)\}\}")


def _asset(name: str) -> str:
    return (resources.files("selfinstruct") / "report_page" / name).read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    """JSON that is safe inside <script type="application/json">: nothing in it can end the block."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (the store keeps them byte for byte) cannot be UTF-8: escape them for JSON.parse.
        text = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def render_page(boot: dict[str, Any], *, title: str, serve: bool = False) -> Iterator[str]:
    """The HTML page in pieces (the data block can be tens of megabytes; it is not copied again)."""
    css, js = _asset("page.css"), _asset("page.js")
    if "</" in js or "</" in css:  # our own code must never end its block early
        raise AssertionError("report_page assets contain '</'")
    csp = (
        f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
        f"connect-src {'self' if serve else 'none'}; img-src data:; base-uri 'none'; form-action 'none'"
    ).replace("connect-src self", "connect-src 'self'").replace("connect-src none", "connect-src 'none'")
    # The attribute is double-quoted and the policy has no '"' or '<': its quotes stay readable.
    parts = {"TITLE": html.escape(title), "CSP": csp, "CSS": css, "JS": js}
    template = _asset("page.html")
    position = 0
    for match in _MARKER.finditer(template):
        yield template[position : match.start()]
        name = match.group(1)
        yield _script_json(boot) if name == "DATA" else parts[name]
        position = match.end()
    yield template[position:]


def _sample_rejections(data: RunData, max_rejected: int | None) -> list[int]:
    """Indices of the rejections the file carries: at most ``max_rejected`` per reason, spread
    over the whole run (a seeded sample, so rebuilding the report gives the same one)."""
    by_reason: dict[int, list[int]] = {}
    for i, code in enumerate(data.r_reason):
        by_reason.setdefault(code, []).append(i)
    chosen: list[int] = []
    rng = random.Random(_SAMPLE_SEED)
    for indices in by_reason.values():
        if max_rejected is not None and len(indices) > max_rejected:
            indices = rng.sample(indices, max_rejected)
        chosen.extend(indices)
    chosen.sort()
    return chosen


def _meta(data: RunData, *, mode: str, included: dict[str, int] | None = None) -> dict[str, Any]:
    first = data.a_created[0] if data.n_accepted else ""
    key = hashlib.sha256(f"{data.directory.resolve()}|{first}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
    reasons = dict(data.counters.rejected)
    return {
        "title": data.directory.resolve().name,
        "run_dir": str(data.directory.resolve()),
        "mode": mode,
        "generated": now_utc(),
        "version": _version(),
        "run_key": key,
        "accepted": data.n_accepted,
        "rejected": data.n_rejected,
        "by_reason": reasons,
        "included": included if included is not None else reasons,
        "has_score": data.has_score,
        "judge": data.judge_fp,
        "threshold": None,
    }


def _version() -> str:
    from . import __version__

    return __version__


def build_page_data(data: RunData, *, max_rejected: int | None = DEFAULT_MAX_REJECTED) -> dict[str, Any]:
    """The JSON the single-file page embeds (see the module docstring for its layout)."""
    rejected = _sample_rejections(data, max_rejected)
    reason_values = data.codes["reason"].values
    included = Counter(reason_values[data.r_reason[i]] or "" for i in rejected)
    a_near: list[int | None] = []
    a_raw: dict[int, list[str | None]] = {}
    for i in range(data.n_accepted):
        ref = data.resolve(data.a_nearest_id[i], data.a_similar[i])
        a_near.append(ref)
        if ref is None and (data.a_similar[i] or data.a_nearest_id[i]):
            a_raw[i] = [data.a_nearest_id[i], data.a_similar[i]]
    r_near: list[int | None] = []
    r_raw: dict[int, list[str | None]] = {}
    for j, i in enumerate(rejected):
        ref = data.resolve(data.r_nearest_id[i], data.r_similar[i])
        r_near.append(ref)
        if ref is None and (data.r_similar[i] or data.r_nearest_id[i]):
            r_raw[j] = [data.r_nearest_id[i], data.r_similar[i]]
    # Only the seeds some record points at, renumbered densely.
    seed_used = sorted({-1 - r for r in (*a_near, *r_near) if r is not None and r < 0})
    renumber = {old: new for new, old in enumerate(seed_used)}

    def seed_ref(ref: int | None) -> int | None:
        return -1 - renumber[-1 - ref] if ref is not None and ref < 0 else ref

    stats = run_stats(data)
    meta = _meta(data, mode="file", included=dict(included))
    meta["threshold"] = stats["rouge"]["threshold"]

    def take(column: Sequence[Any]) -> list[Any]:
        return [column[i] for i in rejected]

    acc: dict[str, Any] = {
        "id": data.a_id,
        "instruction": data.a_instruction,
        "input": data.a_input,
        "output": data.a_output,
        "rouge": data.a_rouge,
        "near": [seed_ref(r) for r in a_near],
        "nearRaw": a_raw,
        "request": data.a_request,
        "model": data.a_model,
        "endpoint": data.a_endpoint,
        "finish": data.a_finish,
        "created": data.a_created,
        "settings": data.a_settings,
        "iw": [w[0] for w in data.a_words],
        "xw": [w[1] for w in data.a_words],
        "ow": [w[2] for w in data.a_words],
    }
    if data.has_score:
        acc["score"] = data.a_score
    if data.judge_fp is not None:
        acc["checks"] = data.a_checks
        acc["why"] = data.a_why
    rej: dict[str, Any] = {
        "n": take(data.r_n),
        "reason": take(data.r_reason),
        "detail": take(data.r_detail),
        "instruction": take(data.r_instruction),
        "input": take(data.r_input),
        "output": take(data.r_output),
        "rouge": take(data.r_rouge),
        "near": [seed_ref(r) for r in r_near],
        "nearRaw": r_raw,
        "request": take(data.r_request),
        "created": take(data.r_created),
        "settings": take(data.r_settings),
        "iw": [data.r_words[i][0] for i in rejected],
        "ow": [data.r_words[i][2] for i in rejected],
    }
    seeds = [data.seeds[i] for i in seed_used]
    return {
        "v": 1,
        "meta": meta,
        "stats": stats,
        "acc": acc,
        "rej": rej,
        "seeds": {
            "id": [s.id for s in seeds],
            "instruction": [s.instruction for s in seeds],
            "input": [s.input for s in seeds],
            "output": [s.output for s in seeds],
        },
        "dict": {name: codes.values for name, codes in data.codes.items()},
    }


def write_report(
    run_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_rejected: int | None = DEFAULT_MAX_REJECTED,
    seed_tasks: str | os.PathLike[str] | None = None,
) -> dict[str, int]:
    """Write the single-file HTML report of ``run_dir`` to ``dest`` (atomically).

    ``max_rejected`` caps the rejections carried per reason (None: all). Returns the counts
    written: ``accepted``, ``rejected`` (included), ``rejected_total`` and ``bytes``. The
    destination rules are those of ``export`` (not inside the run directory, not a link).
    """
    from .export import _check_destination, _write_text_atomically

    if max_rejected is not None and max_rejected < 0:
        raise ConfigError("--max-rejected must be 0 or more (or 'all')")
    directory = Path(run_dir)
    _check_destination(directory, Path(dest), "report")
    data = load_run(directory, seed_tasks)
    boot = build_page_data(data, max_rejected=max_rejected)
    _write_text_atomically(Path(dest), render_page(boot, title=f"{boot['meta']['title']} · selfinstruct report"))
    return {
        "accepted": data.n_accepted,
        "rejected": len(boot["rej"]["n"]),
        "rejected_total": data.n_rejected,
        "bytes": Path(dest).stat().st_size,
    }


# -- --serve: the same page, data paged from a local server --------------------------------------


def _terms(query: str) -> list[str]:
    """Search terms as the page splits them: words, or "quoted phrases"; all must occur."""
    terms = [(a or b).lower() for a, b in _QUERY_TERMS.findall(query or "")]
    return [t.replace("\x00", "").replace("\x1f", "") for t in terms if t.strip("\x00\x1f")]


class _TextIndex:
    """Lower-cased text of every row in blocks: a search is a few C-speed ``str.find`` scans."""

    def __init__(self) -> None:
        self.blocks: list[tuple[int, str, list[int]]] = []  # (first row, text, row starts)
        self.rows = 0

    def extend(self, texts: Sequence[str]) -> None:
        """Add rows; the last block is rebuilt while it has room, so blocks stay big."""
        kept, first = self.blocks, self.rows
        lowered = [t.lower() for t in texts]
        if kept and self.rows - kept[-1][0] < _BLOCK_ROWS:
            start, blob, starts = kept[-1]
            kept, first = kept[:-1], start
            lowered = blob.split("\x00") + lowered  # rows never hold NUL: _row_text drops it
        new = []
        for offset in range(0, len(lowered), _BLOCK_ROWS):
            part = lowered[offset : offset + _BLOCK_ROWS]
            starts, position = [], 0
            for text in part:
                starts.append(position)
                position += len(text) + 1
            new.append((first + offset, "\x00".join(part), starts))
        self.blocks = kept + new  # one assignment: a search running meanwhile sees old or new, whole
        self.rows += len(texts)

    def search(self, terms: list[str], limit_rows: int) -> np.ndarray:
        """Rows (below ``limit_rows``) whose text contains every term."""
        if not terms:
            return np.arange(limit_rows, dtype=np.int64)
        lead = max(terms, key=len)  # the longest term is usually the rarest
        rest = [t for t in terms if t is not lead]
        found: list[int] = []
        for first, blob, starts in list(self.blocks):
            if first >= limit_rows:
                break
            end_all = len(blob)
            position = blob.find(lead)
            while position >= 0:
                row = bisect.bisect_right(starts, position) - 1
                end = starts[row + 1] - 1 if row + 1 < len(starts) else end_all
                if all(blob.find(t, starts[row], end) >= 0 for t in rest):
                    if first + row >= limit_rows:
                        break
                    found.append(first + row)
                position = blob.find(lead, end)
        return np.asarray(found, dtype=np.int64)


def _row_text(instruction: str, task_input: str, output: str) -> str:
    # NUL separates rows and US the fields, so neither may come from the text.
    text = f"{instruction}\x1f{task_input}\x1f{output}"
    return text.replace("\x00", " ") if "\x00" in text else text


class _LiveRun:
    """A RunData that follows the files: each ``poll`` reads what was appended since the last."""

    def __init__(self, directory: Path, seeds: list[SeedTask]) -> None:
        self.directory = directory
        self.seeds = seeds
        self.lock = threading.RLock()
        self.version = 0
        self.loading = True
        self._start()

    def _start(self) -> None:
        self.data = RunData(self.directory, self.seeds)
        self.tails = {
            "accepted": _Tail(self.directory / ACCEPTED_FILE, _scored_task),
            "rejected": _Tail(self.directory / REJECTED_FILE, Rejection.from_json),
            "requests": _Tail(self.directory / REQUESTS_FILE, RequestRecord.from_json),
            "judgments": _Tail(self.directory / JUDGMENTS_FILE, Judgment.from_json),
        }
        self.a_text = _TextIndex()
        self.r_text = _TextIndex()
        self.arrays: dict[str, Any] = {}
        self.legacy_done = False

    def poll(self, limit: int = _READ_CHUNK) -> int:
        """Read one step of new lines from each file; the number of records read (0: nothing new)."""
        accepted, reset_a = self.tails["accepted"].read(limit)
        rejected, reset_r = self.tails["rejected"].read(limit)
        requests, reset_q = self.tails["requests"].read(limit)
        judgments, reset_j = self.tails["judgments"].read(limit)
        if reset_a or reset_r or reset_q or reset_j:
            log.warning("report: a run file was rewritten (a bad line moved to quarantine?); reading it again")
            with self.lock:
                self._start()
                self.version += 1
            return 1
        with self.lock:
            if accepted:
                self.data.add_accepted(accepted)
                self.a_text.extend([_row_text(t.instruction, t.input, t.output) for t, _ in accepted])
            if rejected:
                self.data.add_rejections(rejected)
                self.r_text.extend([_row_text(r.instruction, r.input, r.output) for r in rejected])
            if requests:
                self.data.add_requests(requests)
            if judgments:
                self.data.add_judgments(judgments, _judges(self.directory, self.data.judges))
            changed = len(accepted) + len(rejected) + len(requests) + len(judgments)
            if changed:
                self.version += 1
                self.arrays = {}
            self.data.skipped_lines = sum(t.skipped for t in self.tails.values())
            if not changed and not self.legacy_done and not self.data.requests:
                _add_legacy_counters(self.data.counters, read_run(self.directory))
                self.legacy_done = True
        return changed

    def array(self, name: str) -> np.ndarray:
        """A numeric column as a numpy array (rebuilt after the data changed)."""
        with self.lock:
            found = self.arrays.get(name)
            if found is not None:
                return found
            d = self.data
            near = d.codes["reason"]._index.get("near_duplicate", -1)
            builders: dict[str, Callable[[], np.ndarray]] = {
                "a_iw": lambda: np.fromiter((w[0] for w in d.a_words), np.int64, d.n_accepted),
                "a_ow": lambda: np.fromiter((w[2] for w in d.a_words), np.int64, d.n_accepted),
                "a_rouge": lambda: np.asarray(d.a_rouge, dtype=float),
                "a_score": lambda: np.asarray([np.nan if s is None else s for s in d.a_score], dtype=float),
                "a_has_near": lambda: np.asarray(
                    [bool(s) or bool(n) for s, n in zip(d.a_similar, d.a_nearest_id)], dtype=bool
                ),
                "r_iw": lambda: np.fromiter((w[0] for w in d.r_words), np.int64, d.n_rejected),
                "r_ow": lambda: np.fromiter((w[2] for w in d.r_words), np.int64, d.n_rejected),
                "r_rouge": lambda: np.asarray([np.nan if r is None else r for r in d.r_rouge], dtype=float),
                "r_reason": lambda: np.asarray(d.r_reason, dtype=np.int64),
                "r_near": lambda: np.asarray(d.r_reason, dtype=np.int64) == near,
            }
            found = self.arrays[name] = builders[name]()
            return found


class _Flags:
    """Flags of records, one appended line per change in ``flags.jsonl`` (last line per ref wins)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.state: dict[str, dict[str, Any]] = {}
        self.version = 0
        self._tail = _Tail(path, _flag_line)
        self.reload()

    def reload(self) -> None:
        with self.lock:
            while True:
                lines, reset = self._tail.read()
                if reset:
                    self.state, self._tail = {}, _Tail(self.path, _flag_line)
                    continue
                if not lines:
                    break
                for line in lines:
                    self._apply(line)

    def _apply(self, line: dict[str, Any]) -> None:
        if line.get("flagged"):
            self.state[line["ref"]] = line
        else:
            self.state.pop(line["ref"], None)
        self.version += 1

    def set(self, ref: str, kind: str, flagged: bool, note: str) -> dict[str, Any]:
        line = {"ref": ref, "kind": kind, "flagged": flagged, "note": note, "at": now_utc()}
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")
        with self.lock:
            self._catch_up()
            # One write of a whole line with O_APPEND: never interleaved with another writer's line.
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StoreError(f"cannot write {self.path}: {exc.strerror}") from exc
            self._catch_up()
        return line

    def _catch_up(self) -> None:
        lines, _ = self._tail.read()
        for line in lines:
            self._apply(line)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            self._catch_up()
            return dict(self.state)


def _flag_line(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("ref"), str):
        raise RecordError("a flag line needs a text 'ref'")
    return value


def _rejected_ref(n: int) -> str:
    return f"rejected-{n}"


class _Engine:
    """The queries the page makes: filtered, sorted lists, pages of them, single records."""

    def __init__(self, live: _LiveRun, flags: _Flags) -> None:
        self.live = live
        self.flags = flags
        self.cache: dict[tuple[Any, ...], tuple[np.ndarray, Any]] = {}
        self.cache_lock = threading.Lock()

    def _flagged(self, view: str) -> np.ndarray:
        d = self.live.data
        refs = self.flags.snapshot()
        if view == "accepted":
            keys = [w["key"] for w in (self.lookup(r) for r in refs) if w and w["kind"] == "a"]
            return np.asarray(sorted(keys), dtype=np.int64)
        wanted = [int(r.rsplit("-", 1)[1]) for r in refs if r.startswith("rejected-") and r[9:].isdigit()]
        return np.asarray(sorted(n for n in wanted if n < d.n_rejected), dtype=np.int64)

    def indices(self, params: dict[str, str]) -> tuple[np.ndarray, Any]:
        """Row indices of a list view in display order, and the reason facets (rejected only)."""
        view = params.get("view", "accepted")
        if view not in ("accepted", "rejected", "near-rejected", "near-accepted"):
            raise ValueError(f"unknown view {view!r}")
        sort, desc = params.get("sort", "order"), params.get("desc") == "1"
        flagged = params.get("flagged") == "1"
        reason = params.get("reason", "")
        terms = _terms(params.get("q", ""))
        live = self.live
        with live.lock:
            version = live.version
            n_a, n_r = live.data.n_accepted, live.data.n_rejected
        key = (view, sort, desc, flagged, reason, tuple(terms), version, self.flags.version if flagged else -1)
        with self.cache_lock:
            hit = self.cache.get(key)
        if hit is not None:
            return hit
        accepted_side = view in ("accepted", "near-accepted")
        rows = (live.a_text if accepted_side else live.r_text).search(terms, n_a if accepted_side else n_r)
        if flagged:
            rows = np.intersect1d(rows, self._flagged("accepted" if accepted_side else "rejected"))
        facets = None
        if view == "rejected":
            codes = live.array("r_reason")[:n_r][rows]
            counts = np.bincount(codes, minlength=len(live.data.codes["reason"].values))
            values = live.data.codes["reason"].values
            facets = {values[i] or "": int(c) for i, c in enumerate(counts) if c}
            if reason:
                code = live.data.codes["reason"]._index.get(reason, -1)
                rows = rows[codes == code]
        elif view == "near-rejected":
            rows = rows[live.array("r_near")[:n_r][rows]]
        elif view == "near-accepted":
            rows = rows[live.array("a_has_near")[:n_a][rows]]
        prefix = "a_" if accepted_side else "r_"
        column = {"iw": "iw", "ow": "ow", "rouge": "rouge", "score": "score"}.get(sort)
        if column and (prefix + column) in ("a_iw", "a_ow", "a_rouge", "a_score", "r_iw", "r_ow", "r_rouge"):
            values = live.array(prefix + column)[: n_a if accepted_side else n_r][rows].astype(float)
            missing = np.isnan(values)
            # Stable sort on (missing last, value, position): ties keep the written order.
            keyed = np.where(missing, np.inf, -values if desc else values)
            rows = rows[np.lexsort((rows, keyed))]
        elif desc:
            rows = rows[::-1]
        result = (rows, facets)
        with self.cache_lock:
            if len(self.cache) > 16:
                self.cache.clear()
            self.cache[key] = result
        return result

    def row(self, view: str, i: int) -> dict[str, Any]:
        """One list row: what the page's list shows, short."""
        d = self.live.data
        if view in ("accepted", "near-accepted"):
            iw, xw, ow = d.a_words[i]
            row: dict[str, Any] = {
                "k": i, "id": d.a_id[i], "ins": d.a_instruction[i][:_SHORT], "iw": iw, "xw": xw, "ow": ow,
                "r": d.a_rouge[i], "s": d.a_score[i], "c": d.a_checks[i],
            }  # fmt: skip
            if view == "near-accepted":
                row["other"] = _short_neighbour(d.nearest_of("a", i))
            return row
        row = {
            "k": i, "n": d.r_n[i], "reason": d.codes["reason"].values[d.r_reason[i]], "ins": d.r_instruction[i][:_SHORT],
            "out": d.r_output[i][:_SHORT] if not d.r_instruction[i] else "", "detail": d.r_detail[i][:_SHORT],
            "r": d.r_rouge[i], "iw": d.r_words[i][0], "ow": d.r_words[i][2],
        }  # fmt: skip
        if view == "near-rejected":
            row["other"] = _short_neighbour(d.nearest_of("r", i))
        return row

    def record(self, kind: str, key: int) -> dict[str, Any]:
        d = self.live.data
        with self.live.lock:
            if kind == "a" and 0 <= key < d.n_accepted:
                ref = d.resolve(d.a_nearest_id[key], d.a_similar[key])
                return {
                    "kind": "a", "key": key, "ref": d.a_id[key] or f"a{key}", "record": d.accepted_json(key),
                    "words": list(d.a_words[key]), "nearest": d.neighbour_json(ref, d.a_nearest_id[key], d.a_similar[key]),
                }  # fmt: skip
            if kind == "r" and 0 <= key < d.n_rejected:
                ref = d.resolve(d.r_nearest_id[key], d.r_similar[key])
                return {
                    "kind": "r", "key": key, "ref": _rejected_ref(d.r_n[key]), "record": d.rejected_json(key),
                    "words": list(d.r_words[key]), "nearest": d.neighbour_json(ref, d.r_nearest_id[key], d.r_similar[key]),
                }  # fmt: skip
            if kind == "s" and 0 <= key < len(d.seeds):
                seed = d.seeds[key]
                return {
                    "kind": "s", "key": key, "ref": seed.id,
                    "record": {"id": seed.id, "instruction": seed.instruction, "input": seed.input, "output": seed.output},
                    "words": [_words(seed.instruction), _words(seed.input), _words(seed.output)], "nearest": None,
                }  # fmt: skip
        raise KeyError(f"{kind}{key}")

    def lookup(self, ref: str) -> dict[str, Any] | None:
        """Where a permalink points: an accepted id, ``rejected-N`` or a seed id."""
        d = self.live.data
        with self.live.lock:
            if ref in d.id_index:
                return {"kind": "a", "key": d.id_index[ref]}
            if ref.startswith("rejected-") and ref[9:].isdigit() and int(ref[9:]) < d.n_rejected:
                return {"kind": "r", "key": int(ref[9:])}
            if ref.startswith("a") and ref[1:].isdigit() and int(ref[1:]) < d.n_accepted:
                return {"kind": "a", "key": int(ref[1:])}
            if ref in d.seed_by_id:
                return {"kind": "s", "key": d.seed_by_id[ref]}
        return None

    def export_lines(self, params: dict[str, str]) -> Iterator[bytes]:
        rows, _ = self.indices(params)
        view = params.get("view", "accepted")
        d = self.live.data
        for i in rows.tolist():
            if view == "accepted":
                obj = d.accepted_json(i)
            elif view == "rejected":
                obj = d.rejected_json(i)
            else:
                side = view == "near-accepted"
                record = d.accepted_json(i) if side else d.rejected_json(i)
                obj = {"rouge_l": record.get("rouge_l"), "candidate": record, "nearest": d.nearest_of("a" if side else "r", i)}
                if obj["nearest"]:
                    obj["nearest"].pop("key", None)
                    obj["nearest"].pop("kind", None)
            yield (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")

    def flag_lines(self) -> Iterator[bytes]:
        for ref, flag in sorted(self.flags.snapshot().items()):
            where = self.lookup(ref)
            record = self.record(where["kind"], where["key"])["record"] if where else None
            line = {
                "ref": ref, "kind": flag.get("kind"), "note": flag.get("note", ""), "flagged_at": flag.get("at"),
                "record": record,
            }  # fmt: skip
            yield (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")


def _short_neighbour(neighbour: dict[str, Any] | None) -> dict[str, Any] | None:
    if neighbour is None:
        return None
    short = neighbour["instruction"][:_SHORT]
    return {"kind": neighbour["kind"], "key": neighbour.get("key"), "id": neighbour["id"], "ins": short}


class ReportServer:
    """``selfinstruct report RUN --serve``: the report page and its JSON API on 127.0.0.1.

    Start with ``start()`` (background threads) or ``serve_forever()``; ``url`` is where it
    listens. A loader thread reads the run's files in steps and keeps following them.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        seed_tasks: str | os.PathLike[str] | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.directory = Path(run_dir)
        _check_run_dir(self.directory)
        self.live = _LiveRun(self.directory, _load_seeds(seed_tasks))
        self.flags = _Flags(self.directory / FLAGS_FILE)
        self.engine = _Engine(self.live, self.flags)
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._stats_cache: tuple[int, dict[str, Any]] | None = None
        self._stats_lock = threading.Lock()
        self._page: bytes | None = None
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; pass another --port (0 picks a free one)"
            ) from exc
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/"
        self._threads: list[threading.Thread] = []

    def _load_loop(self) -> None:
        while not self._stop.is_set():
            try:
                changed = self.live.poll()
            except SelfInstructError as exc:
                log.warning(f"report: {exc}")
                changed = 0
            if changed >= 10_000:
                # Bulk loading: these rows stay for the server's life, so stop the collector rescanning them.
                gc.freeze()
            elif not changed:
                self.live.loading = False
                self._stop.wait(self.poll_seconds)

    def start(self, *, follow: bool = True) -> ReportServer:
        """Serve from background threads. ``follow=False``: read the files only on ``refresh()``."""
        if self._threads:
            return self  # already serving
        if follow:
            self.live.poll(_FIRST_CHUNK)  # a first step before listening: the first page already has rows
        serve = lambda: self.httpd.serve_forever(poll_interval=0.1)  # noqa: E731 - quick to stop
        targets = [serve, *([self._load_loop] if follow else [])]
        for target in targets:
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def refresh(self) -> None:
        """Read the files to their current end now (what the loader thread does in steps)."""
        while self.live.poll():
            pass
        self.live.loading = False

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until the files have been read to their current end (for tests and benchmarks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.live.loading:
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._stop.wait(0.01)
        return True

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> ReportServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- answers --------------------------------------------------------------------------------

    def page(self) -> bytes:
        if self._page is None:
            boot = {"v": 1, "meta": {"mode": "serve", "title": self.directory.resolve().name}}
            title = f"{self.directory.resolve().name} · selfinstruct report"
            self._page = "".join(render_page(boot, title=title, serve=True)).encode("utf-8")
        return self._page

    def meta(self) -> dict[str, Any]:
        with self.live.lock:
            meta = _meta(self.live.data, mode="serve")
            meta["version_data"] = self.live.version
        meta["loading"] = self.live.loading
        meta["threshold"] = self.stats()["rouge"]["threshold"] if not self.live.loading else None
        meta["flags"] = len(self.flags.snapshot())
        return meta

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            version = self.live.version
            if self._stats_cache is None or self._stats_cache[0] != version:
                with self.live.lock:
                    self._stats_cache = (version, run_stats(self.live.data))
            return self._stats_cache[1]


def _handler_for(server: ReportServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "selfinstruct-report"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            log.debug("report: " + format % args)

        def _host_ok(self) -> bool:
            # A page elsewhere could point a host name at 127.0.0.1 (DNS rebinding): only our own names.
            host = (self.headers.get("Host") or "").lower()
            return host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}")

        def _send(self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: Any, status: int = 200) -> None:
            body = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")
            self._send(status, body, "application/json; charset=utf-8")

        def _stream(self, lines: Iterator[bytes], filename: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
            self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
            self.send_header("Cache-Control", "no-store")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            buffer: list[bytes] = []
            size = 0
            for line in lines:
                buffer.append(line)
                size += len(line)
                if size > 1 << 16:
                    self._chunk(b"".join(buffer))
                    buffer, size = [], 0
            if buffer:
                self._chunk(b"".join(buffer))
            self.wfile.write(b"0\r\n\r\n")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            if not self._host_ok():
                self._send(403, b"forbidden host", "text/plain")
                return
            url = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            try:
                self._get(url.path, params)
            except (ValueError, KeyError, IndexError) as exc:  # IndexError: the run was re-read meanwhile
                self._json({"error": str(exc)}, 400)
            except BrokenPipeError:
                pass

        def _get(self, path: str, params: dict[str, str]) -> None:
            engine = server.engine
            if path in ("/", "/index.html"):
                self._send(200, server.page(), "text/html; charset=utf-8")
            elif path == "/api/meta":
                self._json(server.meta())
            elif path == "/api/stats":
                self._json(server.stats())
            elif path == "/api/list":
                rows, facets = engine.indices(params)
                offset = max(0, int(params.get("offset", "0")))
                limit = min(_PAGE_LIMIT, max(0, int(params.get("limit", "200"))))
                view = params.get("view", "accepted")
                with server.live.lock:
                    page = [engine.row(view, i) for i in rows[offset : offset + limit].tolist()]
                answer: dict[str, Any] = {"total": int(rows.size), "offset": offset, "rows": page, "facets": facets}
                if "locate" in params:  # where a permalinked record sits in this list, -1 when filtered out
                    hits = np.flatnonzero(rows == int(params["locate"]))
                    answer["position"] = int(hits[0]) if hits.size else -1
                self._json(answer)
            elif path == "/api/record":
                self._json(engine.record(params.get("kind", ""), int(params.get("key", "-1"))))
            elif path == "/api/lookup":
                self._json(engine.lookup(params.get("ref", "")))
            elif path == "/api/flags":
                if params.get("download") == "1":
                    self._stream(engine.flag_lines(), "flags.jsonl")
                else:
                    self._json(server.flags.snapshot())
            elif path == "/api/export":
                self._stream(engine.export_lines(params), f"{params.get('view', 'accepted')}.jsonl")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802 - the base class's name
            # The custom header cannot be sent cross-site without a CORS preflight, which we never allow.
            if not self._host_ok() or self.headers.get("X-Selfinstruct") != "1":
                self._send(403, b"forbidden", "text/plain")
                return
            if urlsplit(self.path).path != "/api/flags":
                self._send(404, b"not found", "text/plain")
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if length > 1 << 20:
                    raise ValueError("flag too large")
                body = json.loads(self.rfile.read(length))
                ref, kind = body.get("ref"), body.get("kind")
                if not isinstance(ref, str) or not ref or kind not in ("accepted", "rejected", "seed"):
                    raise ValueError("a flag needs a ref and a kind (accepted, rejected or seed)")
                note = body.get("note", "")
                line = server.flags.set(ref, kind, bool(body.get("flagged", True)), note if isinstance(note, str) else "")
            except (ValueError, AttributeError) as exc:
                self._json({"error": str(exc)}, 400)
                return
            except StoreError as exc:
                self._json({"error": str(exc)}, 500)
                return
            self._json(line)

    return Handler


def serve_report(
    run_dir: str | os.PathLike[str],
    *,
    port: int = 8765,
    seed_tasks: str | os.PathLike[str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the report of ``run_dir`` on 127.0.0.1 until interrupted (Ctrl-C returns normally)."""
    server = ReportServer(run_dir, port=port, seed_tasks=seed_tasks)
    server.start()
    if announce:
        announce(server.url)
    try:
        server._stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()

