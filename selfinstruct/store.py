"""The run directory on disk: append-only JSONL files plus a small ``run.json``.

Layout of ``DIR``::

    instructions.jsonl   one accepted task a line; the source of truth for the count
    rejected.jsonl       one rejected candidate (or unparseable answer) a line, with ``reason``
    run.json             config, fingerprint, counters, token usage (rewritten atomically)
    .lock                held with flock while a ``generate`` runs

Every line is written with a single ``write`` and flushed before the task counts, so a crash can at
worst leave one torn last line; opening the store cuts it off. Nothing is ever rewritten in place.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from .errors import LockedError, StoreError

__all__ = [
    "ACCEPTED_FILE",
    "REJECTED_FILE",
    "RUN_FILE",
    "SCHEMA_VERSION",
    "RunStore",
    "read_accepted",
    "read_jsonl",
    "read_run",
]

SCHEMA_VERSION = 1
ACCEPTED_FILE = "instructions.jsonl"
REJECTED_FILE = "rejected.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _cut_torn_tail(path: Path) -> int:
    """Truncate an unfinished last line (no newline, or not JSON); return bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as fh:
        # The torn part is at most one line; read back far enough to find the previous newline.
        chunk = min(size, 1 << 20)
        fh.seek(size - chunk)
        tail = fh.read(chunk)
        keep = size
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = size - chunk + cut + 1 if cut >= 0 else 0
        else:
            # Complete last line: cut it only if it is not valid JSON (written partly, then a newline).
            body = tail[:-1]
            start = body.rfind(b"\n") + 1
            try:
                json.loads(body[start:])
            except ValueError:
                keep = size - chunk + start
        if keep < size:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
    return size - keep


def read_jsonl(path: Path, *, tolerate_torn_tail: bool = True) -> list[dict[str, Any]]:
    """Read a JSONL file written by the store. A torn last line (crash mid-write) is skipped."""
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            if tolerate_torn_tail and number >= len(lines) - 1:
                break
            raise StoreError(
                f"{path}:{number}: not valid JSON ({getattr(exc, 'msg', exc)}); restore the file or delete that line"
            ) from exc
        if not isinstance(record, dict):
            raise StoreError(f"{path}:{number}: expected a JSON object; delete that line")
        records.append(record)
    return records


def read_accepted(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The accepted tasks of a run directory, in the order they were accepted."""
    directory = Path(out_dir)
    path = directory / ACCEPTED_FILE
    if not directory.is_dir():
        raise StoreError(f"{directory} is not a directory; pass the --output-dir of a generate run")
    if not path.exists():
        raise StoreError(f"{path} does not exist; is {directory} the output of `selfinstruct generate`?")
    return read_jsonl(path)


def read_run(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run.json`` of a run directory, or ``{}`` when there is none yet."""
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StoreError(f"{path} is not valid JSON ({exc}); delete it to start its counters afresh") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{path} does not hold a JSON object; delete it to start its counters afresh")
    return data


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


class RunStore:
    """Exclusive, append-only access to one run directory (a context manager).

    ``open()`` takes the lock, repairs torn tails and loads what is there; ``append_*`` write one
    line each and flush it, so a record is on disk (in the OS) before the caller counts it.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir)
        self.accepted: list[dict[str, Any]] = []
        self._lock_fh: IO[str] | None = None
        self._accepted_fh: IO[str] | None = None
        self._rejected_fh: IO[str] | None = None

    def __enter__(self) -> RunStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def accepted_path(self) -> Path:
        return self.dir / ACCEPTED_FILE

    @property
    def rejected_path(self) -> Path:
        return self.dir / REJECTED_FILE

    @property
    def run_path(self) -> Path:
        return self.dir / RUN_FILE

    def open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create output directory {self.dir}: {exc.strerror}") from exc
        if not self.dir.is_dir():
            raise StoreError(f"{self.dir} exists and is not a directory; choose another --output-dir")
        self._take_lock()
        for stale in self.dir.glob(".run-*.json"):  # a crash during write_run leaves its temp file
            stale.unlink(missing_ok=True)
        try:
            _cut_torn_tail(self.accepted_path)
            _cut_torn_tail(self.rejected_path)
            self.accepted = read_jsonl(self.accepted_path, tolerate_torn_tail=False)
            self._accepted_fh = self.accepted_path.open("a", encoding="utf-8")
            self._rejected_fh = self.rejected_path.open("a", encoding="utf-8")
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        path = self.dir / LOCK_FILE
        try:
            fh = path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise StoreError(f"cannot write to {self.dir}: {exc.strerror}; check its permissions") from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                fh.close()
                raise StoreError(f"cannot lock {path}: {exc.strerror}") from exc
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise LockedError(
                f"{self.dir} is in use by another `selfinstruct generate` (pid {holder}); "
                "wait for it to finish or stop it, or pick another --output-dir"
            ) from exc
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def close(self) -> None:
        for fh in (self._accepted_fh, self._rejected_fh):
            if fh is not None and not fh.closed:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
        self._accepted_fh = self._rejected_fh = None
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def append_accepted(self, record: dict[str, Any]) -> None:
        """Write one accepted task; it is on disk when this returns."""
        if self._accepted_fh is None:
            raise StoreError("the store is not open")
        self._accepted_fh.write(_dumps(record))
        self._accepted_fh.flush()
        self.accepted.append(record)

    def append_rejected(self, record: dict[str, Any]) -> None:
        if self._rejected_fh is None:
            raise StoreError("the store is not open")
        self._rejected_fh.write(_dumps(record))

    def sync(self) -> None:
        """Push both files to stable storage (survives power loss, not only a crash)."""
        for fh in (self._accepted_fh, self._rejected_fh):
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())

    def read_run(self) -> dict[str, Any]:
        return read_run(self.dir)

    def write_run(self, data: dict[str, Any]) -> None:
        """Replace run.json atomically (temp file + rename), so a crash never leaves half of it."""
        fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".json", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, ensure_ascii=False, indent=2, sort_keys=False)
                fh.write("\n")
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; run.json is not secret
            os.replace(tmp, self.run_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
