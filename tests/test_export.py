"""Exporters: exact output shapes, round trips, stdout, atomic writes and error cases."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest

from selfinstruct import export as export_mod
from selfinstruct.errors import ConfigError, StoreError
from selfinstruct.export import (
    EXPORT_FORMATS,
    PROMPT_NO_INPUT,
    PROMPT_WITH_INPUT,
    chat_prompt,
    export_dataset,
    training_prompt,
)
from selfinstruct.store import RunStore

from conftest import add_tasks

TEXT_FORMATS = [f for f in EXPORT_FORMATS if f not in ("hf", "sqlite")]

RECORDS = [
    {
        "schema": 1,
        "id": "task-000000",
        "instruction": "Give three tips for staying focused while studying.",
        "input": "",
        "output": "1. Silence your phone.\n2. Take short breaks.\n3. Set one goal per session.",
        "most_similar_instruction": "Give three tips for staying healthy.",
        "rouge_l": 0.41,
        "request": 3,
        "model": "m",
    },
    {
        "schema": 1,
        "id": "task-000001",
        "instruction": "Translate the sentence into German.",
        "input": "The weather is lovely today.",
        "output": "Das Wetter ist heute herrlich. \u2600\ufe0f",
        "rouge_l": 0.22,
    },
    # Only the guaranteed fields, and no "input" key at all.
    {"instruction": "Name a prime number larger than 10.", "output": "11"},
    # A whitespace-only input counts as no input in the prompt formats.
    {"instruction": "Write a \"quoted\" limerick.", "input": "  ", "output": "There once was a \\ backslash"},
]

EXPECTED_CORE = [
    {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in RECORDS
]


def _write_run(directory: Path, records: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (directory / "instructions.jsonl").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return _write_run(tmp_path / "run", RECORDS)


@pytest.fixture
def empty_run(tmp_path: Path) -> Path:
    with RunStore(tmp_path / "empty"):
        pass
    return tmp_path / "empty"


def _jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _require_datasets():
    if os.environ.get("CI") == "true":
        import datasets  # must be installed in CI
    else:
        datasets = pytest.importorskip("datasets")
    return datasets


# ---------------------------------------------------------------- shapes


def test_alpaca_is_one_indented_json_list(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "alpaca.json"
    assert export_dataset(run_dir, "alpaca", dest) == len(RECORDS)
    text = dest.read_text(encoding="utf-8")
    assert text == json.dumps(EXPECTED_CORE, indent=2, ensure_ascii=False) + "\n"
    assert json.loads(text) == EXPECTED_CORE
    # ensure_ascii=False: the emoji is stored as itself, not as \u escapes.
    assert "\u2600" in text and "\\u2600" not in text


def test_alpaca_jsonl_one_object_a_line(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "a.jsonl"
    assert export_dataset(run_dir, "alpaca-jsonl", dest) == 4
    assert _jsonl(dest) == EXPECTED_CORE
    assert len(dest.read_text(encoding="utf-8").splitlines()) == 4


@pytest.mark.parametrize("fmt", ["alpaca", "alpaca-jsonl"])
def test_include_meta_keeps_extra_fields_after_the_core_ones(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / "meta"
    export_dataset(run_dir, fmt, dest, include_meta=True)
    rows = json.loads(dest.read_text(encoding="utf-8")) if fmt == "alpaca" else _jsonl(dest)
    assert list(rows[0]) == [
        "instruction", "input", "output", "id", "most_similar_instruction", "rouge_l", "request", "model",
    ]  # fmt: skip
    assert rows[0]["rouge_l"] == 0.41 and rows[0]["id"] == "task-000000"
    assert rows[1] == {**EXPECTED_CORE[1], "id": "task-000001", "rouge_l": 0.22}
    assert rows[2] == EXPECTED_CORE[2]
    assert all("schema" not in row for row in rows)


def test_without_meta_only_core_fields(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "plain.jsonl"
    export_dataset(run_dir, "alpaca-jsonl", dest)
    assert all(list(row) == ["instruction", "input", "output"] for row in _jsonl(dest))


@pytest.mark.parametrize("fmt", ["sharegpt", "openai", "prompt-completion", "hf"])
def test_include_meta_refused_for_fixed_shape_formats(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    with pytest.raises(ConfigError, match="cannot include metadata"):
        export_dataset(run_dir, fmt, tmp_path / "x", include_meta=True)
    assert not (tmp_path / "x").exists()


def test_sharegpt_shape(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sharegpt.jsonl"
    assert export_dataset(run_dir, "sharegpt", dest) == 4
    rows = _jsonl(dest)
    assert rows[0] == {
        "conversations": [
            {"from": "human", "value": RECORDS[0]["instruction"]},
            {"from": "gpt", "value": RECORDS[0]["output"]},
        ]
    }
    assert rows[1]["conversations"][0] == {
        "from": "human",
        "value": "Translate the sentence into German.\n\nThe weather is lovely today.",
    }
    assert rows[3]["conversations"][0]["value"] == RECORDS[3]["instruction"]  # blank input left out


def test_openai_messages_shape(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "openai.jsonl"
    assert export_dataset(run_dir, "openai", dest) == 4
    rows = _jsonl(dest)
    assert rows[1] == {
        "messages": [
            {"role": "user", "content": "Translate the sentence into German.\n\nThe weather is lovely today."},
            {"role": "assistant", "content": "Das Wetter ist heute herrlich. \u2600\ufe0f"},
        ]
    }
    assert [m["role"] for row in rows for m in row["messages"]] == ["user", "assistant"] * 4
    assert rows[2]["messages"][0]["content"] == "Name a prime number larger than 10."


def test_prompt_completion_uses_the_two_template_variants(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "pc.jsonl"
    assert export_dataset(run_dir, "prompt-completion", dest) == 4
    rows = _jsonl(dest)
    assert all(list(row) == ["prompt", "completion"] for row in rows)
    assert [row["completion"] for row in rows] == [r["output"] for r in RECORDS]

    with_input = rows[1]["prompt"]
    assert with_input.endswith(
        "\n\n### Instruction:\nTranslate the sentence into German.\n\n"
        "### Input:\nThe weather is lovely today.\n\n### Response:\n"
    )
    preamble = with_input.split("\n\n", 1)[0]
    assert preamble.endswith(".") and "\n" not in preamble and "#" not in preamble

    for row, record in zip([rows[0], rows[2], rows[3]], [RECORDS[0], RECORDS[2], RECORDS[3]]):
        assert "### Input:" not in row["prompt"]
        assert row["prompt"].endswith(f"\n\n### Instruction:\n{record['instruction']}\n\n### Response:\n")
    assert rows[0]["prompt"] == PROMPT_NO_INPUT.format(instruction=RECORDS[0]["instruction"])
    assert with_input == PROMPT_WITH_INPUT.format(
        instruction="Translate the sentence into German.", input="The weather is lovely today."
    )


def test_prompt_helpers() -> None:
    assert chat_prompt("Do it.", "") == "Do it."
    assert chat_prompt("Do it.", " \n") == "Do it."
    assert chat_prompt("Do it.", "data") == "Do it.\n\ndata"
    assert training_prompt("Do it.") != training_prompt("Do it.", "data")
    assert "### Input:\ndata\n\n" in training_prompt("Do it.", "data")


# ---------------------------------------------------------------- hf


def test_hf_round_trip(run_dir: Path, tmp_path: Path) -> None:
    datasets = _require_datasets()
    dest = tmp_path / "hf"
    assert export_dataset(run_dir, "hf", dest) == 4
    loaded = datasets.load_from_disk(str(dest))
    assert loaded.column_names == ["instruction", "input", "output"]
    assert loaded.to_list() == EXPECTED_CORE
    assert _leftovers(tmp_path) == []


def test_hf_replaces_a_previous_export(run_dir: Path, tmp_path: Path) -> None:
    datasets = _require_datasets()
    dest = tmp_path / "hf"
    export_dataset(run_dir, "hf", dest)
    smaller = _write_run(tmp_path / "run2", RECORDS[:1])
    assert export_dataset(smaller, "hf", dest) == 1
    assert datasets.load_from_disk(str(dest)).to_list() == EXPECTED_CORE[:1]
    assert _leftovers(tmp_path) == []


def test_hf_refuses_to_replace_unrelated_things(run_dir: Path, tmp_path: Path) -> None:
    _require_datasets()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a saved dataset"):
        export_dataset(run_dir, "hf", folder)
    assert (folder / "cat.jpg").read_bytes() == b"x"
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    with pytest.raises(ConfigError, match="is a file"):
        export_dataset(run_dir, "hf", a_file)
    assert a_file.read_text() == "keep"


def test_hf_empty_dataset_keeps_the_columns(empty_run: Path, tmp_path: Path) -> None:
    datasets = _require_datasets()
    assert export_dataset(empty_run, "hf", tmp_path / "hf") == 0
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert loaded.num_rows == 0
    assert loaded.column_names == ["instruction", "input", "output"]


def test_hf_cannot_go_to_stdout(run_dir: Path) -> None:
    with pytest.raises(ConfigError, match="standard output"):
        export_dataset(run_dir, "hf", "-")


def test_hf_without_datasets_names_the_extra(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ConfigError, match=r'pip install "selfinstruct\[hf\]"'):
        export_dataset(run_dir, "hf", tmp_path / "hf")


# ---------------------------------------------------------------- destinations and errors


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_stdout_gets_the_same_bytes_as_a_file(run_dir: Path, tmp_path: Path, capsys, fmt: str) -> None:
    dest = tmp_path / "file"
    export_dataset(run_dir, fmt, dest)
    capsys.readouterr()
    assert export_dataset(run_dir, fmt, "-") == 4
    assert capsys.readouterr().out == dest.read_text(encoding="utf-8")
    assert not (Path.cwd() / "-").exists()


def test_atomic_write_leaves_only_the_destination(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for fmt in TEXT_FORMATS:
        export_dataset(run_dir, fmt, out / f"{fmt}.data")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{fmt}.data" for fmt in TEXT_FORMATS)


def test_failed_write_keeps_the_old_file_and_no_temp(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "data.jsonl"
    dest.write_text("previous export\n", encoding="utf-8")

    def broken(rows):
        yield json.dumps(rows[0]) + "\n"
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(export_mod._TEXT_WRITERS, "alpaca-jsonl", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_dataset(run_dir, "alpaca-jsonl", dest)
    assert dest.read_text(encoding="utf-8") == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "run"]


def test_overwrites_and_has_normal_file_mode(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "a.json"
    dest.write_text("old", encoding="utf-8")
    old_mask = os.umask(0o022)
    try:
        export_dataset(run_dir, "alpaca", dest)
    finally:
        os.umask(old_mask)
    assert json.loads(dest.read_text(encoding="utf-8")) == EXPECTED_CORE
    assert dest.stat().st_mode & 0o777 == 0o644  # not the 0600 of a private temp file


def test_destination_directory_is_an_error(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        export_dataset(run_dir, "alpaca", tmp_path)


def test_unknown_format_lists_the_formats(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        export_dataset(run_dir, "csv", tmp_path / "x.csv")
    message = str(info.value)
    assert "'csv'" in message
    assert all(fmt in message for fmt in EXPORT_FORMATS)
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_empty_dataset_is_not_an_error(empty_run: Path, tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / "empty.out"
    assert export_dataset(empty_run, fmt, dest) == 0
    assert dest.read_text(encoding="utf-8") == ("[]\n" if fmt == "alpaca" else "")
    if fmt == "alpaca":
        assert json.loads(dest.read_text(encoding="utf-8")) == []


def test_missing_run_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a directory"):
        export_dataset(tmp_path / "nope", "alpaca", tmp_path / "a.json")
    (tmp_path / "notarun").mkdir()
    with pytest.raises(StoreError, match="does not exist"):
        export_dataset(tmp_path / "notarun", "alpaca", tmp_path / "a.json")
    assert not (tmp_path / "a.json").exists()


def test_record_without_output_is_reported(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", [RECORDS[0], {"instruction": "No answer here."}])
    with pytest.raises(StoreError, match="record 2"):
        export_dataset(run, "alpaca", tmp_path / "a.json")
    assert not (tmp_path / "a.json").exists()


def test_run_written_by_runstore_with_a_torn_last_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore(run) as store:
        for i in range(3):
            add_tasks(store, [(f"Task {i}?", "", f"answer {i}")], rouge_l=0.1 * i)
    # A crash mid-append leaves half a line; exports skip it.
    with (run / "instructions.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"schema":1,"instruction":"half a li')
    dest = tmp_path / "a.jsonl"
    assert export_dataset(run, "alpaca-jsonl", dest, include_meta=True) == 3
    rows = _jsonl(dest)
    assert [r["id"] for r in rows] == ["task-000000", "task-000001", "task-000002"]
    assert rows[2]["output"] == "answer 2"


# ---------------------------------------------------------------- destinations that must survive


def _full_run(directory: Path) -> dict[str, bytes]:
    """A run directory with the files a run has; return their bytes, to compare afterwards."""
    _write_run(directory, RECORDS)
    (directory / "rejected.jsonl").write_text('{"reason": "too_short", "instruction": "Hi"}\n', encoding="utf-8")
    (directory / "run.json").write_text('{"schema": 1, "status": "done"}\n', encoding="utf-8")
    (directory / ".lock").write_text("123", encoding="utf-8")
    return _snapshot(directory)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "name", ["instructions.jsonl", "rejected.jsonl", "run.json", ".lock", "alpaca.json", "exports/alpaca.json"]
)
@pytest.mark.parametrize("fmt", ["alpaca", "alpaca-jsonl"])
def test_refuses_to_write_inside_the_run_directory(tmp_path: Path, name: str, fmt: str) -> None:
    run = tmp_path / "run"
    before = _full_run(run)
    dest = run / name
    with pytest.raises(ConfigError) as info:
        export_dataset(run, fmt, dest)
    message = str(info.value)
    assert str(dest) in message and "inside the run directory" in message and "outside" in message
    assert "\n" not in message
    assert _snapshot(run) == before  # not a byte changed, no temp file left
    assert not (run / "exports").exists()


def test_the_run_directory_is_recognised_by_any_path(tmp_path: Path) -> None:
    run = tmp_path / "run"
    before = _full_run(run)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "alias").symlink_to(run, target_is_directory=True)
    for dest in (tmp_path / "elsewhere" / ".." / "run" / "instructions.jsonl", tmp_path / "alias" / "run.json"):
        with pytest.raises(ConfigError, match="inside the run directory"):
            export_dataset(run, "alpaca-jsonl", dest)
    with pytest.raises(ConfigError, match="inside the run directory"):
        export_dataset(tmp_path / "alias", "alpaca-jsonl", run / "instructions.jsonl")
    assert _snapshot(run) == before


def test_a_file_next_to_the_run_directory_is_fine(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _full_run(run)
    rows = export_dataset(run, "alpaca", tmp_path / "run.json")  # same name, other directory
    assert rows > 0 and len(json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))) == rows


@pytest.mark.parametrize("fmt", ["alpaca", "hf"])
def test_symlink_destination_is_refused(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not touch", encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(target)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for dest in (link, dangling):
        with pytest.raises(ConfigError, match="is a symbolic link") as info:
            export_dataset(run_dir, fmt, dest)
        assert str(dest) in str(info.value)
        assert dest.is_symlink()
    assert target.read_text(encoding="utf-8") == "do not touch"
    assert not (tmp_path / "nowhere").exists()
    assert _leftovers(tmp_path) == []


def test_fifo_destination_is_refused(run_dir: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"named pipe .*not a regular file.*'-'") as info:
        export_dataset(run_dir, "alpaca-jsonl", fifo)
    assert str(fifo) in str(info.value)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _leftovers(tmp_path) == []


def test_device_destination_is_refused(run_dir: Path, tmp_path: Path) -> None:
    # A private twin of /dev/null (same device numbers), so a regression cannot harm the real one.
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (OSError, AttributeError):
        pytest.skip("creating a device node needs root (CAP_MKNOD)")
    with pytest.raises(ConfigError, match="is a character device, not a regular file"):
        export_dataset(run_dir, "alpaca", device)
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_hf_refuses_the_run_directory_and_what_contains_it(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "state.json").write_text("{}", encoding="utf-8")  # looks like a saved dataset
    run = outer / "run"
    before = _full_run(run)
    with pytest.raises(ConfigError, match="inside the run directory"):
        export_dataset(run, "hf", run / "hf")
    # Replacing "outer" would move the run aside and delete it with the old copy.
    with pytest.raises(ConfigError, match="contains the run directory"):
        export_dataset(run, "hf", outer)
    assert _snapshot(run) == before and (outer / "state.json").exists()


def test_hf_refuses_a_fifo(run_dir: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="named pipe"):
        export_dataset(run_dir, "hf", fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_write_error_is_a_one_line_store_error(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "data.jsonl"
    dest.write_text("previous export\n", encoding="utf-8")

    def disk_full(rows):
        yield "x" * 10
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(export_mod._TEXT_WRITERS, "alpaca-jsonl", disk_full)
    with pytest.raises(StoreError, match=rf"cannot write {re.escape(str(dest))}: No space left on device"):
        export_dataset(run_dir, "alpaca-jsonl", dest)
    assert dest.read_text(encoding="utf-8") == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "run"]


# ---------------------------------------------------------------- sqlite (datasette)


def _sqlite_rows(path: Path, sql: str) -> list[tuple]:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_sqlite_keeps_every_field(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "run.db"
    assert export_dataset(run_dir, "sqlite", dest) == 4
    rows = _sqlite_rows(dest, "SELECT instruction, input, output, id, rouge_l, model FROM tasks ORDER BY rowid")
    assert [r[:3] for r in rows] == [tuple(r.values()) for r in EXPECTED_CORE]
    assert rows[0][3:] == ("task-000000", 0.41, "m") and rows[2][3:] == (None, None, None)
    columns = [r[1] for r in _sqlite_rows(dest, "PRAGMA table_info(tasks)")]
    assert columns[:4] == ["id", "instruction", "input", "output"] and "schema" not in columns
    assert _sqlite_rows(dest, "SELECT count(*) FROM rejected") == [(0,)]


def test_sqlite_has_rejections_requests_search_and_pairs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore(run) as store:
        add_tasks(store, [("Translate the greeting into German.", "Hello", "Hallo")], rejected=[("too_short", "Hi.")])
        add_tasks(store, [("Name the largest planet.", "", "Jupiter")], rejected=[("near_duplicate", "Name the largest planets.")])
    (run / "flags.jsonl").write_text('{"ref": "task-000001", "kind": "accepted", "flagged": true, "note": "check"}\n{"ref"')
    dest = tmp_path / "run.db"
    assert export_dataset(run, "sqlite", dest, include_meta=True) == 2
    assert _sqlite_rows(dest, "SELECT line, reason, instruction FROM rejected ORDER BY line") == [
        (0, "too_short", "Hi."), (1, "near_duplicate", "Name the largest planets."),
    ]  # fmt: skip
    assert _sqlite_rows(dest, "SELECT request, outcome FROM requests ORDER BY request") == [(0, "answered"), (1, "answered")]
    assert _sqlite_rows(dest, "SELECT ref, note FROM flags") == [("task-000001", "check")]
    hits = _sqlite_rows(dest, "SELECT t.id FROM tasks_fts JOIN tasks t ON t.rowid = tasks_fts.rowid WHERE tasks_fts MATCH 'german'")
    assert hits == [("task-000000",)]
    # datasette offers search on a table when an FTS table names it as content="table".
    sql = _sqlite_rows(dest, "SELECT sql FROM sqlite_master WHERE name = 'tasks_fts'")[0][0]
    assert 'content="tasks"' in sql
    assert _sqlite_rows(dest, "SELECT candidate FROM near_duplicates") == [("Name the largest planets.",)]


def test_sqlite_destination_rules(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot go to standard output"):
        export_dataset(run_dir, "sqlite", "-")
    with pytest.raises(ConfigError, match="inside the run directory"):
        export_dataset(run_dir, "sqlite", run_dir / "run.db")
    dest = tmp_path / "run.db"
    dest.write_text("an older export", encoding="utf-8")
    export_dataset(run_dir, "sqlite", dest)  # replaced whole, never appended to
    assert _sqlite_rows(dest, "SELECT count(*) FROM tasks") == [(4,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.db"]


def test_sqlite_failure_keeps_the_old_file(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "run.db"
    dest.write_text("previous export", encoding="utf-8")

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_mod, "_sql_table", broken)
    with pytest.raises(StoreError, match="cannot write .*run.db.*previous file is unchanged"):
        export_dataset(run_dir, "sqlite", dest)
    assert dest.read_text(encoding="utf-8") == "previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.db"]


def test_sqlite_from_the_command_line(run_dir: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    result = run_cli("export", str(run_dir), "--format", "sqlite", "-o", str(tmp_path / "run.db"))
    assert result.returncode == 0, result.stderr
    assert "wrote 4 tasks" in result.stderr
    assert _sqlite_rows(tmp_path / "run.db", "SELECT count(*) FROM tasks") == [(4,)]
