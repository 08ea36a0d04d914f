"""The public library API: what ``selfinstruct`` exports, and that it works without the CLI."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap

from conftest import REPO

import selfinstruct

ENTRY_POINTS = (
    "generate",
    "run_generation",
    "RunConfig",
    "export_dataset",
    "check_seeds",
    "load_seed_tasks",
    "RougeLIndex",
    "compute_stats",
)


def test_all_is_sorted_and_unique() -> None:
    names = selfinstruct.__all__
    assert len(names) == len(set(names))
    assert names == sorted(names)


def test_every_exported_name_exists() -> None:
    missing = [name for name in selfinstruct.__all__ if not hasattr(selfinstruct, name)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec("from selfinstruct import *", namespace)
    assert set(selfinstruct.__all__) <= set(namespace)


def test_key_entry_points_are_exported_and_callable() -> None:
    for name in ENTRY_POINTS:
        assert name in selfinstruct.__all__, name
        assert callable(getattr(selfinstruct, name)), name


def test_version_matches_package_metadata() -> None:
    assert selfinstruct.__version__ == importlib.metadata.version("selfinstruct")


def test_library_works_without_the_cli() -> None:
    """In a fresh interpreter: load and check the seeds, query the index, never import the CLI."""
    script = textwrap.dedent(
        """
        import json, sys
        import selfinstruct as si

        tasks = si.load_seed_tasks()
        report = si.check_seeds()
        index = si.RougeLIndex()
        index.extend(t.instruction for t in tasks)
        found = [index.nearest(t.instruction) for t in tasks]
        print(json.dumps({
            "n": len(tasks),
            "all_seed_tasks": all(isinstance(t, si.SeedTask) for t in tasks),
            "ok": report.ok,
            "report_tasks": report.tasks,
            "self_match": all(s == 1.0 and i == k for k, (s, i) in enumerate(found)),
            "cli_imported": "selfinstruct.cli" in sys.modules,
        }))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] >= 175
    assert result["all_seed_tasks"]
    assert result["ok"]
    assert result["report_tasks"] == result["n"]
    assert result["self_match"]
    assert not result["cli_imported"]


def test_nearest_seed_is_itself_in_process() -> None:
    tasks = selfinstruct.load_seed_tasks()
    index = selfinstruct.RougeLIndex()
    ids = index.extend(t.instruction for t in tasks)
    assert ids == list(range(len(tasks)))
    for k, task in enumerate(tasks):
        assert index.nearest(task.instruction) == (1.0, k)
    # A seed that is not in the index is below the near-duplicate threshold against the rest.
    rest = selfinstruct.RougeLIndex()
    rest.extend(t.instruction for t in tasks[1:])
    score, nearest = rest.nearest(tasks[0].instruction)
    assert nearest is not None and 0.0 < score <= 0.7
