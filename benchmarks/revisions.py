"""The package as committed at a git revision, for the benchmarks' "before" columns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Builds the native kernel beside the sources, as `pip install -e .` does (optional there too).
_BUILD = """
from setuptools import Extension, setup
setup(script_args=["-q", "build_ext", "--inplace"],
      ext_modules=[Extension("selfinstruct._overlap", ["selfinstruct/_overlap.c"], optional=True)])
"""


def package_at(rev: str, into: Path) -> Path:
    """Export ``selfinstruct/`` at ``rev`` into ``into`` (created), with its native kernel built
    when that revision has one; returns ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "selfinstruct"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if (into / "selfinstruct" / "_overlap.c").exists():
        subprocess.run([sys.executable, "-c", _BUILD], cwd=into, check=True, capture_output=True)
    return into


def native_kernel(code: Path) -> bool:
    """Whether the package in ``code`` has its native kernel built."""
    return any((code / "selfinstruct").glob("_overlap*.so")) or any((code / "selfinstruct").glob("_overlap*.pyd"))
