"""The package type-checks: a gate, so type errors fail CI like any other bug."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_mypy_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
