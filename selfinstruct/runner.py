"""The public entry points: ``generate`` (blocking) and ``run_generation`` (async).

A session: load and check the seeds, open the store, stop at once if the run is already
finished, start the embedded model when no server is given, find the model, guard the settings,
then hand over to the engine. Every phase can be interrupted: a stop (Ctrl-C, SIGTERM, SIGHUP,
or the caller's ``stop`` event) cancels whatever is awaited, and the store records the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import __version__
from .config import RunConfig, describe_change
from .errors import ConfigError, SeedError, SelfInstructError, error_text
from .records import Counters, SeedTask, Status
from .local import model_server
from .store import RunStore, now_utc, release_freed_memory, settings_fingerprint, without_gc

__all__ = ["RunSummary", "generate", "run_generation"]

log = logging.getLogger("selfinstruct")
T = TypeVar("T")


@dataclass
class RunSummary:
    """How a ``generate`` call ended; ``counters`` are the run's totals, counted from its files."""

    output_dir: Path
    status: Status
    accepted: int
    target: int
    added: int
    counters: Counters
    elapsed_seconds: float
    model: str
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    session_candidates: int = 0
    error: str | None = None
    signal: int | None = None
    self_instruct: tuple[int, int, int] | None = None  # tasks finished, instances, classification tasks
    judge: dict[str, Any] | None = None  # generate --judge: the judge's totals (as in run.json)

    def format(self) -> str:
        c = self.counters
        top = ", ".join(f"{k} {v}" for k, v in c.rejected.most_common(6)) or "none"
        rate = self.added / self.session_candidates if self.session_candidates else 0.0
        tasks = "task" if self.accepted == 1 else "tasks"
        if self.accepted > self.target:
            head = f"{self.status}: {self.accepted} {tasks} (more than the target of {self.target})"
        else:
            head = f"{self.status}: {self.accepted}/{self.target} {tasks}"
        failures = ", ".join(f"{k} {v}" for k, v in c.failures.most_common(4))
        lines = [
            f"{head} in {self.output_dir / 'instructions.jsonl'} (+{self.added} this session, {self.elapsed_seconds:.0f} s)",
            f"  requests {c.requests} (failed {c.failed_requests}{': ' + failures if failures else ''}), "
            f"answers {c.answers}, candidates {c.candidates}, accept rate this session {rate:.0%}",
            f"  rejected: {top}",
            f"  tokens: prompt {c.prompt_tokens}, completion {c.completion_tokens}",
        ]
        for url, e in self.endpoints.items():
            errors = ", ".join(f"{k} {v}" for k, v in e.get("errors", {}).items()) or "none"
            lines.append(
                f"  {url}: {e.get('successes', 0)} answers, errors: {errors}; concurrency {e.get('concurrency_limit')} "
                f"(peak {e.get('concurrency_peak')}), mean latency {e.get('mean_latency_s')} s, rested {e.get('rests', 0)}x"
            )
        if self.self_instruct is not None:
            finished, instances, clf = self.self_instruct
            lines.insert(1, f"  self-instruct: {finished} of {self.accepted} instructions have their decision, "
                            f"{instances} instances, {clf} classification tasks")  # fmt: skip
        if self.judge is not None:
            j = self.judge
            lines.append(
                f"  judge {j['model']} ({j['fingerprint']}): {j['judged']} judged, {j['unjudged']} unjudged; "
                f"tokens: prompt {j['prompt_tokens']}, completion {j['completion_tokens']}"
            )
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


async def _in_thread(fn: Callable[[], T], name: str) -> T:
    """Run blocking work in a daemon thread so the event loop (and Ctrl-C) stays responsive.

    Not the default executor: asyncio.run() waits for its threads at exit, so an interrupted
    50 MB seed check would still hold the process.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome: tuple[Callable[[Any], None], Any] = (future.set_exception, exc)
        else:
            outcome = (future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=target, name=f"selfinstruct-{name}", daemon=True).start()
    return await future


def _load_seeds(config: RunConfig) -> tuple[list[SeedTask], str]:
    from .seeds import check_seeds, load_seed_tasks, seed_fingerprint

    seeds = load_seed_tasks(config.seed_tasks)
    if config.check_seed_file:
        report = check_seeds(
            config.seed_tasks, threshold=config.similarity_threshold, filters=config.filters, tokenizer=config.tokenizer
        )
        for warning in report.warnings:
            log.warning(f"seed file: {warning}")
        if not report.ok:
            errors = report.errors()
            raise SeedError(
                f"seed file {report.path} has {len(errors)} problem(s), first: {errors[0]}; "
                f"see `selfinstruct seeds check {report.path}`, fix them, or pass --no-seed-check"
            )
    needed = config.demos_per_prompt - config.demos_from_machine
    if len(seeds) < needed:
        raise SeedError(
            f"seed file has {len(seeds)} tasks but each prompt needs {needed}; lower --num-prompt-instructions"
        )
    return seeds, seed_fingerprint(seeds)


class _Session:
    """One call of run_generation over one run directory."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config.resolved()
        self.started = time.monotonic()
        self.store: RunStore | None = None
        self.pool: Any = None
        self.engine: Any = None
        self.model = config.model or ""
        self.generation: dict[str, Any] = {}
        self.fingerprint: str | None = None
        self.status: Status = "running"
        self.error: str | None = None
        self.added = 0
        self.judge_stage: Any = None
        self.worker: Any = None  # the judging process, when parsing and filtering run on another core

    # -- run.json -----------------------------------------------------------------------------

    def _elapsed(self) -> float:
        before = self.store.previous_run.get("elapsed_seconds", 0.0) if self.store else 0.0
        before = before if isinstance(before, (int, float)) and not isinstance(before, bool) else 0.0
        return float(before) + (time.monotonic() - self.started)

    def save(self, status: Status | None = None) -> None:
        store = self.store
        if store is None:
            return
        from .llm import redact_url

        previous = store.previous_run
        created = previous.get("created") if isinstance(previous.get("created"), str) else None
        if created is None:
            created = (store.accepted[0].created if store.accepted else "") or now_utc()
        sessions = previous.get("sessions")
        data = {
            "tool": f"selfinstruct {__version__}",
            "status": status or self.status,
            "error": self.error,
            "created": created,
            "updated": now_utc(),
            "sessions": (sessions if isinstance(sessions, int) else 0) + 1,
            "elapsed_seconds": round(self._elapsed(), 3),
            "target": self.config.num_instructions,
            "generation": self.generation or previous.get("generation"),
            "settings_fingerprint": self.fingerprint or previous.get("settings_fingerprint"),
            "session": {
                "endpoints": [redact_url(u) for u in self.config.base_urls] or ["embedded"],
                "concurrency": self.config.concurrency if self.config.concurrency is not None else "auto",
                "max_concurrency": self.config.max_concurrency,
                "request_timeout": self.config.request_timeout,
                "seed_tasks": str(self.config.seed_tasks) if self.config.seed_tasks else "bundled",
            },
            "counters": store.counters.to_json(),
            "endpoints": self.pool.stats() if self.pool is not None else previous.get("endpoints", {}),
            "judge": self.judge_stage.totals() if self.judge_stage is not None else previous.get("judge"),
        }
        store.write_run(data)

    def summary(self) -> RunSummary:
        store = self.store
        return RunSummary(
            output_dir=self.config.output_dir,
            status=self.status,
            accepted=len(store.accepted) if store else 0,
            target=self.config.num_instructions,
            added=self.engine.added if self.engine is not None else 0,
            counters=store.counters.copy() if store else Counters(),
            elapsed_seconds=time.monotonic() - self.started,
            model=self.model,
            endpoints=self.pool.stats() if self.pool is not None else {},
            session_candidates=self.engine.session_candidates if self.engine is not None else 0,
            error=self.error,
            judge=self.judge_stage.totals() if self.judge_stage is not None else None,
            self_instruct=(
                (len(store.tasks), sum(len(t.instances) for t in store.tasks.values()),
                 sum(1 for t in store.tasks.values() if t.is_classification))
                if store and (store.tasks or self.config.method == "self-instruct") else None
            ),  # fmt: skip
        )

    # -- phases -------------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        cfg = self.config
        seeds, seeds_hash = await _in_thread(lambda: _load_seeds(cfg), "seeds")
        store = self.store = RunStore(cfg.output_dir)
        self._launch_worker(seeds)
        try:
            store.open()
        except BaseException:
            await self._close_worker()
            raise
        release_freed_memory()  # reading a big store leaves freed temporaries resident
        try:
            for notice in store.notices:
                log.warning(notice)
            undecided = cfg.method == "self-instruct" and any(a.id not in store.tasks for a in store.accepted)
            if len(store.accepted) >= cfg.num_instructions and not undecided:
                # A finished run is finished: no server is contacted, nothing is started.
                if cfg.judge is not None:
                    log.info("the run is finished; judge its tasks with `selfinstruct judge %s`", cfg.output_dir)
                self.status = "done"
                previous_model = (store.previous_run.get("generation") or {}).get("model")
                self.model = previous_model if isinstance(previous_model, str) else self.model
                self._save_quietly("done")
                return self.summary()
            try:
                async with model_server(cfg.base_urls, cfg.model_path, cfg.output_dir) as base_urls:
                    await self._generate(seeds, seeds_hash, base_urls)
                self.status = "done"
            except asyncio.CancelledError:
                self.status = "done" if len(store.accepted) >= cfg.num_instructions else "interrupted"
                raise
            except BaseException as exc:
                self.status = "failed"
                self.error = error_text(exc)
                raise
            finally:
                self._save_quietly()
                if self.engine is not None:
                    self.engine.progress.close()
            return self.summary()
        finally:
            store.close()
            await self._close_worker()

    def _launch_worker(self, seeds: list[SeedTask]) -> None:
        """With a core to spare, the judging process starts now and reads the tasks while the store opens."""
        from .judge_worker import JudgeWorker, worthwhile
        from .store import ACCEPTED_FILE

        cfg = self.config
        wanted = cfg.filter_process if cfg.filter_process is not None else worthwhile()
        if not wanted or cfg.method == "self-instruct":
            return
        self.worker = JudgeWorker()
        self.worker.launch(
            filters=cfg.filters, threshold=cfg.similarity_threshold, tokenizer=cfg.tokenizer, seeds=seeds,
            accepted_file=str(cfg.output_dir / ACCEPTED_FILE),
        )  # fmt: skip

    async def _close_worker(self) -> None:
        if self.worker is not None:
            await self.worker.close()
            self.worker = None

    def _save_quietly(self, status: Status | None = None) -> None:
        """Record the status when the disk lets us; the error that brought us here matters more."""
        try:
            self.save(status)
        except SelfInstructError as exc:
            log.warning(f"could not update run.json: {exc}")

    async def _generate(self, seeds: list[SeedTask], seeds_hash: str, base_urls: tuple[str, ...]) -> None:
        from .engine import Engine, Progress
        from .judge import Judge
        from .judge_worker import JudgeWorker
        from .llm import EndpointPool
        from .prompts import PROMPT_VERSION, SI_PROMPT_VERSION, load_prompt_texts, prompt_fingerprint, si_prompt_fingerprint

        cfg = self.config
        store = self.store
        assert store is not None
        history = store.settings_history()
        pool = self.pool = EndpointPool.for_config(cfg, base_urls)
        try:
            if cfg.model is None and history and isinstance(history[-1]["settings"].get("model"), str):
                # Resume against the same model even if the server now lists another one first.
                pool.model = history[-1]["settings"]["model"]
            texts = load_prompt_texts(cfg.prompt_template)
            self.model = await pool.resolve_model()
            self_instruct = cfg.method == "self-instruct"
            self.generation = cfg.generation_settings(
                self.model,
                prompt=si_prompt_fingerprint(texts) if self_instruct else prompt_fingerprint(texts),
                prompt_version=SI_PROMPT_VERSION if self_instruct else PROMPT_VERSION,
                seeds=seeds_hash,
            )
            self._guard_settings(history)
            self.fingerprint = store.record_settings(self.generation)
            filters = cfg.filters
            if self_instruct:  # stage 1 writes instructions only: there is no output to check yet
                filters = replace(filters, disabled=filters.disabled | {"empty_output"})
            judge: Judge | JudgeWorker
            if self.worker is not None:
                room = max(0, cfg.num_instructions - len(store.accepted))
                await self.worker.start(store.accepted, next_task_number=store.next_task_number, room=room)
                judge = self.worker
            else:
                with without_gc():
                    judge = Judge(
                        filters=filters,
                        threshold=cfg.similarity_threshold,
                        tokenizer=cfg.tokenizer,
                        seeds=seeds,
                        accepted=(),
                        next_task_number=store.next_task_number,
                    )
                    # The store keeps no task in memory: one pass over the file for the pool.
                    judge.admit_many(*store.accepted.instructions_and_ids())
            progress = Progress(cfg.progress, cfg.num_instructions, len(store.accepted))
            engine_class = Engine
            if self_instruct:
                from .si_engine import SelfInstructEngine

                engine_class = SelfInstructEngine
            self.engine = engine_class(
                config=cfg, seeds=seeds, store=store, pool=pool, judge=judge, settings=self.fingerprint,
                progress=progress, save=self.save, texts=texts,
            )  # fmt: skip
            self.save("running")
            if cfg.judge is None:
                await self.engine.run()
            else:
                await self._generate_and_judge(base_urls)
        finally:
            if self.judge_stage is not None:
                store.on_commit = None
                await self.judge_stage.pool.aclose()
            await pool.aclose()

    async def _generate_and_judge(self, base_urls: tuple[str, ...]) -> None:
        """Generation and its judge side by side: each accepted task is queued for judging at its commit."""
        from .judging import items_of, open_stage, warn_if_self_judging

        cfg = self.config
        store = self.store
        assert store is not None and cfg.judge is not None
        judge_urls = cfg.judge.base_urls or base_urls
        stage = self.judge_stage = await open_stage(
            cfg.judge, store, judge_urls, embedded=not cfg.judge.base_urls and cfg.embedded
        )
        warn_if_self_judging(stage.pool.model or "", {self.model})
        stage.feed(items_of(store.accepted, store.tasks.values(), self_instruct=stage.self_instruct))
        store.on_commit = stage.feed_records
        judging = asyncio.create_task(stage.run(), name="judge")
        generating = asyncio.create_task(self.engine.run(), name="generate")
        try:
            while not generating.done():
                await asyncio.wait({judging, generating}, return_when=asyncio.FIRST_COMPLETED)
                if judging.done():
                    judging.result()  # a judge that cannot go on stops the job with its reason
            generating.result()
            stage.close()
            if stage.pending:
                log.info("generation is done; the judge has %d tasks left to review", stage.pending)
                if cfg.progress:
                    stage.show_progress()
            await judging
        finally:
            for task in (judging, generating):
                task.cancel()
            await asyncio.gather(judging, generating, return_exceptions=True)
            if stage.progress is not None:
                stage.progress.close()

    def _guard_settings(self, history: list[dict[str, Any]]) -> None:
        cfg = self.config
        store = self.store
        assert store is not None
        if cfg.allow_config_change:
            return
        if history:
            old = history[-1]["settings"]
            if old != self.generation:
                changes = "; ".join(describe_change(old, self.generation))
                raise ConfigError(
                    f"{cfg.output_dir} was generated with other settings ({changes}); resume with the "
                    "original settings, pass --allow-config-change to continue anyway, or use a new --output-dir"
                )
            return
        stamped = store.fingerprints_on_disk()
        fingerprint = settings_fingerprint(self.generation)
        if stamped and fingerprint not in stamped:
            raise ConfigError(
                f"the tasks in {cfg.output_dir} were generated with other settings (their fingerprint "
                f"{', '.join(sorted(stamped))} is not {fingerprint}; settings.json is gone, so the differences "
                "cannot be named); resume with the original settings, pass --allow-config-change, or use a new --output-dir"
            )


async def run_generation(config: RunConfig, *, stop: asyncio.Event | None = None) -> RunSummary:
    """Grow the dataset in ``config.output_dir`` to ``config.num_instructions`` tasks (async).

    Setting ``stop`` ends the session at once, in any phase (status ``interrupted``); the same
    call resumes. Problems the user must fix raise :class:`~selfinstruct.errors.SelfInstructError`.
    """
    return await until_stopped(_Session(config), stop)


class _Stoppable(Protocol):
    status: Status

    async def run(self) -> Any: ...

    def summary(self) -> Any: ...


async def until_stopped(session: _Stoppable, stop: asyncio.Event | None) -> Any:
    """``session.run()``, cancelled when ``stop`` is set; a stopped session returns its summary."""
    work = asyncio.ensure_future(session.run())
    if stop is None:
        return await work
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        await asyncio.wait({work})
        raise
    finally:
        waiter.cancel()
    if not work.done():
        work.cancel()
        await asyncio.wait({work})
    if work.cancelled():
        if session.status == "running":  # stopped before the run directory was even opened
            session.status = "interrupted"
        return session.summary()
    return work.result()


_STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def generate(config: RunConfig) -> RunSummary:
    """Run :func:`run_generation` to completion and return its summary.

    From a plain script: Ctrl-C, SIGTERM and SIGHUP end it cleanly as ``interrupted`` (a second
    one exits at once). Inside a running event loop (Jupyter) it runs on a thread of its own;
    interrupting the kernel stops it the same way.
    """
    return drive(run_generation, config)


def drive(main: Callable[..., Any], config: Any) -> Any:
    """Run the async ``main(config, stop=...)`` from blocking code: with signal handling in a plain
    script, on a thread of its own inside a running event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_main_with_signals(main, config))
    return _run_on_thread(main, config)


async def _main_with_signals(main: Callable[..., Any], config: Any) -> Any:
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(sig: int) -> None:
        if received:
            # The second signal: the user wants out now. Every committed record is already on disk.
            sys.stderr.write("selfinstruct: stopping at once\n")
            os._exit(128 + sig)
        received.append(sig)
        stop.set()

    loop = asyncio.get_running_loop()
    installed = []
    for sig in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        summary = await main(config, stop=stop)
        summary.signal = received[0] if received else None
        return summary
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _run_on_thread(run: Callable[..., Any], config: Any) -> Any:
    result: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        result["loop"] = asyncio.get_running_loop()
        result["stop"] = asyncio.Event()
        ready.set()
        result["summary"] = await run(config, stop=result["stop"])

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=target, name="selfinstruct-generate", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        ready.wait()
        if "loop" in result:
            with contextlib.suppress(RuntimeError):
                result["loop"].call_soon_threadsafe(result["stop"].set)
        thread.join()
    if "error" in result:
        raise result["error"]
    return result["summary"]

