"""Heuristic filters: each one has a name, and that name is the rejection reason on disk.

The defaults follow the Alpaca recipe (length bounds, a whole-word keyword blacklist, no
"Write a program", no leading punctuation or non-ASCII character) plus an empty-output check.

Non-English data: the Alpaca recipe counts words by whitespace, so a Chinese or Japanese
instruction is one "word" and always ``too_short``. ``FilterConfig(word_tokenizer="unicode")``
counts words as ``similarity.tokenize(text, "unicode")`` does (every CJK character is a word),
the same tokens the ``unicode`` similarity tokenizer compares; ``non_ascii_start`` is English-only
by design and has to be disabled for such data.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import ConfigError
from .records import Candidate

__all__ = [
    "DEFAULT_BLACKLIST",
    "FILTER_NAMES",
    "WORD_TOKENIZERS",
    "FilterConfig",
    "check_candidate",
    "count_words",
]

# How the length filters count words: "whitespace" (the Alpaca recipe) or "unicode"
# (selfinstruct.similarity's unicode tokenizer).
WORD_TOKENIZERS: tuple[str, ...] = ("whitespace", "unicode")

# Tasks a text-only model cannot do or answer well.
DEFAULT_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip


@dataclass(frozen=True)
class FilterConfig:
    """Which filters run and their parameters. ``disabled`` holds filter names to skip.

    ``word_tokenizer`` is how ``min_words``/``max_words`` count (see :data:`WORD_TOKENIZERS`).
    """

    min_words: int = 4  # instructions of 3 words or fewer are rejected
    max_words: int = 150
    blacklist: tuple[str, ...] = DEFAULT_BLACKLIST
    disabled: frozenset[str] = field(default_factory=frozenset)
    word_tokenizer: str = "whitespace"

    def __post_init__(self) -> None:
        if self.word_tokenizer not in WORD_TOKENIZERS:
            raise ConfigError(
                f"unknown word tokenizer {self.word_tokenizer!r}; choose from {', '.join(WORD_TOKENIZERS)}"
            )
        unknown = set(self.disabled) - set(FILTER_NAMES)
        if unknown:
            raise ConfigError(
                f"unknown filter name(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(FILTER_NAMES)}"
            )
        if self.min_words > self.max_words:
            raise ConfigError(f"--min-words {self.min_words} is above --max-words {self.max_words}")

    def as_dict(self) -> dict[str, object]:
        settings: dict[str, object] = {
            "min_words": self.min_words,
            "max_words": self.max_words,
            "blacklist": list(self.blacklist),
            "disabled": sorted(self.disabled),
        }
        # Only when not the default, so fingerprints of existing runs stay the same.
        if self.word_tokenizer != "whitespace":
            settings["word_tokenizer"] = self.word_tokenizer
        return settings


def count_words(text: str, word_tokenizer: str = "whitespace") -> int:
    """Words in ``text`` as the length filters count them (see :data:`WORD_TOKENIZERS`)."""
    if word_tokenizer == "unicode":
        from .similarity import tokenize  # numpy/rapidfuzz: only load them when asked for

        return len(tokenize(text, "unicode"))
    return len(text.split())


class _Blacklist(NamedTuple):
    pattern: re.Pattern[str] | None  # the rule: the words as whole words, in any case
    # For an all-ASCII blacklist: the words anywhere, then as whole words, both for lowercased
    # ASCII text. The first rules out most texts fast (a case-sensitive pattern of plain words
    # can skip ahead); the second finds what ``pattern`` finds.
    ascii: tuple[re.Pattern[str], re.Pattern[str]] | None


def _compile_blacklist(words: Iterable[str]) -> _Blacklist:
    words = [w for w in words if w.strip()]
    if not words:
        return _Blacklist(None, None)
    ordered = [w.strip() for w in sorted(words, key=len, reverse=True)]
    pattern = re.compile(rf"\b(?:{'|'.join(map(re.escape, ordered))})\b", re.IGNORECASE)
    if not all(w.isascii() for w in ordered):
        return _Blacklist(pattern, None)
    lowered = "|".join(re.escape(w.lower()) for w in ordered)
    return _Blacklist(pattern, (re.compile(lowered), re.compile(rf"\b(?:{lowered})\b")))


_blacklist_cache: dict[tuple[str, ...], _Blacklist] = {}


def _blacklisted_word(text: str, config: FilterConfig) -> str | None:
    blacklist = _blacklist_cache.get(config.blacklist)
    if blacklist is None:
        blacklist = _blacklist_cache[config.blacklist] = _compile_blacklist(config.blacklist)
    if blacklist.ascii is not None and text.isascii():
        # On ASCII text, ignoring case is comparing lowercased letters, and lowering keeps word
        # boundaries and offsets: the same match, already lowercase.
        anywhere, whole_words = blacklist.ascii
        lowered = text.lower()
        match = whole_words.search(lowered) if anywhere.search(lowered) else None
        return match.group(0) if match else None
    match = blacklist.pattern.search(text) if blacklist.pattern else None
    return match.group(0).lower() if match else None


Check = Callable[[Candidate, FilterConfig], "str | None"]


def _too_short(c: Candidate, cfg: FilterConfig) -> str | None:
    n = count_words(c.instruction, cfg.word_tokenizer)
    return f"{n} words" if n < cfg.min_words else None


def _too_long(c: Candidate, cfg: FilterConfig) -> str | None:
    n = count_words(c.instruction, cfg.word_tokenizer)
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
