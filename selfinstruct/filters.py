"""Heuristic filters: each one has a name, and that name is the rejection reason on disk.

The defaults follow the Alpaca recipe (length bounds, a whole-word keyword blacklist, no
"Write a program", no leading punctuation or non-ASCII character) plus an empty-output check.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .errors import ConfigError
from .records import Candidate

__all__ = [
    "DEFAULT_BLACKLIST",
    "FILTER_NAMES",
    "FilterConfig",
    "check_candidate",
]

# Tasks a text-only model cannot do or answer well.
DEFAULT_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip


@dataclass(frozen=True)
class FilterConfig:
    """Which filters run and their parameters. ``disabled`` holds filter names to skip."""

    min_words: int = 4  # instructions of 3 words or fewer are rejected
    max_words: int = 150
    blacklist: tuple[str, ...] = DEFAULT_BLACKLIST
    disabled: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = set(self.disabled) - set(FILTER_NAMES)
        if unknown:
            raise ConfigError(
                f"unknown filter name(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(FILTER_NAMES)}"
            )
        if self.min_words > self.max_words:
            raise ConfigError(f"--min-words {self.min_words} is above --max-words {self.max_words}")

    def as_dict(self) -> dict[str, object]:
        return {
            "min_words": self.min_words,
            "max_words": self.max_words,
            "blacklist": list(self.blacklist),
            "disabled": sorted(self.disabled),
        }


def _blacklist_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    words = [w for w in words if w.strip()]
    if not words:
        return None
    alternatives = "|".join(re.escape(w.strip()) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


_pattern_cache: dict[tuple[str, ...], re.Pattern[str] | None] = {}


def _blacklisted_word(text: str, config: FilterConfig) -> str | None:
    if config.blacklist not in _pattern_cache:
        _pattern_cache[config.blacklist] = _blacklist_pattern(config.blacklist)
    pattern = _pattern_cache[config.blacklist]
    match = pattern.search(text) if pattern else None
    return match.group(0).lower() if match else None


Check = Callable[[Candidate, FilterConfig], "str | None"]


def _too_short(c: Candidate, cfg: FilterConfig) -> str | None:
    n = len(c.instruction.split())
    return f"{n} words" if n < cfg.min_words else None


def _too_long(c: Candidate, cfg: FilterConfig) -> str | None:
    n = len(c.instruction.split())
    return f"{n} words" if n > cfg.max_words else None


def _blacklisted(c: Candidate, cfg: FilterConfig) -> str | None:
    return _blacklisted_word(c.instruction, cfg)


def _write_a_program(c: Candidate, cfg: FilterConfig) -> str | None:
    return "starts with 'Write a program'" if c.instruction.lower().startswith("write a program") else None


def _starts_with_punctuation(c: Candidate, cfg: FilterConfig) -> str | None:
    first = c.instruction[:1]
    return repr(first) if first and first in string.punctuation else None


def _non_ascii_start(c: Candidate, cfg: FilterConfig) -> str | None:
    first = c.instruction[:1]
    return repr(first) if first and not first.isascii() else None


def _empty_output(c: Candidate, cfg: FilterConfig) -> str | None:
    return "no output" if not c.output.strip() else None


# Order matters only for which reason is reported when several apply.
_CHECKS: dict[str, Check] = {
    "too_short": _too_short,
    "too_long": _too_long,
    "blacklisted_word": _blacklisted,
    "write_a_program": _write_a_program,
    "starts_with_punctuation": _starts_with_punctuation,
    "non_ascii_start": _non_ascii_start,
    "empty_output": _empty_output,
}
FILTER_NAMES: tuple[str, ...] = tuple(_CHECKS)


def check_candidate(
    candidate: Candidate, config: FilterConfig | None = None, *, skip: Sequence[str] = ()
) -> tuple[str, str] | None:
    """Return ``(reason, detail)`` for the first filter the candidate fails, or ``None``.

    ``skip`` names filters not to run for this call (seed instructions have no output to check
    when only the instruction is judged).
    """
    config = config or FilterConfig()
    for name, check in _CHECKS.items():
        if name in config.disabled or name in skip:
            continue
        detail = check(candidate, config)
        if detail is not None:
            return name, detail
    return None
