"""Judging on a core of its own: the :class:`~selfinstruct.judge.Judge` in a child process.

Parsing, the filters and the ROUGE-L pool cost more CPU than the HTTP exchange of an answer, and
on one event loop they cap the whole run near what one core judges. Here the event loop only
moves bytes: answers go to a child (``python -m selfinstruct.judge_worker``, so nothing of the
caller's script is re-imported, as multiprocessing's spawn would) and verdicts come back.

Exactness is unchanged: the child is the only decider, judges answers one at a time in the
order they were sent, and its pool holds every task it accepted, committed or not yet; it also
keeps the room left below the target, so it never accepts past it. The engine commits each
verdict as it arrives, in order. A killed parent closes the pipe and the child exits; a child
that dies fails the run with a message, and the same command resumes.

Once its pool is built, the child forks (where it can): the decider then only asks "is anything
above the threshold?" and the fork, holding the same pool, fills in the exact nearest of each
accepted task -- the costlier search -- while the decider goes on. Verdicts pass through the fork
in order, so the parent still gets them one by one, complete. See :func:`_split`.

Messages are length-prefixed pickles over the child's stdin/stdout (its own code at both ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import mmap
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import traceback
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, overload

from .errors import SelfInstructError
from .filters import FilterConfig
from .judge import Judge, Verdict
from .records import AcceptedTask, SeedTask
from .store import release_freed_memory, without_gc

__all__ = ["JudgeWorker", "JudgeWorkerDied", "worthwhile"]

_HEADER = struct.Struct("!Q")


class JudgeWorkerDied(SelfInstructError):
    """The judging process ended before the run did."""


@dataclass(frozen=True)
class _Setup:
    filters: FilterConfig
    threshold: float
    tokenizer: str
    seeds: list[SeedTask]
    accepted_file: str  # read by the child while the parent opens the store


@dataclass(frozen=True)
class _Go:
    """The store is open: the child's pool must hold these tasks; then judging starts."""

    count: int
    last_id: str
    next_task_number: int
    room: int  # tasks still wanted


@dataclass(frozen=True)
class _Pool:
    """The pool, sent when the child's own reading of the file did not match the store."""

    pairs: list[tuple[str, str]]  # (instruction, id) of every accepted task, in order


def worthwhile() -> bool:
    """A second process pays only with a second core to run it on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores >= 2


# More verdicts than this waiting for the fork: the decider fills in the nearest of the next
# answer's accepted tasks itself, so that neither process idles while the other is behind.
_BACKLOG = 2


class _Backlog:
    """Verdicts the decider has handed to the fork and the fork has not passed on yet: the fork
    counts what it passes on in memory both processes share; the decider reads it."""

    def __init__(self) -> None:
        self._passed_on = mmap.mmap(-1, 8)  # shared: created before the fork
        self.sent = 0  # the decider's own count

    def passed_on(self) -> None:
        struct.pack_into("q", self._passed_on, 0, struct.unpack_from("q", self._passed_on)[0] + 1)

    def waiting(self) -> int:
        return self.sent - struct.unpack_from("q", self._passed_on)[0]


def _send(fh: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_HEADER.pack(len(data)) + data)
    fh.flush()


def _receive(fh: IO[bytes]) -> Any:
    """The next message, or EOFError when the other side is gone."""
    head = fh.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    size = _HEADER.unpack(head)[0]
    data = fh.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class JudgeWorker:
    """The parent's end: ``await start(...)``, then ``await judge(...)`` per answer, ``close()``."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._sequence = 0
        self._dead: JudgeWorkerDied | None = None
        self._closing = False
        self._setup: asyncio.Future[Any] | None = None

    def launch(
        self, *, filters: FilterConfig, threshold: float, tokenizer: str, seeds: Sequence[SeedTask], accepted_file: str
    ) -> None:
        """Start the child; it builds its pool from ``accepted_file`` while the caller opens the store."""
        self._loop = asyncio.get_running_loop()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = "1"  # no BLAS thread pool: nothing here uses it, and the child forks
        # `python -m` puts its working directory first on sys.path: run it where this very package
        # lies, so a `selfinstruct` folder in the user's directory (another checkout) is not imported.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "selfinstruct.judge_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=_package_root(),
        )  # fmt: skip
        threading.Thread(target=self._write_loop, name="judge-worker-send", daemon=True).start()
        threading.Thread(target=self._read_loop, name="judge-worker-receive", daemon=True).start()
        self._setup = self._call(_Setup(filters=filters, threshold=threshold, tokenizer=tokenizer, seeds=list(seeds),
                                        accepted_file=os.path.abspath(accepted_file)))  # fmt: skip

    async def start(self, accepted: Sequence[AcceptedTask], *, next_task_number: int, room: int) -> None:
        """Check the child's pool against the store's tasks (sending them if it differs) and begin."""
        assert self._setup is not None, "launch() first"
        await self._setup  # the child's pool is built (or it failed: raised here)
        last_id = accepted[-1].id if accepted else ""
        go = _Go(count=len(accepted), last_id=last_id, next_task_number=next_task_number, room=room)
        if not await self._call(go):
            # The file changed under the child (a repair): send the pool as the store has it.
            await self._call(_Pool([(a.instruction, a.id) for a in accepted]))
            if not await self._call(go):
                raise JudgeWorkerDied("the judging process could not build the same pool as the store")

    def _call(self, payload: Any) -> asyncio.Future[Any]:
        assert self._loop is not None
        if self._dead is not None:
            raise self._dead
        self._sequence += 1
        future = self._loop.create_future()
        self._pending[self._sequence] = future
        self._outbox.put((self._sequence, payload))
        return future

    async def judge(self, text: str, *, finish_reason: str | None, continuation_number: int | None) -> Verdict:
        """The verdict on one answer (accepted tasks already count against the room)."""
        verdict: Verdict = await self._call((text, finish_reason, continuation_number))
        return verdict

    def _write_loop(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        stdin = self._proc.stdin
        try:
            while (message := self._outbox.get()) is not None:
                _send(stdin, message)
        except (OSError, ValueError):
            pass  # the child is gone; the reader reports it
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None and self._loop is not None
        try:
            while True:
                sequence, ok, value = _receive(self._proc.stdout)
                try:
                    self._loop.call_soon_threadsafe(self._deliver, sequence, ok, value)
                except RuntimeError:  # the loop is closed: the run is over, nobody waits any more
                    return
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            with contextlib.suppress(OSError):
                self._proc.stdout.close()
            code = self._proc.wait()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._ended, code)

    def _deliver(self, sequence: int, ok: bool, value: Any) -> None:
        future = self._pending.pop(sequence, None)
        if future is None or future.done():
            return  # its waiter was cancelled (a stop): the verdict is dropped, nothing was written
        if ok:
            future.set_result(value)
        else:
            future.set_exception(JudgeWorkerDied(f"the judging process failed: {value}"))

    def _ended(self, code: int) -> None:
        if self._closing:
            return
        self._dead = JudgeWorkerDied(
            f"the judging process ended unexpectedly (exit code {code}); everything committed is on disk: "
            "rerun the same command to resume"
        )
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._dead)
        self._pending.clear()

    async def close(self) -> None:
        self._closing = True
        self._outbox.put(None)
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, _wait_or_kill, proc)
        except RuntimeError:  # no executor at interpreter shutdown
            _wait_or_kill(proc)
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()


def _wait_or_kill(proc: subprocess.Popen[bytes]) -> None:
    # The child keeps nothing that lasts (the parent writes every record): no need to wait for it,
    # which could take seconds while it is still reading a big pool.
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the child ------------------------------------------------------------------------------------


class _Strings(Sequence[str]):
    """Strings back to back in one buffer (UTF-8, lone surrogates kept): about 50 bytes less each
    than a list of str, 100 MB at a million tasks' instructions and ids, held while the pool is built."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ends = array("q")

    def append(self, text: str) -> None:
        self._buf += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._buf))

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        end = self._ends[index]  # raises IndexError past either end
        start = self._ends[index - 1] if index % len(self._ends) else 0
        return self._buf[start:end].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        buf, start = self._buf, 0
        for end in self._ends:
            yield buf[start:end].decode("utf-8", "surrogatepass")
            start = end


def _pool_from_file(judge: Judge, path: str) -> tuple[int, str]:
    """Admit the tasks of ``path`` the way the store reads them (unreadable lines skipped)."""
    texts = _Strings()
    ids = _Strings()
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return 0, ""
    with fh, without_gc():
        for raw in fh:
            if not raw.endswith(b"\n") or not raw.strip():
                continue  # a torn tail: the store repairs it, and a mismatch is caught by the count
            try:
                data = json.loads(raw)
                text, id_ = data["instruction"], data.get("id", "")
            except (ValueError, KeyError, TypeError):
                continue  # a line the store quarantines; any other difference shows in the count
            if not isinstance(text, str) or not isinstance(id_, str):
                continue
            texts.append(text)
            ids.append(id_)
        judge.admit_many(texts, ids)
    return len(ids), (ids[-1] if ids else "")


def _serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    sequence, setup = _receive(inbox)

    def fresh_judge() -> Judge:
        return Judge(filters=setup.filters, threshold=setup.threshold, tokenizer=setup.tokenizer, seeds=setup.seeds,
                     accepted=(), next_task_number=0)  # fmt: skip

    judge = fresh_judge()
    count, last_id = _pool_from_file(judge, setup.accepted_file)
    release_freed_memory()
    _send(outbox, (sequence, True, None))
    while True:  # until the parent's store agrees with the pool
        sequence, message = _receive(inbox)
        if isinstance(message, _Pool):
            judge = fresh_judge()
            with without_gc():
                judge.admit_many([text for text, _ in message.pairs], [id_ for _, id_ in message.pairs])
            count, last_id = len(message.pairs), message.pairs[-1][1] if message.pairs else ""
            _send(outbox, (sequence, True, None))
            continue
        matches = (count, last_id) == (message.count, message.last_id)
        _send(outbox, (sequence, True, matches))
        if matches:
            judge.next_task_number = message.next_task_number
            room = message.room
            break
    outbox, backlog = _split(judge, inbox, outbox)
    while True:
        sequence, (text, finish_reason, continuation_number) = _receive(inbox)
        if backlog is not None:
            judge.nearest_here = backlog.waiting() > _BACKLOG
            backlog.sent += 1
        try:
            verdict = judge.judge(text, finish_reason=finish_reason, continuation_number=continuation_number, room=room)
        except Exception:  # noqa: BLE001 - reported to the parent, which stops the run with it
            _send(outbox, (sequence, False, traceback.format_exc(limit=8)))
            return
        room -= len(verdict.accepted)
        _send(outbox, (sequence, True, verdict))


def _split(judge: Judge, inbox: IO[bytes], outbox: IO[bytes]) -> tuple[IO[bytes], _Backlog | None]:
    """Fork a second process that fills in the exact nearest of accepted tasks; return the pipe to
    it and the count of verdicts it has yet to pass on.

    The decision then only asks "is anything above the threshold?", several times cheaper than
    the full nearest-neighbour search, which moves to the fork and overlaps with the next
    decisions. The fork starts from this very pool (no second build, pages shared until
    written), judges nothing, and sees the verdicts in the order they were made, so its pool
    before each accepted task is the decider's. The chain keeps the order: parent -> decider
    -> nearest -> parent. Whoever of the chain ends, the others see end-of-file and exit.
    While the fork is behind (high acceptance, or a large pool where the nearest is the costlier
    search), the decider computes the nearest of some answers itself: exact either way.
    """
    if not hasattr(os, "fork"):
        return outbox, None  # no fork (Windows): decide and compute the nearest here, as before
    release_freed_memory()
    read_end, write_end = os.pipe()
    backlog = _Backlog()
    gc.freeze()  # the pool lives in both processes: keep the collector off its pages
    if os.fork() == 0:
        exit_code = 0
        try:
            os.close(write_end)
            inbox.close()
            with os.fdopen(read_end, "rb") as decided:
                _fill_nearest(judge, decided, outbox, backlog)
        except (EOFError, BrokenPipeError):
            pass
        except BaseException:  # noqa: BLE001 - never return into the decider's code
            exit_code = 1
        finally:
            os._exit(exit_code)
    os.close(read_end)
    outbox.close()
    judge.defer_nearest = True
    return os.fdopen(write_end, "wb"), backlog


def _fill_nearest(judge: Judge, decided: IO[bytes], outbox: IO[bytes], backlog: _Backlog) -> None:
    while True:
        sequence, ok, value = _receive(decided)
        if ok and isinstance(value, Verdict):
            try:
                value = judge.fill_nearest(value)
            except Exception:  # noqa: BLE001 - reported to the parent, which stops the run with it
                _send(outbox, (sequence, False, traceback.format_exc(limit=8)))
                return
        _send(outbox, (sequence, ok, value))
        backlog.passed_on()


def main() -> None:
    # The parent handles signals and ends us by closing the pipe; a Ctrl-C reaches the whole group.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    outbox = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the protocol
    try:
        _serve(sys.stdin.buffer, outbox)
    except EOFError:
        pass
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    # Through the package, so the classes unpickled here are the ones this module's code checks for.
    from selfinstruct.judge_worker import main as package_main

    package_main()
