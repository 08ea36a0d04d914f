"""selfinstruct: grow an instruction-tuning dataset from seed tasks with any OpenAI-compatible server.

The library API mirrors the CLI: :func:`generate` (``selfinstruct generate``),
:func:`export_dataset` (``selfinstruct export``), :func:`check_seeds` (``selfinstruct seeds check``),
:func:`compute_stats` (``selfinstruct stats``).
"""

from __future__ import annotations

__version__ = "0.1.0"

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
from .export import EXPORT_FORMATS, export_dataset
from .filters import DEFAULT_BLACKLIST, FilterConfig, check_candidate
from .pipeline import RunConfig, RunSummary, generate, run_generation
from .records import Candidate, SeedTask
from .seeds import SeedReport, check_seeds, load_seed_tasks
from .similarity import RougeLIndex
from .stats import compute_stats, format_stats, plot_stats
from .store import RunStore, read_accepted

__all__ = [
    "AuthError",
    "BadRequest",
    "Candidate",
    "ClientError",
    "ConfigError",
    "DEFAULT_BLACKLIST",
    "EXPORT_FORMATS",
    "FilterConfig",
    "LockedError",
    "ModelNotFound",
    "RougeLIndex",
    "RunConfig",
    "RunStore",
    "RunSummary",
    "SeedError",
    "SeedReport",
    "SeedTask",
    "SelfInstructError",
    "ServerUnreachable",
    "StoreError",
    "__version__",
    "check_candidate",
    "check_seeds",
    "compute_stats",
    "export_dataset",
    "format_stats",
    "generate",
    "load_seed_tasks",
    "plot_stats",
    "read_accepted",
    "run_generation",
]
