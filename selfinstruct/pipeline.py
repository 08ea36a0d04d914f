"""The generation loop: seeds → prompt → model → parser → filters → similarity → store.

Workers (one per request slot the endpoints may grant) each build a prompt, wait for a slot, send
it, and hand the answer to :meth:`_Run.judge`. Judging has no ``await`` inside, so it runs
atomically in the event loop: the accept decision, the index update and the disk append of one
task can never interleave with another's. That is what keeps the dataset exactly at the target
and free of near-duplicates with any number of requests in flight.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .errors import ConfigError, SeedError
from .filters import FilterConfig, check_candidate
from .llm import Completion, EndpointPool, GenerationRequest, redact_url
from .parse import parse_answer
from .prompts import PROMPT_VERSION, build_chat_messages, build_completion_prompt, prompt_fingerprint, stop_sequences
from .records import Candidate, SeedTask
from .seeds import check_seeds, load_seed_tasks, seed_fingerprint
from .similarity import RougeLIndex
from .store import SCHEMA_VERSION, RunStore

__all__ = ["RunConfig", "RunSummary", "generate", "run_generation"]

Status = Literal["done", "interrupted", "failed", "running"]

# Keys of RunConfig that change what gets generated; the others (where and how fast) may
# change between sessions of one run.
_GENERATION_KEYS = (
    "api",
    "model",
    "num_prompt_instructions",
    "machine_demos",
    "tasks_per_prompt",
    "temperature",
    "top_p",
    "max_tokens",
    "similarity_threshold",
    "tokenizer",
    "seed",
)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything ``generate`` needs. Only ``output_dir`` and ``base_urls`` have no default.

    An empty ``base_urls`` means: start the embedded llama.cpp server (see :mod:`selfinstruct.local`).
    """

    output_dir: Path
    base_urls: tuple[str, ...]
    num_instructions: int = 100
    seed_tasks: Path | None = None
    api_key: str = field(default="EMPTY", repr=False)
    model: str | None = None
    model_path: Path | None = None  # GGUF for the embedded server (used when base_urls is empty)
    api: Literal["chat", "completions"] = "chat"
    concurrency: int | None = None  # None: adaptive (AIMD per endpoint); a number fixes it
    max_concurrency: int = 128
    num_prompt_instructions: int = 3
    machine_demos: int = 0
    tasks_per_prompt: int = 20
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 3072
    similarity_threshold: float = 0.7
    tokenizer: str = "rouge"
    seed: int | None = None
    filters: FilterConfig = field(default_factory=FilterConfig)
    check_seed_file: bool = True
    allow_config_change: bool = False
    request_timeout: float = 600.0
    max_attempts: int = 8
    retry_wait: float = 1.0  # first back-off in seconds, doubled per attempt (with jitter)
    retry_wait_max: float = 60.0
    give_up_after: float = 600.0
    progress: bool = True

    def validate(self) -> None:
        problems = []
        if self.num_instructions < 1:
            problems.append("--num-instructions must be at least 1")
        if self.num_prompt_instructions < 1:
            problems.append("--num-prompt-instructions must be at least 1")
        if self.tasks_per_prompt <= self.num_prompt_instructions:
            problems.append(
                f"--tasks-per-prompt ({self.tasks_per_prompt}) must exceed --num-prompt-instructions "
                f"({self.num_prompt_instructions}): the list holds the demos and the new tasks"
            )
        if not 0 <= self.machine_demos <= self.num_prompt_instructions:
            problems.append("--machine-demos must be between 0 and --num-prompt-instructions")
        if self.max_tokens < 1:
            problems.append("--max-tokens must be positive (some servers read 0 or less as 'no limit')")
        if not 0.0 < self.similarity_threshold <= 1.0:
            problems.append("--similarity-threshold must be in (0, 1]")
        if self.concurrency is not None and self.concurrency < 1:
            problems.append("--concurrency must be at least 1 (or 'auto')")
        if self.max_concurrency < 1:
            problems.append("--max-concurrency must be at least 1")
        if not 0.0 <= self.temperature <= 2.0 or not 0.0 < self.top_p <= 1.0:
            problems.append("--temperature must be in [0, 2] and --top-p in (0, 1]")
        if problems:
            raise ConfigError("; ".join(problems))

    def generation_settings(self, model: str, seeds_hash: str) -> dict[str, Any]:
        settings = {key: getattr(self, key) for key in _GENERATION_KEYS}
        settings["model"] = model
        settings["prompt"] = prompt_fingerprint()
        settings["prompt_version"] = PROMPT_VERSION
        settings["seeds"] = seeds_hash
        settings["filters"] = self.filters.as_dict()
        return settings


@dataclass
class RunSummary:
    """How a ``generate`` call ended."""

    output_dir: Path
    status: Status
    accepted: int
    target: int
    added: int
    counters: dict[str, Any]
    elapsed_seconds: float
    model: str
    endpoints: dict[str, dict[str, Any]]
    error: str | None = None

    def format(self) -> str:
        c = self.counters
        rejected: Counter[str] = Counter(c.get("rejected", {}))
        top = ", ".join(f"{k} {v}" for k, v in rejected.most_common(6)) or "none"
        rate = self.added / max(1, c.get("session_candidates", 0))
        lines = [
            f"{self.status}: {self.accepted}/{self.target} tasks in {self.output_dir / 'instructions.jsonl'} "
            f"(+{self.added} this session, {self.elapsed_seconds:.0f} s)",
            f"  requests {c.get('requests', 0)} (failed {c.get('failed_requests', 0)}), answers {c.get('answers', 0)}, "
            f"candidates {c.get('candidates', 0)}, accept rate this session {rate:.0%}",
            f"  rejected: {top}",
            f"  tokens: prompt {c.get('prompt_tokens', 0)}, completion {c.get('completion_tokens', 0)}",
        ]
        for url, e in self.endpoints.items():
            errors = ", ".join(f"{k} {v}" for k, v in e["errors"].items()) or "none"
            lines.append(
                f"  {url}: {e['successes']} answers, errors: {errors}; concurrency {e['concurrency_limit']} "
                f"(peak {e['concurrency_peak']}), mean latency {e['mean_latency_s']} s, rested {e['rests']}x"
            )
        return "\n".join(lines)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Progress:
    """A tqdm bar of accepted/target with the numbers a person watching it wants."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="task", dynamic_ncols=True, smoothing=0.1)

    def update(self, added: int, postfix: str) -> None:
        if self.bar is not None:
            if added:
                self.bar.update(added)
            self.bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Run:
    """State of one ``generate`` session over one run directory."""

    def __init__(
        self,
        config: RunConfig,
        seeds: list[SeedTask],
        store: RunStore,
        pool: EndpointPool,
        generation: dict[str, Any],
        previous: dict[str, Any],
    ) -> None:
        self.config = config
        self.generation = generation
        self.seeds = seeds
        self.store = store
        self.pool = pool
        self.target = config.num_instructions
        self.index = RougeLIndex(tokenizer=config.tokenizer)
        self.index.extend(t.instruction for t in seeds)
        self.index.extend(r["instruction"] for r in store.accepted)
        self.counters: dict[str, Any] = {
            "requests": 0,
            "failed_requests": 0,
            "answers": 0,
            "unparseable_answers": 0,
            "incomplete_tasks": 0,
            "candidates": 0,
            "surplus": 0,
            "rejected": {},
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        old = previous.get("counters", {})
        for key in self.counters:
            if key in old:
                self.counters[key] = dict(old[key]) if isinstance(old[key], dict) else old[key]
        self.elapsed_before = float(previous.get("elapsed_seconds", 0.0))
        self.started = time.monotonic()
        self.created = previous.get("created", _now())
        self.sessions = int(previous.get("sessions", 0)) + 1
        self.added = 0
        self.done = asyncio.Event()
        self._last_save = 0.0
        # Request numbers stay unique across sessions, even after a crash left run.json behind.
        seen = [int(r.get("request", -1)) for r in store.accepted[-1000:]]
        self._next_request = max([int(old.get("next_request", 0)), int(self.counters["requests"]), *(n + 1 for n in seen)])
        self._tokens_at_start = int(self.counters["completion_tokens"])
        self._outstanding = 0  # requests sent whose answer is not judged yet
        self._session_answers = 0
        self.session_candidates = 0  # for this session's accept rate
        self._answered = asyncio.Event()
        self.progress = _Progress(config.progress, self.target, len(store.accepted))

    # -- requests ---------------------------------------------------------------------------

    def _demos(self, request_number: int) -> list[Candidate]:
        # Seeded per request number, so a resumed run samples what an uninterrupted one would.
        rng = random.Random(f"{self.config.seed}:{request_number}") if self.config.seed is not None else random.Random()
        machine = min(self.config.machine_demos, len(self.store.accepted))
        picked_machine = [
            Candidate(r["instruction"], r.get("input", ""), r.get("output", ""))
            for r in rng.sample(self.store.accepted, machine)
        ]
        picked_seeds: list[Candidate] = []
        for task in rng.sample(self.seeds, min(len(self.seeds), self.config.num_prompt_instructions - machine)):
            inp, out = rng.choice(task.instances)
            picked_seeds.append(Candidate(task.instruction, inp, out))
        demos = picked_seeds + picked_machine
        rng.shuffle(demos)
        return demos

    def _request(self, request_number: int) -> tuple[GenerationRequest, int]:
        demos = self._demos(request_number)
        cfg = self.config
        prompt: str | list[dict[str, str]]
        if cfg.api == "chat":
            prompt = build_chat_messages(demos, tasks_per_prompt=cfg.tasks_per_prompt)
        else:
            prompt = build_completion_prompt(demos, tasks_per_prompt=cfg.tasks_per_prompt)
        request = GenerationRequest(
            api=cfg.api,
            prompt=prompt,
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            stop=tuple(stop_sequences(cfg.tasks_per_prompt)),
        )
        return request, len(demos) + 1

    async def _until_needed(self) -> None:
        """Hold a request back while the answers already on their way should reach the target.

        Near the end, the requests in flight would otherwise be answered only to be thrown
        away; that is GPU time the user pays for. The margin (20 % and one answer) covers weak
        answers; if they still fall short, the gate opens again as they come in.
        """
        while not self.done.is_set() and self._session_answers >= 5:
            per_answer = self.added / self._session_answers
            remaining = self.target - len(self.store.accepted)
            if self._outstanding * per_answer < 1.2 * remaining + per_answer:
                return
            self._answered.clear()
            await self._answered.wait()

    async def worker(self) -> None:
        while not self.done.is_set():
            await self._until_needed()
            if self.done.is_set():  # woken because the target was reached
                return
            number = self._next_request
            self._next_request += 1
            request, first_number = self._request(number)
            self._outstanding += 1
            try:
                completion = await self.pool.generate(request)
            finally:
                self._outstanding -= 1
                self._answered.set()
            self.counters["requests"] += 1
            if completion is None:
                self.counters["failed_requests"] += 1
                continue
            if not self.done.is_set():
                self._session_answers += 1
                self.judge(completion, number, first_number)

    # -- judging ----------------------------------------------------------------------------

    def _reject(self, candidate: Candidate, reason: str, detail: str, number: int, **extra: Any) -> None:
        rejected = self.counters["rejected"]
        rejected[reason] = rejected.get(reason, 0) + 1
        record = {
            "schema": SCHEMA_VERSION,
            "reason": reason,
            "detail": detail,
            "instruction": candidate.instruction,
            "input": candidate.input,
            "output": candidate.output,
            "request": number,
            **extra,
        }
        self.store.append_rejected(record)

    def judge(self, completion: Completion, number: int, first_number: int) -> None:
        """Parse one answer and accept or reject each task in it. No awaits: atomic."""
        c = self.counters
        c["answers"] += 1
        c["prompt_tokens"] += completion.prompt_tokens
        c["completion_tokens"] += completion.completion_tokens
        continuation = first_number if self.config.api == "completions" else None
        parsed = parse_answer(completion.text, continuation_number=continuation, finish_reason=completion.finish_reason)
        c["incomplete_tasks"] += parsed.dropped_incomplete
        if not parsed.candidates:
            c["unparseable_answers"] += 1
            self._reject(
                Candidate(instruction="", output=completion.text[:2000]),
                "unparseable",
                f"no task found in the answer (finish_reason {completion.finish_reason})",
                number,
            )
        added = 0
        for candidate in parsed.candidates:
            if len(self.store.accepted) >= self.target:
                c["surplus"] += 1
                continue
            c["candidates"] += 1
            self.session_candidates += 1
            failed = check_candidate(candidate, self.config.filters)
            if failed:
                self._reject(candidate, failed[0], failed[1], number)
                continue
            score, nearest = self.index.nearest(candidate.instruction)
            nearest_text = self.index.text(nearest) if nearest is not None else ""
            if score > self.config.similarity_threshold:
                self._reject(
                    candidate,
                    "near_duplicate",
                    f"ROUGE-L {score:.3f} > {self.config.similarity_threshold}",
                    number,
                    rouge_l=score,
                    most_similar_instruction=nearest_text,
                )
                continue
            ordinal = len(self.store.accepted)
            self.store.append_accepted(
                {
                    "schema": SCHEMA_VERSION,
                    "id": f"task-{ordinal:06d}",
                    "instruction": candidate.instruction,
                    "input": candidate.input,
                    "output": candidate.output,
                    "most_similar_instruction": nearest_text,
                    "rouge_l": score,
                    "request": number,
                    "model": self.pool.model,
                    "endpoint": redact_url(completion.endpoint),
                    "finish_reason": completion.finish_reason,
                    "created": _now(),
                }
            )
            self.index.add(candidate.instruction)
            added += 1
        self.added += added
        if len(self.store.accepted) >= self.target:
            self.done.set()
        self.progress.update(added, self._postfix())
        if time.monotonic() - self._last_save > 1.0:
            self.save("running")

    def _postfix(self) -> str:
        c = self.counters
        rate = self.added / max(1, self.session_candidates)
        elapsed = max(1e-9, time.monotonic() - self.started)
        tokens = c["completion_tokens"] - self._tokens_at_start
        rejected: Counter[str] = Counter(c["rejected"])
        top = " ".join(f"{k}:{v}" for k, v in rejected.most_common(3))
        return (
            f"acc {rate:.0%} req {c['requests']} in-flight {self.pool.in_flight()} "
            f"{tokens / elapsed:.0f} tok/s | {top}"
        )

    # -- persistence ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started)

    def save(self, status: Status, error: str | None = None) -> None:
        self.store.sync()
        counters = dict(self.counters)
        counters["next_request"] = self._next_request
        counters["accepted"] = len(self.store.accepted)
        counters["rejected_total"] = sum(counters["rejected"].values())
        data = {
            "schema": SCHEMA_VERSION,
            "tool": f"selfinstruct {__version__}",
            "status": status,
            "error": error,
            "created": self.created,
            "updated": _now(),
            "sessions": self.sessions,
            "elapsed_seconds": round(self.elapsed(), 3),
            "target": self.target,
            "generation": self.generation,
            "settings": {
                "endpoints": [redact_url(u) for u in self.pool.urls],
                "concurrency": self.config.concurrency if self.config.concurrency is not None else "auto",
                "max_concurrency": self.config.max_concurrency,
                "request_timeout": self.config.request_timeout,
            },
            "counters": counters,
            "endpoints": self.pool.stats(),
        }
        self.store.write_run(data)
        self._last_save = time.monotonic()

    def summary(self, status: Status, error: str | None = None) -> RunSummary:
        counters = dict(self.counters)
        counters["session_candidates"] = self.session_candidates
        counters["accepted"] = len(self.store.accepted)
        return RunSummary(
            output_dir=self.config.output_dir,
            status=status,
            accepted=len(self.store.accepted),
            target=self.target,
            added=self.added,
            counters=counters,
            elapsed_seconds=time.monotonic() - self.started,
            model=self.pool.model or "",
            endpoints=self.pool.stats(),
            error=error,
        )


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            before, after = old.get(key), new.get(key)
            if key in ("prompt", "seeds", "filters"):
                changes.append(f"{key} changed")
            else:
                changes.append(f"{key} {before!r} → {after!r}")
    return changes


def _load_seeds(config: RunConfig) -> list[SeedTask]:
    seeds = load_seed_tasks(config.seed_tasks)
    if config.check_seed_file:
        report = check_seeds(
            config.seed_tasks,
            threshold=config.similarity_threshold,
            filters=config.filters,
            tokenizer=config.tokenizer,
        )
        if not report.ok:
            errors = report.errors()
            raise SeedError(
                f"seed file {report.path} has {len(errors)} problem(s), first: {errors[0]}; "
                f"see `selfinstruct seeds check {report.path}`, fix them, or pass --no-seed-check"
            )
    if len(seeds) < config.num_prompt_instructions - config.machine_demos:
        raise SeedError(
            f"seed file has {len(seeds)} tasks but each prompt needs "
            f"{config.num_prompt_instructions - config.machine_demos}; lower --num-prompt-instructions"
        )
    return seeds


async def run_generation(config: RunConfig, *, stop: asyncio.Event | None = None) -> RunSummary:
    """Grow the dataset in ``config.output_dir`` to ``config.num_instructions`` tasks (async).

    Setting ``stop`` ends the session cleanly (status ``interrupted``); the same call resumes.
    """
    config.validate()
    seeds = _load_seeds(config)
    seeds_hash = seed_fingerprint(seeds)
    with RunStore(config.output_dir) as store:
        pool = EndpointPool(
            config.base_urls,
            api_key=config.api_key,
            model=config.model,
            concurrency=config.concurrency,
            max_concurrency=config.max_concurrency,
            request_timeout=config.request_timeout,
            max_attempts=config.max_attempts,
            backoff_base=config.retry_wait,
            backoff_cap=config.retry_wait_max,
            give_up_after=config.give_up_after,
        )
        try:
            return await _run(config, seeds, seeds_hash, store, pool, stop or asyncio.Event())
        finally:
            await pool.aclose()


async def _run(
    config: RunConfig,
    seeds: list[SeedTask],
    seeds_hash: str,
    store: RunStore,
    pool: EndpointPool,
    stop: asyncio.Event,
) -> RunSummary:
    previous = store.read_run()
    old_generation = previous.get("generation")
    if config.model is None and old_generation and "model" in old_generation:
        # Resume against the same model even if the server now lists another one first.
        pool.model = old_generation["model"]
    model = await pool.resolve_model()
    generation = config.generation_settings(model, seeds_hash)
    if old_generation and old_generation != generation and not config.allow_config_change:
        changes = "; ".join(_describe_change(old_generation, generation))
        raise ConfigError(
            f"{config.output_dir} was generated with other settings ({changes}); resume with the "
            "original settings, pass --allow-config-change to continue anyway, or use a new --output-dir"
        )
    run = _Run(config, seeds, store, pool, generation, previous)
    if len(store.accepted) >= run.target:
        run.save("done")
        return run.summary("done")
    run.save("running")
    workers = [asyncio.create_task(run.worker()) for _ in range(pool.max_capacity())]
    stopper = asyncio.create_task(stop.wait())
    finished = asyncio.create_task(run.done.wait())
    status: Status = "running"
    error: BaseException | None = None
    try:
        pending: set[asyncio.Task[Any]] = {stopper, finished, *workers}
        while status == "running":
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is finished:
                    status = "done"
                elif task is stopper:
                    status = "interrupted"
                elif task.exception() is not None:
                    error = task.exception()
                    status = "failed"
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    finally:
        for task in (*workers, stopper, finished):
            task.cancel()
        await asyncio.gather(*workers, stopper, finished, return_exceptions=True)
        if len(store.accepted) >= run.target:
            status = "done"
        run.save(status if status != "running" else "interrupted", str(error) if error else None)
        run.progress.close()
    if error is not None:
        raise error
    return run.summary(status)


def generate(config: RunConfig) -> RunSummary:
    """Run :func:`run_generation` to completion; SIGINT/SIGTERM end it cleanly as ``interrupted``.

    Returns the summary; raises :class:`~selfinstruct.errors.SelfInstructError` subclasses for
    problems the user must fix.
    """

    async def main() -> RunSummary:
        stop = asyncio.Event()
        received: list[int] = []

        def on_signal(sig: int) -> None:
            received.append(sig)
            stop.set()

        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, int(sig))
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            if config.base_urls:
                summary = await run_generation(config, stop=stop)
            else:
                summary = await _run_embedded(config, stop)
            summary.counters["signal"] = received[0] if received else None
            return summary
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


async def _run_embedded(config: RunConfig, stop: asyncio.Event) -> RunSummary:
    from .local import EmbeddedServer

    config.validate()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    # The server is stopped on every way out of this block: done, error, Ctrl-C, SIGTERM.
    with EmbeddedServer(config.model_path, log_path=config.output_dir / "embedded-server.log") as server:
        return await run_generation(replace(config, base_urls=(server.base_url,)), stop=stop)

