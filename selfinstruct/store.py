"""The run directory on disk: append-only JSONL files, the settings they were made with, and ``run.json``.

Layout of ``DIR``::

    instructions.jsonl   accepted tasks, one a line: the dataset and the source of truth for the count
    rejected.jsonl       rejected candidates (and unparseable answers), with ``reason``
    requests.jsonl       one line per request answered or given up on: tokens, failures
    settings.json        the generation settings of the run (and of each change allowed later)
    judgments.jsonl      what a judge model said of each task, keyed by task id and judge fingerprint
    judges.json          the settings behind each judge fingerprint (model, rubric, sampling)
    run.json             status, counters and a checkpoint; rebuilt from the files when lost
    *.quarantine         unreadable lines moved out of a file, byte for byte
    .lock                held with flock while a ``generate`` runs

Rules that keep a crash (SIGKILL, power cut, full disk) from losing or duplicating anything:

* Every line is appended whole and flushed before the next step counts it; nothing is rewritten
  in place. A crash leaves at most a torn last line.
* Opening repairs: a torn tail is cut back to the last newline however far that is (a complete
  JSON record that only lacks its newline is kept); an unreadable line is moved to the file's
  ``.quarantine`` with a notice, never dropped, never taking good lines with it.
* Counters are derived from the files. ``run.json`` keeps a checkpoint (byte offsets and the
  counts up to them) so a resume reads only what was appended since.
* Task ids and request numbers continue from the highest ever written (max, not count).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TypeVar, overload

from .errors import LockedError, StoreError
from .records import (
    SCHEMA_VERSION,
    AcceptedTask,
    Counters,
    Judgment,
    RecordError,
    Rejection,
    RequestRecord,
    SelfInstructTask,
)

__all__ = [
    "ACCEPTED_FILE",
    "AcceptedTasks",
    "REJECTED_FILE",
    "REQUESTS_FILE",
    "TASKS_FILE",
    "JUDGMENTS_FILE",
    "JUDGES_FILE",
    "RUN_FILE",
    "SETTINGS_FILE",
    "RunStore",
    "read_accepted",
    "read_accepted_records",
    "read_judges",
    "read_judgments",
    "read_run",
    "scan_counters",
    "settings_fingerprint",
]

ACCEPTED_FILE = "instructions.jsonl"
REJECTED_FILE = "rejected.jsonl"
REQUESTS_FILE = "requests.jsonl"
TASKS_FILE = "tasks.jsonl"  # --method self-instruct: finished tasks with their instances
JUDGMENTS_FILE = "judgments.jsonl"  # selfinstruct judge: one line per attempt at a task
JUDGES_FILE = "judges.json"
RUN_FILE = "run.json"
SETTINGS_FILE = "settings.json"
LOCK_FILE = ".lock"
QUARANTINE_SUFFIX = ".quarantine"

log = logging.getLogger("selfinstruct")

_UMASK = os.umask(0)
os.umask(_UMASK)
_TASK_NUMBER = re.compile(r"^task-(\d+)$")
_CHUNK = 1 << 20
_CHECK_BYTES = 64

R = TypeVar("R")


@contextlib.contextmanager
def without_gc() -> Iterator[None]:
    """Cyclic garbage collection paused: loading a million records creates no cycles, and the
    collector's passes over a growing heap would cost a quarter of the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the OS (glibc only): building a big pool frees hundreds
    of MB of temporaries that would otherwise stay resident for the whole run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # another C library (musl): nothing to do


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of generation settings, stamped on every record made with them."""
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- OS errors ----------------------------------------------------------------------------------


def os_error(exc: OSError, path: Path, doing: str) -> StoreError:
    """One line naming the path, what failed and what to do about it."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free disk space (or raise the quota / file size limit), then rerun the same command to resume"
    elif code in (errno.EACCES, errno.EPERM):
        fix = "check the permissions of the directory and its files, or choose another --output-dir"
    elif code == errno.EROFS:
        fix = "the file system is read-only; choose another --output-dir"
    elif code in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        fix = "a file and a directory are in each other's place; choose another --output-dir"
    else:
        fix = "check the output directory, then rerun the same command to resume"
    reason = exc.strerror or str(exc)
    return StoreError(f"cannot {doing} {path}: {reason}; {fix}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Made once: json.dumps with keyword arguments builds a new encoder for every record.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def _dumps(record: dict[str, Any]) -> bytes:
    text = _encode(record) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot be UTF-8: escape it (\\udXXX), which is valid JSON and reads back the same.
        return (_encode_ascii(record) + "\n").encode("ascii")


def _write_json_atomically(path: Path, data: Any) -> None:
    """Temp file, fsync, rename, fsync the directory: the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; these files hold no secret
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- repair ------------------------------------------------------------------------------------


def _last_newline(fh: IO[bytes], size: int) -> int:
    """Offset of the last b"\\n" in the file, or -1; reads backwards in chunks, however far."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        fh.seek(start)
        found = fh.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found
        end = start
    return -1


def _quarantine(path: Path, lines: list[bytes]) -> Path:
    """Append the raw lines to PATH.quarantine and push them to disk before anything is removed."""
    target = path.with_name(path.name + QUARANTINE_SUFFIX)
    with target.open("ab") as fh:
        for raw in lines:
            fh.write(raw if raw.endswith(b"\n") else raw + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return target


def _repair_tail(path: Path, notices: list[str]) -> None:
    """Make the file end in a newline without losing a complete record."""
    if not path.exists():
        return
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        cut = _last_newline(fh, size) + 1
        fh.seek(cut)
        tail = fh.read()
        try:
            complete = isinstance(json.loads(tail), dict)
        except ValueError:
            complete = False
        if complete:
            # A whole record that only lacks its newline (an editor saved the file): keep it.
            fh.seek(size)
            fh.write(b"\n")
        else:
            if tail.strip(b"\x00 \t\r\n"):
                moved = _quarantine(path, [tail])
                notices.append(
                    f"{path.name}: moved an unfinished last line ({len(tail)} bytes, left by a crash) to {moved.name}"
                )
            else:
                notices.append(f"{path.name}: cut {len(tail)} bytes of zeros or blanks left at its end by a crash")
            fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())


def _read_records(
    path: Path,
    parse: Callable[[Any], R],
    *,
    offset: int = 0,
    first_line: int = 1,
    repair: bool,
    notices: list[str],
) -> list[R]:
    """Records of PATH from byte ``offset``. Unreadable lines are moved to quarantine (``repair``)
    or skipped with a notice (read-only views of a run that may be writing)."""
    records: list[R] = []
    _scan_records(path, parse, lambda _, record: records.append(record), offset=offset, first_line=first_line,
                  repair=repair, notices=notices)  # fmt: skip
    return records


def _scan_records(
    path: Path,
    parse: Callable[[Any], R],
    keep: Callable[[int, R], None],
    *,
    offset: int = 0,
    first_line: int = 1,
    repair: bool,
    notices: list[str],
) -> bool:
    """Call ``keep(start, record)`` for each readable record of PATH from byte ``offset``, ``start``
    being where its line begins; handle unreadable lines as :func:`_read_records` says. Returns
    True when lines were moved out of the file (the starts given before then no longer hold)."""
    if not path.exists():
        return False
    bad: list[tuple[int, bytes, str]] = []
    # Line by line: a million-task file is never held whole in memory beside its records.
    with path.open("rb") as fh:
        fh.seek(offset)
        position = offset
        for number, raw in enumerate(fh, first_line):
            start = position
            position += len(raw)
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            elif not repair:
                break  # a line still being written (or torn): not ours to judge yet
            if not raw.strip():
                continue
            try:
                keep(start, parse(json.loads(raw)))
            except (ValueError, RecordError) as exc:
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                bad.append((number, raw, why))
    if not bad:
        return False
    where = ", ".join(str(n) for n, _, _ in bad[:5]) + (" ..." if len(bad) > 5 else "")
    first_why = bad[0][2]
    if "newer selfinstruct" in first_why:
        raise StoreError(f"{path}:{bad[0][0]}: {first_why}")
    if not repair:
        notices.append(f"{path.name}: skipped {len(bad)} unreadable line(s) (line {where}: {first_why})")
        return False
    moved = _quarantine(path, [raw for _, raw, _ in bad])
    _rewrite_without(path, offset, {n - first_line for n, _, _ in bad})
    notices.append(
        f"{path.name}: moved {len(bad)} unreadable line(s) (line {where}: {first_why}) to {moved.name}; "
        f"the other lines are kept. Look at them there; nothing else is needed"
    )
    return True


def _line_starts(path: Path) -> tuple[array[int], int]:
    """Where each non-blank line of PATH begins, and the file's size."""
    starts = array("q")
    position = 0
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                starts.append(position)
            position += len(raw)
    return starts, position


def _rewrite_without(path: Path, offset: int, drop: set[int]) -> None:
    """Rewrite PATH without the lines numbered ``drop`` (0 = the first line at ``offset``), atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            remaining = offset
            while remaining:  # the part before offset was read earlier and is known good
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                out.write(chunk)
                remaining -= len(chunk)
            for i, raw in enumerate(src):
                if i not in drop:
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_check(path: Path, offset: int) -> str | None:
    """Hash of the bytes just before ``offset``: tells whether a checkpoint still fits the file."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size < offset:
                return None
            start = max(0, offset - _CHECK_BYTES)
            fh.seek(start)
            return hashlib.sha256(fh.read(offset - start)).hexdigest()[:16]
    except FileNotFoundError:
        return hashlib.sha256(b"").hexdigest()[:16] if offset == 0 else None


# -- read-only views ------------------------------------------------------------------------------


def read_run(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run.json`` of a run directory, or ``{}`` when there is none (or it is unreadable)."""
    path = Path(out_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError):
        return {}
    except OSError as exc:
        raise os_error(exc, path, "read") from exc
    return data if isinstance(data, dict) else {}


def _check_run_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise StoreError(f"{directory} is not a directory; pass the --output-dir of a generate run")
    if not (directory / ACCEPTED_FILE).exists():
        raise StoreError(
            f"{directory / ACCEPTED_FILE} does not exist; is {directory} the output of `selfinstruct generate`?"
        )


def _read_run_file(out_dir: str | os.PathLike[str], name: str, parse: Callable[[Any], R]) -> list[R]:
    """Records of one file of a run, read-only: safe while a run is writing it (never locks)."""
    directory = Path(out_dir)
    _check_run_dir(directory)
    notices: list[str] = []
    try:
        records = _read_records(directory / name, parse, repair=False, notices=notices)
    except OSError as exc:
        raise os_error(exc, directory / name, "read") from exc
    for notice in notices:
        log.warning(notice)
    return records


def read_accepted_records(out_dir: str | os.PathLike[str]) -> list[AcceptedTask]:
    """The accepted tasks of a run directory, in order. Safe while a run is writing it."""
    return _read_run_file(out_dir, ACCEPTED_FILE, AcceptedTask.from_json)


def _checked_dict(data: Any) -> dict[str, Any]:
    AcceptedTask.from_json(data)
    return data


def read_accepted(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The accepted tasks as the JSON objects on disk (checked, with every field they carry)."""
    return _read_run_file(out_dir, ACCEPTED_FILE, _checked_dict)


def read_self_instruct_tasks(out_dir: str | os.PathLike[str]) -> list[SelfInstructTask]:
    """The finished tasks of a ``--method self-instruct`` run, with their instances."""
    return _read_run_file(out_dir, TASKS_FILE, SelfInstructTask.from_json)


def read_judgments(out_dir: str | os.PathLike[str]) -> list[Judgment]:
    """Every judge attempt of a run, in order (empty when it was never judged)."""
    return _read_run_file(out_dir, JUDGMENTS_FILE, Judgment.from_json)


def read_judges(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The judges a run was judged with, oldest first: ``{fingerprint, since, settings}``."""
    return _read_history(Path(out_dir) / JUDGES_FILE, "judges")


def _read_history(path: Path, key: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        history = data[key]
        if isinstance(history, list) and all(isinstance(h, dict) and "fingerprint" in h for h in history):
            return history
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        pass
    except OSError as exc:
        raise os_error(exc, path, "read") from exc
    raise StoreError(f"{path} is unreadable; move it aside and judge again (the judgments themselves are kept)")


def read_rejections(out_dir: str | os.PathLike[str]) -> list[Rejection]:
    """The rejected candidates of a run, in order."""
    return _read_run_file(out_dir, REJECTED_FILE, Rejection.from_json)


def scan_counters(out_dir: str | os.PathLike[str]) -> Counters:
    """The run's counters, counted from its files (not from run.json, which a crash leaves behind)."""
    directory = Path(out_dir)
    _check_run_dir(directory)
    notices: list[str] = []
    counters = Counters()
    counters.accepted = len(_read_records(directory / ACCEPTED_FILE, lambda d: d, repair=False, notices=notices))
    for rejection in _read_records(directory / REJECTED_FILE, Rejection.from_json, repair=False, notices=notices):
        counters.add_rejection(rejection)
    requests = _read_records(directory / REQUESTS_FILE, RequestRecord.from_json, repair=False, notices=notices)
    if requests:
        for record in requests:
            counters.add_request(record)
    else:
        _add_legacy_counters(counters, read_run(directory))
    for notice in notices:
        log.warning(notice)
    return counters


_LEGACY_KEYS = (
    "requests",
    "answers",
    "failed_requests",
    "incomplete_tasks",
    "surplus",
    "prompt_tokens",
    "completion_tokens",
)


def _legacy_carried(run: dict[str, Any]) -> dict[str, int] | None:
    """Request counters of a run.json written before requests.jsonl existed."""
    old = run.get("counters")
    if not isinstance(old, dict):
        return None
    carried = {
        k: int(v) for k in _LEGACY_KEYS if isinstance(v := old.get(k), int) and not isinstance(v, bool) and v > 0
    }
    return carried or None


def _add_legacy_counters(counters: Counters, run: dict[str, Any]) -> None:
    carried = _legacy_carried(run)
    if carried:
        counters.add_request(RequestRecord(request=-1, outcome="carried_over", carried=carried))


# -- the store ------------------------------------------------------------------------------------


class AcceptedTasks(Sequence[AcceptedTask]):
    """The accepted tasks of a store, in order, each read back from ``instructions.jsonl`` when asked for.

    Only where each record's line begins is kept (8 bytes a task; the records themselves took
    half a GB at a million tasks, for a run that reads a few of them per request). The store
    holds the lock, appends whole lines and never moves one after opening, so a start stays
    valid; a line that does not read back whole means the file was changed under the run.
    """

    def __init__(self, path: Path, starts: array[int] | None = None, end: int = 0) -> None:
        self._path = path
        self._starts = starts if starts is not None else array("q")
        self._end = end  # where the last record's line ends
        self._fh: IO[bytes] | None = None  # opened on first read; the file may not exist before

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> AcceptedTask: ...

    @overload
    def __getitem__(self, index: slice) -> list[AcceptedTask]: ...

    def __getitem__(self, index: int | slice) -> AcceptedTask | list[AcceptedTask]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        n = len(self._starts)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("accepted task index out of range")
        start = self._starts[index]
        end = self._starts[index + 1] if index + 1 < n else self._end
        if self._fh is None:
            self._fh = self._path.open("rb", buffering=0)
        try:
            raw = os.pread(self._fh.fileno(), end - start, start)
        except OSError as exc:
            raise os_error(exc, self._path, "read") from exc
        return self._parse(raw, index)

    def __iter__(self) -> Iterator[AcceptedTask]:
        """In order, reading the file once (the tasks committed once this starts are left out)."""
        for index, raw in self._lines():
            yield self._parse(raw, index)

    def instructions_and_ids(self) -> tuple[list[str], list[str]]:
        """Every task's instruction and id, for a similarity pool: one pass, no full records."""
        texts: list[str] = []
        ids: list[str] = []
        for index, raw in self._lines():
            try:
                data = json.loads(raw)
                text, id_ = data["instruction"], data.get("id", "")  # checked when the store opened
            except (ValueError, KeyError, TypeError) as exc:
                raise self._changed(index) from exc
            texts.append(text)
            ids.append(id_)
        return texts, ids

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        starts, n = self._starts, len(self._starts)
        if not n:
            return
        index, position = 0, starts[0]
        try:
            with self._path.open("rb") as fh:
                fh.seek(position)
                for raw in fh:
                    if position == starts[index]:
                        yield index, raw
                        index += 1
                        if index == n:
                            return
                    position += len(raw)
        except OSError as exc:
            raise os_error(exc, self._path, "read") from exc
        raise self._changed(index)

    def _parse(self, raw: bytes, index: int) -> AcceptedTask:
        # Blank lines may follow a record up to the next one; whitespace is valid JSON around it.
        if not raw.endswith(b"\n"):
            raise self._changed(index)
        try:
            return AcceptedTask.from_json(json.loads(raw))
        except (ValueError, RecordError) as exc:
            raise self._changed(index) from exc

    def _changed(self, index: int) -> StoreError:
        return StoreError(
            f"{self._path}: accepted task {index + 1} no longer reads back as it was written: the file was "
            "changed while the run was writing it; stop the run, then rerun the same command to resume"
        )

    def _append(self, lengths: Sequence[int]) -> None:
        """Count records just appended whole, of these byte lengths, at the end of the file."""
        for length in lengths:
            self._starts.append(self._end)
            self._end += length

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class _Tally:
    """What the store knows of the two files it does not keep in memory."""

    counters: Counters
    max_request: int


class RunStore:
    """Exclusive, append-only access to one run directory (a context manager).

    ``open()`` takes the lock, repairs the files and loads the accepted tasks and the counters;
    ``commit()`` appends one answer's records and flushes them, so they are in the OS (safe from
    a crash of this process) before it returns. ``sync()`` pushes them to stable storage.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir)
        self.accepted = AcceptedTasks(self.path(ACCEPTED_FILE))
        self._stamps: set[str] = set()  # settings fingerprints on the accepted tasks
        self._models: set[str] = set()  # models that made them
        self.tasks: dict[str, SelfInstructTask] = {}  # self-instruct: finished tasks by id
        self.judgments: list[Judgment] = []
        self.counters = Counters()
        self.notices: list[str] = []  # repairs made while opening, for the user to read
        self.next_request = 0
        self.next_task_number = 0
        self.previous_run: dict[str, Any] = {}
        self._lock_fh: IO[str] | None = None
        self._files: dict[str, Any] = {}  # raw (unbuffered) append handles
        self._lines: dict[str, int] = {}
        self._write_failed: StoreError | None = None  # lines in the two files not kept in memory, for the checkpoint
        # Called after each commit with its accepted tasks and finished tasks (generate --judge feeds on it).
        self.on_commit: Callable[[Sequence[AcceptedTask], Sequence[SelfInstructTask]], None] | None = None

    def __enter__(self) -> RunStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path(self, name: str) -> Path:
        return self.dir / name

    # -- opening --------------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise StoreError(f"{self.dir} exists and is not a directory; choose another --output-dir") from exc
        except OSError as exc:
            raise os_error(exc, self.dir, "create the output directory") from exc
        if not self.dir.is_dir():
            raise StoreError(f"{self.dir} exists and is not a directory; choose another --output-dir")
        self._take_lock()
        try:
            self._load()
        except OSError as exc:
            self.close()
            raise os_error(exc, Path(exc.filename or self.dir), "read or repair") from exc
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        for stale in (*self.dir.glob(".run-*.json"), *self.dir.glob(".settings-*.json")):
            stale.unlink(missing_ok=True)  # a crash while replacing a JSON file leaves its temp file
        self.previous_run = self._read_previous_run()
        for name in (ACCEPTED_FILE, REJECTED_FILE, REQUESTS_FILE, TASKS_FILE, JUDGMENTS_FILE):
            _repair_tail(self.path(name), self.notices)
        max_request = self._load_accepted()
        for task in _read_records(self.path(TASKS_FILE), SelfInstructTask.from_json, repair=True, notices=self.notices):
            self.tasks[task.id] = task
        self.judgments = _read_records(
            self.path(JUDGMENTS_FILE), Judgment.from_json, repair=True, notices=self.notices
        )
        tally = self._tally_from_checkpoint() or self._tally_from_scratch()
        self.counters = tally.counters
        self.counters.accepted = len(self.accepted)
        self.next_request = max(tally.max_request, max_request) + 1
        try:
            for name in (ACCEPTED_FILE, REJECTED_FILE, REQUESTS_FILE):  # tasks.jsonl only when used
                # Unbuffered: a commit is one write of whole lines, and a failed write (full disk)
                # must not leave bytes in a buffer that a later flush would append out of order.
                self._files[name] = self.path(name).open("ab", buffering=0)
        except OSError as exc:
            raise os_error(exc, Path(exc.filename or self.dir), "open for writing") from exc
        if not self.path(REQUESTS_FILE).stat().st_size:
            carried = _legacy_carried(self.previous_run)
            if carried:
                # A run from before requests.jsonl: keep its totals as one line, so counters stay derived.
                self.commit(RequestRecord(request=-1, outcome="carried_over", carried=carried, created=now_utc()))

    def _load_accepted(self) -> int:
        """Check every accepted task (quarantining what cannot be read), keep where each begins and
        what the run needs of them all; return the highest request number among them."""
        path = self.path(ACCEPTED_FILE)
        starts = array("q")
        highest = [-1, -1]  # task number, request number

        def keep(start: int, task: AcceptedTask) -> None:
            starts.append(start)
            if (m := _TASK_NUMBER.match(task.id)) and int(m.group(1)) > highest[0]:
                highest[0] = int(m.group(1))
            if task.request > highest[1]:
                highest[1] = task.request
            self._note_stamp_and_model(task)

        with without_gc():
            moved = _scan_records(path, AcceptedTask.from_json, keep, repair=True, notices=self.notices)
        end = path.stat().st_size if path.exists() else 0
        if moved:  # the file was rewritten without its unreadable lines: the starts moved
            starts, end = _line_starts(path)
        self.accepted = AcceptedTasks(path, starts, end)
        self.next_task_number = highest[0] + 1
        return highest[1]

    def _read_previous_run(self) -> dict[str, Any]:
        path = self.path(RUN_FILE)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            if isinstance(data, dict):
                return data
        except (ValueError, UnicodeDecodeError):
            pass
        if raw.strip():
            aside = path.with_name(f"{RUN_FILE}.unreadable-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
            os.replace(path, aside)
            self.notices.append(f"{RUN_FILE} was unreadable; kept it as {aside.name} and rebuilt it from the files")
        return {}

    def _tally_from_checkpoint(self) -> _Tally | None:
        checkpoint = self.previous_run.get("checkpoint")
        if not isinstance(checkpoint, dict):
            return None
        try:
            files = checkpoint["files"]
            counters = Counters.from_json(checkpoint["counters"])
            max_request = int(checkpoint["max_request"])
            positions = {name: (int(files[name]["offset"]), int(files[name]["lines"])) for name in (REJECTED_FILE, REQUESTS_FILE)}
            for name, (offset, _) in positions.items():
                if _file_check(self.path(name), offset) != files[name]["check"]:
                    return None  # the file changed under the checkpoint (restored, edited): count afresh
        except (KeyError, TypeError, ValueError, RecordError):
            return None
        tally = _Tally(counters, max_request)
        offset, lines = positions[REJECTED_FILE]
        self._fold_rejected(tally, offset, lines + 1)
        offset, lines = positions[REQUESTS_FILE]
        self._fold_requests(tally, offset, lines + 1)
        return tally

    def _tally_from_scratch(self) -> _Tally:
        tally = _Tally(Counters(), -1)
        self._fold_rejected(tally, 0, 1)
        self._fold_requests(tally, 0, 1)
        return tally

    def _fold_rejected(self, tally: _Tally, offset: int, first_line: int) -> None:
        self._fold(tally, REJECTED_FILE, Rejection.from_json, tally.counters.add_rejection, offset, first_line)

    def _fold_requests(self, tally: _Tally, offset: int, first_line: int) -> None:
        self._fold(tally, REQUESTS_FILE, RequestRecord.from_json, tally.counters.add_request, offset, first_line)

    def _fold(
        self,
        tally: _Tally,
        name: str,
        parse: Callable[[Any], Rejection | RequestRecord],
        count: Callable[[Any], None],
        offset: int,
        first_line: int,
    ) -> None:
        """Count a file's records from ``offset`` into ``tally`` (repairing what cannot be read)."""
        for record in _read_records(
            self.path(name), parse, offset=offset, first_line=first_line, repair=True, notices=self.notices
        ):
            count(record)
            tally.max_request = max(tally.max_request, record.request)
        self._lines[name] = first_line - 1 + self._count_lines(name, offset)

    def _count_lines(self, name: str, offset: int) -> int:
        path = self.path(name)
        if not path.exists():
            return 0
        with path.open("rb") as fh:
            fh.seek(offset)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(_CHUNK), b""))

    def _take_lock(self) -> None:
        path = self.dir / LOCK_FILE
        try:
            fh = path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise os_error(exc, path, "create the lock file") from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                fh.close()
                raise os_error(exc, path, "lock") from exc
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise LockedError(
                f"{self.dir} is in use by another `selfinstruct generate` (pid {holder}); "
                "wait for it to finish or stop it, or pick another --output-dir"
            ) from exc
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        except OSError:
            pass  # the pid is only a courtesy for the "in use" message; the lock is held
        self._lock_fh = fh

    def close(self) -> None:
        failure: OSError | None = None
        for fh in self._files.values():
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                failure = failure or exc
            finally:
                try:
                    fh.close()
                except OSError:
                    pass
        self._files = {}
        self.accepted.close()
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None
        if failure is not None:
            raise os_error(failure, self.dir, "write to")

    # -- writing --------------------------------------------------------------------------------

    def new_task_id(self) -> str:
        number = self.next_task_number
        self.next_task_number += 1
        return f"task-{number:06d}"

    def new_request_number(self) -> int:
        number = self.next_request
        self.next_request += 1
        return number

    def commit(
        self,
        request: RequestRecord | None,
        accepted: list[AcceptedTask] | tuple[AcceptedTask, ...] = (),
        rejected: list[Rejection] | tuple[Rejection, ...] = (),
        tasks: list[SelfInstructTask] | tuple[SelfInstructTask, ...] = (),
        judgments: list[Judgment] | tuple[Judgment, ...] = (),
    ) -> None:
        """Append one request's records, request line first, and flush them.

        The request line goes first so every task on disk has its request's line; a crash in
        between can only leave tasks out, and a task that is not on disk was never counted.
        """
        if not self._files:
            raise StoreError("the store is not open")
        if self._write_failed is not None:
            raise StoreError(str(self._write_failed))  # the first failure is the one to tell
        # Each file's records, and how to count them once written (given their encoded lines).
        writes: list[tuple[str, Sequence[Any], Callable[[list[bytes]], None]]] = []
        if request is not None:  # None: a decision that needed no request (a task given up on)
            writes.append((REQUESTS_FILE, [request], lambda _: self.counters.add_request(request)))
        if rejected:
            writes.append((REJECTED_FILE, rejected, lambda _: self.counters.add_rejections(rejected)))
        if accepted:
            writes.append((ACCEPTED_FILE, accepted, lambda lines: self._count_accepted(accepted, lines)))
        if tasks:
            writes.append((TASKS_FILE, tasks, lambda _: self.tasks.update((t.id, t) for t in tasks)))
        if judgments:
            writes.append((JUDGMENTS_FILE, judgments, lambda _: self.judgments.extend(judgments)))
        for name, records, count in writes:
            lines = [_dumps(r.to_json()) for r in records]
            data = memoryview(b"".join(lines))
            try:
                fh = self._files.get(name) or self._files.setdefault(name, self.path(name).open("ab", buffering=0))
                while data:
                    written = fh.write(data)
                    data = data[written or 0 :]
            except OSError as exc:
                # What is on disk may now end in a torn line: no more writes, no checkpoint,
                # and the next open repairs the tail.
                self._write_failed = os_error(exc, self.path(name), "write to")
                raise self._write_failed from exc
            # Counted per file as soon as it is written, so memory matches the files even when
            # a later write of the same commit fails.
            count(lines)
            self._lines[name] = self._lines.get(name, 0) + len(records)
        self.counters.accepted = len(self.accepted)
        if self.on_commit is not None and (accepted or tasks):
            self.on_commit(accepted, tasks)

    def _count_accepted(self, accepted: Sequence[AcceptedTask], lines: list[bytes]) -> None:
        self.accepted._append([len(line) for line in lines])
        for task in accepted:
            self._note_stamp_and_model(task)

    def _note_stamp_and_model(self, task: AcceptedTask) -> None:
        if task.settings:
            self._stamps.add(task.settings)
        self._models.add(task.model)

    def sync(self) -> None:
        """Push the files to stable storage (survives power loss, not only a crash)."""
        for name, fh in self._files.items():
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise os_error(exc, self.path(name), "write to") from exc

    def checkpoint(self) -> dict[str, Any] | None:
        """Offsets and counts up to them, for run.json: the next open reads only what follows."""
        if self._write_failed is not None:
            return None  # the files may end in a torn line the counts do not cover
        files = {}
        for name in (REJECTED_FILE, REQUESTS_FILE):
            fh = self._files.get(name)
            offset = fh.tell() if fh is not None else 0
            files[name] = {"offset": offset, "lines": self._lines.get(name, 0), "check": _file_check(self.path(name), offset)}
        max_request = self.next_request - 1
        return {"files": files, "counters": self.counters.to_json(), "max_request": max_request}

    def write_run(self, data: dict[str, Any]) -> None:
        """Replace run.json atomically (and durably), with the checkpoint of this moment."""
        if self._write_failed is None:
            self.sync()
        data = dict(data, schema=SCHEMA_VERSION, checkpoint=self.checkpoint())
        try:
            _write_json_atomically(self.path(RUN_FILE), data)
        except OSError as exc:
            raise os_error(exc, self.path(RUN_FILE), "write") from exc

    # -- settings -------------------------------------------------------------------------------

    def settings_history(self) -> list[dict[str, Any]]:
        """Every set of generation settings this run was made with, oldest first."""
        path = self.path(SETTINGS_FILE)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            history = data["history"]
            if isinstance(history, list) and all(isinstance(h, dict) and "fingerprint" in h for h in history):
                return history
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            self.notices.append(f"{SETTINGS_FILE} is unreadable; the settings are checked against the tasks instead")
        except OSError as exc:
            raise os_error(exc, path, "read") from exc
        legacy = self.previous_run.get("generation")
        if isinstance(legacy, dict):  # runs from before settings.json kept them in run.json only
            return [{"fingerprint": settings_fingerprint(legacy), "since": self.previous_run.get("created", ""), "settings": legacy}]
        return []

    def record_settings(self, settings: dict[str, Any]) -> str:
        """Make ``settings`` the run's current ones (appending to the history); return the fingerprint."""
        fingerprint = settings_fingerprint(settings)
        history = self.settings_history()
        if history and history[-1]["fingerprint"] == fingerprint and self.path(SETTINGS_FILE).exists():
            return fingerprint
        if not history or history[-1]["fingerprint"] != fingerprint:
            history.append({"fingerprint": fingerprint, "since": now_utc(), "settings": settings})
        self._write_history(SETTINGS_FILE, "history", history)
        return fingerprint

    def _write_history(self, name: str, key: str, history: list[dict[str, Any]]) -> None:
        try:
            _write_json_atomically(self.path(name), {"schema": SCHEMA_VERSION, key: history})
        except OSError as exc:
            raise os_error(exc, self.path(name), "write") from exc

    def judges(self) -> list[dict[str, Any]]:
        """Every judge this run was judged with, oldest first."""
        return _read_history(self.path(JUDGES_FILE), "judges")

    def record_judge(self, settings: dict[str, Any]) -> str:
        """Register a judge's settings under their fingerprint (once); return the fingerprint."""
        fingerprint = settings_fingerprint(settings)
        history = self.judges()
        if any(h["fingerprint"] == fingerprint for h in history):
            return fingerprint
        history.append({"fingerprint": fingerprint, "since": now_utc(), "settings": settings})
        self._write_history(JUDGES_FILE, "judges", history)
        return fingerprint

    def fingerprints_on_disk(self) -> set[str]:
        """Settings fingerprints stamped on the accepted tasks (schema 2 records carry one)."""
        return set(self._stamps)

    def models_on_disk(self) -> set[str]:
        """Models named on the accepted tasks ("" for tasks that name none)."""
        return set(self._models)
