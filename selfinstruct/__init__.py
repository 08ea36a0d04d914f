"""selfinstruct: grow an instruction-tuning dataset from seed tasks with any OpenAI-compatible server.

The library API mirrors the CLI: :func:`generate` (``selfinstruct generate``),
:func:`export_dataset` (``selfinstruct export``), :func:`check_seeds` (``selfinstruct seeds check``),
:func:`compute_stats` (``selfinstruct stats``).

Names are imported on first use, so ``import selfinstruct`` (and ``selfinstruct --version``)
stays fast: numpy, the openai SDK and rouge-score load only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AuthError": "errors",
    "BadRequest": "errors",
    "ClientError": "errors",
    "ConfigError": "errors",
    "LockedError": "errors",
    "ModelNotFound": "errors",
    "SeedError": "errors",
    "SelfInstructError": "errors",
    "ServerUnreachable": "errors",
    "StoreError": "errors",
    "EXPORT_FORMATS": "export",
    "export_dataset": "export",
    "DEFAULT_BLACKLIST": "filters",
    "FilterConfig": "filters",
    "check_candidate": "filters",
    "RunConfig": "config",
    "RunSummary": "runner",
    "generate": "runner",
    "run_generation": "runner",
    "AcceptedTask": "records",
    "Candidate": "records",
    "Counters": "records",
    "Rejection": "records",
    "RequestRecord": "records",
    "SeedTask": "records",
    "SeedReport": "seeds",
    "check_seeds": "seeds",
    "load_seed_tasks": "seeds",
    "RougeLIndex": "similarity",
    "compute_stats": "stats",
    "format_stats": "stats",
    "plot_stats": "stats",
    "RunStore": "store",
    "read_accepted": "store",
    "read_accepted_records": "store",
    "Judge": "judge",
    "EmbeddedServer": "local",
    "JudgeConfig": "config",
    "JudgeFilter": "export",
    "JudgeSummary": "judging",
    "judge_tasks": "judging",
    "run_judge": "judging",
    "Judgment": "records",
    "read_judgments": "store",
    "calibrate": "calibration",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'selfinstruct' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # next time without this hook
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .calibration import calibrate
    from .config import JudgeConfig, RunConfig
    from .errors import (
        AuthError,
        BadRequest,
        ClientError,
        ConfigError,
        LockedError,
        ModelNotFound,
        SeedError,
        SelfInstructError,
        ServerUnreachable,
        StoreError,
    )
    from .export import EXPORT_FORMATS, JudgeFilter, export_dataset
    from .filters import DEFAULT_BLACKLIST, FilterConfig, check_candidate
    from .judge import Judge
    from .judging import JudgeSummary, judge_tasks, run_judge
    from .local import EmbeddedServer
    from .records import AcceptedTask, Candidate, Counters, Judgment, Rejection, RequestRecord, SeedTask
    from .runner import RunSummary, generate, run_generation
    from .seeds import SeedReport, check_seeds, load_seed_tasks
    from .similarity import RougeLIndex
    from .stats import compute_stats, format_stats, plot_stats
    from .store import RunStore, read_accepted, read_accepted_records, read_judgments
