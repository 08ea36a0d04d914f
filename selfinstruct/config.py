"""Settings of a run: the one place their defaults and limits live (the CLI reads them from here).

``RunConfig`` checks itself when it is made. Fields left at ``None`` ("auto") take a value that
depends on the server: the embedded model (no ``base_urls``) gets the settings measured to suit
it, a real server the general ones; ``resolved()`` fills them in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import ConfigError
from .filters import FilterConfig

__all__ = ["Api", "JudgeConfig", "Method", "RunConfig", "Structured", "Tokenizer", "default"]

Api = Literal["chat", "completions"]
Tokenizer = Literal["rouge", "unicode"]
Method = Literal["alpaca", "self-instruct"]
# How a judge asks for JSON: auto tries json_schema, then json_object, then plain text.
Structured = Literal["auto", "json_schema", "json_object", "off"]

# Per method: demos per prompt, of which from accepted tasks, list length, temperature, top_p.
# Alpaca: 3 seed tasks, 20 per list, T=1, top_p=1. Self-Instruct: 8 instructions (6 seed + 2
# machine), items 9-15, T=0.7, top_p=0.5 (its presence penalty is not sent: not every server has it).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "alpaca": {"num_prompt_instructions": 3, "machine_demos": 0, "tasks_per_prompt": 20, "temperature": 1.0, "top_p": 1.0},
    "self-instruct": {"num_prompt_instructions": 8, "machine_demos": 2, "tasks_per_prompt": 15, "temperature": 0.7, "top_p": 0.5},
}

# Embedded SmolLM2-135M: completions gave 3.6 accepted tasks per 1k tokens vs 1.6 for chat; the
# server takes one request at a time; its context is 2048 tokens.
EMBEDDED_API: Api = "completions"
EMBEDDED_CONCURRENCY = 1
EMBEDDED_MAX_TOKENS = 1024
SERVER_API: Api = "chat"
SERVER_MAX_TOKENS = 3072

# Keys that change what gets generated. The others (where, how fast, how patient) may change
# between sessions of one run.
GENERATION_KEYS = (
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
    """Everything ``generate`` needs. Only ``output_dir`` has no default.

    An empty ``base_urls`` means: start the embedded llama.cpp server (``selfinstruct[local]``).
    """

    output_dir: Path
    base_urls: tuple[str, ...] = ()
    num_instructions: int = 100
    seed_tasks: Path | None = None
    prompt_template: Path | None = None  # JSON replacing prompt prose (see prompts.PromptTexts)
    api_key: str = field(default="EMPTY", repr=False)
    model: str | None = None
    model_path: Path | None = None  # GGUF for the embedded server
    method: Method = "alpaca"
    api: Api | None = None  # None: completions on the embedded model, chat on a server
    concurrency: int | None = None  # None: adaptive per endpoint (1 on the embedded model)
    max_concurrency: int = 128
    # None: the method's default (METHOD_DEFAULTS)
    num_prompt_instructions: int | None = None
    machine_demos: int | None = None
    tasks_per_prompt: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_instances: int = 5  # self-instruct: instances kept per task
    max_tokens: int | None = None  # None: 1024 on the embedded model, 3072 on a server
    similarity_threshold: float = 0.7
    tokenizer: Tokenizer = "rouge"
    seed: int | None = None
    filters: FilterConfig = field(default_factory=FilterConfig)
    check_seed_file: bool = True
    allow_config_change: bool = False
    request_timeout: float = 600.0
    max_attempts: int = 8
    retry_wait: float = 1.0  # first back-off in seconds, doubled per attempt (with jitter)
    retry_wait_max: float = 60.0
    give_up_after: float = 600.0  # no server answer, or no accepted task, for this long: stop
    max_fruitless_answers: int = 200  # this many answers in a row with no usable task: stop
    max_consecutive_bad_requests: int = 10  # the same 4xx on this many requests in a row: stop
    progress: bool = True
    # Parse, filter and deduplicate in a process of its own (None: when there are 2+ cores).
    filter_process: bool | None = None
    judge: JudgeConfig | None = None  # judge tasks as they are accepted (generate --judge)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the types a caller may reasonably pass
        if isinstance(self.output_dir, str):
            if not self.output_dir.strip():
                raise ConfigError("output_dir is empty; pass a directory (-o DIR)")
            set_(self, "output_dir", Path(self.output_dir))
        if not isinstance(self.output_dir, Path):
            raise ConfigError(f"output_dir must be a path, got {self.output_dir!r}")
        if isinstance(self.base_urls, str):
            set_(self, "base_urls", (self.base_urls,))
        set_(self, "base_urls", tuple(self.base_urls))
        for name in ("seed_tasks", "model_path", "prompt_template"):
            value = getattr(self, name)
            if isinstance(value, str):
                set_(self, name, Path(value))
        self._validate()

    # -- checks ---------------------------------------------------------------------------------

    def _validate(self) -> None:
        problems: list[str] = []

        def whole(name: str, flag: str, low: int, value: Any = None) -> None:
            value = getattr(self, name) if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{flag} must be a whole number of at least {low}, got {value!r}")

        def number(name: str, flag: str, low: float, high: float, *, low_open: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok:
                ok = (value > low if low_open else value >= low) and value <= high
            if not ok:
                left = "(" if low_open else "["
                problems.append(f"{flag} must be in {left}{low:g}, {high:g}], got {value!r}")

        if self.api is not None and self.api not in get_args(Api):
            problems.append(f"api must be one of {', '.join(get_args(Api))}, got {self.api!r}")
        if self.tokenizer not in get_args(Tokenizer):
            problems.append(f"tokenizer must be one of {', '.join(get_args(Tokenizer))}, got {self.tokenizer!r}")
        for url in self.base_urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                problems.append(f"--base-url {url!r} is not an http(s) URL; pass e.g. http://localhost:8000/v1")
        if self.method not in get_args(Method):
            problems.append(f"method must be one of {', '.join(get_args(Method))}, got {self.method!r}")
            raise ConfigError("; ".join(problems))
        method = METHOD_DEFAULTS[self.method]
        whole("num_instructions", "--num-instructions", 1)
        whole("num_prompt_instructions", "--num-prompt-instructions", 1, self._or(method, "num_prompt_instructions"))
        whole("tasks_per_prompt", "--tasks-per-prompt", 2, self._or(method, "tasks_per_prompt"))
        whole("machine_demos", "--machine-demos", 0, self._or(method, "machine_demos"))
        whole("max_instances", "--max-instances", 1)
        whole("max_concurrency", "--max-concurrency", 1)
        whole("max_attempts", "--max-attempts", 1)
        whole("max_fruitless_answers", "--max-fruitless-answers", 1)
        whole("max_consecutive_bad_requests", "--max-consecutive-bad-requests", 1)
        if self.concurrency is not None:
            whole("concurrency", "--concurrency", 1)
        if self.max_tokens is not None:
            whole("max_tokens", "--max-tokens (some servers read 0 or less as 'no limit')", 1)
        if self.seed is not None:
            whole("seed", "--seed", 0)
        number("similarity_threshold", "--similarity-threshold", 0.0, 1.0, low_open=True)
        if self.temperature is not None:
            number("temperature", "--temperature", 0.0, 2.0)
        if self.top_p is not None:
            number("top_p", "--top-p", 0.0, 1.0, low_open=True)
        number("request_timeout", "--request-timeout", 0.0, 86400.0, low_open=True)
        number("retry_wait", "--retry-wait", 0.0, 3600.0)
        number("retry_wait_max", "--retry-wait-max", 0.0, 3600.0)
        number("give_up_after", "--give-up-after", 0.0, 30 * 86400.0, low_open=True)
        if not problems:
            demos = self._or(method, "num_prompt_instructions")
            length = self._or(method, "tasks_per_prompt")
            if length <= demos:
                problems.append(
                    f"--tasks-per-prompt ({length}) must exceed --num-prompt-instructions "
                    f"({demos}): the list holds the demos and the new tasks"
                )
            if self._or(method, "machine_demos") > demos:
                problems.append("--machine-demos must be between 0 and --num-prompt-instructions")
        if not isinstance(self.filters, FilterConfig):
            problems.append("filters must be a FilterConfig")
        if problems:
            raise ConfigError("; ".join(problems))

    def _or(self, method: dict[str, Any], name: str) -> Any:
        value = getattr(self, name)
        return method[name] if value is None else value

    # -- derived --------------------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        return not self.base_urls

    # Typed views of the "auto" fields, decided for this method and server.
    @property
    def demos_per_prompt(self) -> int:
        return int(self._or(METHOD_DEFAULTS[self.method], "num_prompt_instructions"))

    @property
    def demos_from_machine(self) -> int:
        return int(self._or(METHOD_DEFAULTS[self.method], "machine_demos"))

    @property
    def list_length(self) -> int:
        return int(self._or(METHOD_DEFAULTS[self.method], "tasks_per_prompt"))

    @property
    def sampling(self) -> tuple[float, float]:
        """(temperature, top_p)"""
        method = METHOD_DEFAULTS[self.method]
        return float(self._or(method, "temperature")), float(self._or(method, "top_p"))

    @property
    def answer_tokens(self) -> int:
        return self.max_tokens or (EMBEDDED_MAX_TOKENS if self.embedded else SERVER_MAX_TOKENS)

    @property
    def api_name(self) -> Api:
        return self.api or (EMBEDDED_API if self.embedded else SERVER_API)

    def resolved(self) -> RunConfig:
        """This config with every "auto" field decided (for the embedded model or a server)."""
        embedded = self.embedded
        method = METHOD_DEFAULTS[self.method]
        return dataclasses.replace(
            self,
            **{name: self._or(method, name) for name in method},
            api=self.api or (EMBEDDED_API if embedded else SERVER_API),
            concurrency=self.concurrency if self.concurrency is not None else (EMBEDDED_CONCURRENCY if embedded else None),
            max_tokens=self.max_tokens or (EMBEDDED_MAX_TOKENS if embedded else SERVER_MAX_TOKENS),
        )

    def generation_settings(self, model: str, *, prompt: str, prompt_version: str, seeds: str) -> dict[str, Any]:
        """What defines the generated data; a resumed run must match it (see the settings guard)."""
        resolved = self.resolved()
        settings = {key: getattr(resolved, key) for key in GENERATION_KEYS}
        settings["model"] = model
        settings["prompt"] = prompt
        settings["prompt_version"] = prompt_version
        settings["seeds"] = seeds
        settings["filters"] = self.filters.as_dict()
        if resolved.method != "alpaca":  # absent for alpaca, so runs made before methods existed still match
            settings["method"] = resolved.method
            settings["max_instances"] = resolved.max_instances
        return settings


# A judge answer is a short JSON object; the embedded model's context (2048) also holds the task.
JUDGE_MAX_TOKENS = 512
EMBEDDED_JUDGE_MAX_TOKENS = 320


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    """Everything ``judge`` needs. Only ``output_dir`` has no default; it is the run to judge.

    Empty ``base_urls``: the generator's servers under ``generate --judge``, else the embedded model.
    The judge's fingerprint covers model, rubric, prompt version and sampling (temperature 0);
    how JSON is asked for (``structured``) is not part of it.
    """

    output_dir: Path
    base_urls: tuple[str, ...] = ()
    api_key: str = field(default="EMPTY", repr=False)
    model: str | None = None
    model_path: Path | None = None  # GGUF for the embedded server
    rubric: Path | None = None  # JSON replacing the rubric's system text and/or template
    structured: Structured = "auto"
    api: Api = "chat"
    concurrency: int | None = None
    max_concurrency: int = 64
    max_tokens: int | None = None  # None: 512, or 320 on the embedded model
    attempts_per_task: int = 2  # unreadable answers per task per session before it is left unjudged
    limit: int | None = None  # judge at most this many tasks in this session (a sample)
    request_timeout: float = 600.0
    max_attempts: int = 8
    retry_wait: float = 1.0
    retry_wait_max: float = 60.0
    give_up_after: float = 600.0
    max_unreadable_answers: int = 100  # this many unreadable answers in a row: stop with the fix
    progress: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.output_dir, str):
            set_(self, "output_dir", Path(self.output_dir))
        if isinstance(self.base_urls, str):
            set_(self, "base_urls", (self.base_urls,))
        set_(self, "base_urls", tuple(self.base_urls))
        for name in ("model_path", "rubric"):
            if isinstance(getattr(self, name), str):
                set_(self, name, Path(getattr(self, name)))
        problems: list[str] = []
        for url in self.base_urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                problems.append(f"--judge-base-url {url!r} is not an http(s) URL; pass e.g. http://localhost:8000/v1")
        if self.structured not in get_args(Structured):
            problems.append(f"structured must be one of {', '.join(get_args(Structured))}, got {self.structured!r}")
        if self.api not in get_args(Api):
            problems.append(f"api must be one of {', '.join(get_args(Api))}, got {self.api!r}")
        for name, low in (("max_concurrency", 1), ("attempts_per_task", 1), ("max_attempts", 1), ("max_unreadable_answers", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name.replace('_', '-')} must be a whole number of at least {low}, got {value!r}")
        for name in ("concurrency", "max_tokens", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def answer_tokens(self, embedded: bool) -> int:
        """``embedded``: the judge talks to the embedded model (its own, or the generator's under ``--judge``)."""
        return self.max_tokens or (EMBEDDED_JUDGE_MAX_TOKENS if embedded else JUDGE_MAX_TOKENS)

    def judge_settings(self, model: str, *, rubric: str, prompt_version: str, max_tokens: int) -> dict[str, Any]:
        """What defines a judgment: a change makes a new judge fingerprint, never an overwrite."""
        return {
            "model": model,
            "rubric": rubric,
            "prompt_version": prompt_version,
            "api": self.api,
            "temperature": 0.0,
            "max_tokens": max_tokens,
        }


def default(name: str, of: type = RunConfig) -> Any:
    """The default of a RunConfig (or JudgeConfig) field, for the CLI's help and argparse defaults."""
    f = of.__dataclass_fields__[name]  # type: ignore[attr-defined]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(name)


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two generation settings."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before != after:
            changes.append(f"{key} changed" if key in ("prompt", "seeds", "filters") else f"{key} {before!r} → {after!r}")
    return changes
