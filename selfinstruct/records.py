"""Plain records passed between the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Candidate", "SeedTask"]


@dataclass(frozen=True)
class SeedTask:
    """One human-written task (Self-Instruct schema); Alpaca rows load with one instance."""

    id: str
    name: str
    instruction: str
    instances: tuple[tuple[str, str], ...]  # (input, output) pairs
    is_classification: bool = False

    @property
    def input(self) -> str:
        return self.instances[0][0] if self.instances else ""

    @property
    def output(self) -> str:
        return self.instances[0][1] if self.instances else ""


@dataclass(frozen=True)
class Candidate:
    """A task parsed from a model answer, not yet judged."""

    instruction: str
    input: str = ""
    output: str = ""
    meta: dict[str, object] = field(default_factory=dict, compare=False)
