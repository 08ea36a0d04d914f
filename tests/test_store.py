"""The store on crafted files: torn tails, NUL bytes, long lines, mid-file garbage, deleted lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import add_tasks
from selfinstruct.errors import StoreError
from selfinstruct.records import AcceptedTask, Counters, Rejection, RequestRecord
from selfinstruct.store import RunStore, read_accepted, read_accepted_records, scan_counters


def task_line(i: int, *, request: int | None = None, output: str = "an answer", newline: bool = True) -> bytes:
    record = {
        "schema": 1,
        "id": f"task-{i:06d}",
        "instruction": f"Describe step {i} of making bread at home.",
        "input": "",
        "output": output,
        "request": i if request is None else request,
    }
    return json.dumps(record).encode() + (b"\n" if newline else b"")


def write(path: Path, *chunks: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(chunks))


def opened(directory: Path) -> RunStore:
    store = RunStore(directory)
    store.open()
    return store


@pytest.mark.parametrize("tail", [b'{"schema":1,"id":"task-000003","instruction":"' + b"x" * (1 << 20) + b"y" * 5000, b"\x00" * (1 << 20)])
def test_a_torn_tail_longer_than_a_mebibyte_keeps_every_complete_record(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "instructions.jsonl"
    good = b"".join(task_line(i) for i in range(3))
    write(path, good, tail)
    store = opened(tmp_path)
    try:
        assert [r.id for r in store.accepted] == ["task-000000", "task-000001", "task-000002"]
        assert store.notices and "instructions.jsonl" in store.notices[0]
    finally:
        store.close()
    assert path.read_bytes() == good
    quarantine = tmp_path / "instructions.jsonl.quarantine"
    if tail.strip(b"\x00"):
        assert quarantine.read_bytes() == tail + b"\n"  # the torn bytes are kept, not deleted
    else:
        assert not quarantine.exists()


def test_a_valid_last_record_longer_than_a_mebibyte_survives_two_opens(tmp_path: Path) -> None:
    path = tmp_path / "instructions.jsonl"
    big = "word " * 300_000  # 1.5 MB output
    content = b"".join(task_line(i) for i in range(50)) + task_line(50, output=big)
    write(path, content)
    for _ in range(2):
        opened(tmp_path).close()
    assert path.read_bytes() == content
    assert len(read_accepted(tmp_path)) == 51


def test_a_long_valid_last_rejection_survives_and_is_counted(tmp_path: Path) -> None:
    write(tmp_path / "instructions.jsonl", task_line(0))
    rejection = {"reason": "too_long", "detail": "", "instruction": "Write " * 400_000, "request": 7}
    content = json.dumps({"reason": "too_short", "instruction": "Hi.", "request": 1}).encode() + b"\n"
    content += json.dumps(rejection).encode() + b"\n"
    write(tmp_path / "rejected.jsonl", content)
    for _ in range(2):
        store = opened(tmp_path)
        assert store.counters.rejected == {"too_short": 1, "too_long": 1}
        store.close()
    assert (tmp_path / "rejected.jsonl").read_bytes() == content
    assert scan_counters(tmp_path).rejected_total == 2


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "instructions.jsonl"
    write(path, task_line(0), task_line(1, newline=False))
    store = opened(tmp_path)
    try:
        assert [r.id for r in store.accepted] == ["task-000000", "task-000001"]
        assert store.next_task_number == 2
    finally:
        store.close()
    assert path.read_bytes() == task_line(0) + task_line(1)


def test_an_unreadable_line_in_the_middle_is_quarantined_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "instructions.jsonl"
    garbage = b"\x00\x00{not json at all\xff"
    write(path, task_line(0), garbage + b"\n", task_line(1), b'["a list, not a record"]\n', task_line(2))
    store = opened(tmp_path)
    try:
        assert [r.id for r in store.accepted] == ["task-000000", "task-000001", "task-000002"]
        assert any("moved 2 unreadable line(s) (line 2, 4" in n for n in store.notices)
    finally:
        store.close()
    assert path.read_bytes() == task_line(0) + task_line(1) + task_line(2)
    assert (tmp_path / "instructions.jsonl.quarantine").read_bytes() == garbage + b'\n["a list, not a record"]\n'


def test_ids_and_request_numbers_continue_from_the_highest_ever_written(tmp_path: Path) -> None:
    # A user deleted line 2 (task-000001), and the last request's tasks were all rejected.
    write(tmp_path / "instructions.jsonl", task_line(0, request=0), task_line(2, request=3))
    write(tmp_path / "rejected.jsonl", json.dumps({"reason": "near_duplicate", "instruction": "x", "request": 9}).encode() + b"\n")
    store = opened(tmp_path)
    try:
        assert store.new_task_id() == "task-000003"  # not task-000002: that one exists
        assert store.new_request_number() == 10
    finally:
        store.close()


def test_a_record_from_a_newer_version_is_refused_not_quarantined(tmp_path: Path) -> None:
    record = json.loads(task_line(0))
    record["schema"] = 99
    write(tmp_path / "instructions.jsonl", json.dumps(record).encode() + b"\n", task_line(1))
    with pytest.raises(StoreError, match="newer selfinstruct"):
        opened(tmp_path)
    assert not (tmp_path / "instructions.jsonl.quarantine").exists()


def test_counters_come_from_the_files_and_the_checkpoint_reads_only_the_tail(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        add_tasks(store, [("Name three rivers in Europe.", "", "Rhine, Danube, Seine.")], rejected=[("too_short", "Hi.")])
        add_tasks(store, [], rejected=[("near_duplicate", "Name three rivers of Europe.")])
        store.write_run({"status": "running"})
        # Appended after the last run.json, as when a SIGKILL hits between two saves.
        add_tasks(store, [("List two prime numbers above 50.", "", "53 and 59.")], rejected=[("blacklisted_word", "Draw it.")])
    store = opened(tmp_path)
    try:
        expected = Counters(accepted=2, requests=3, answers=3)
        expected.rejected.update({"too_short": 1, "near_duplicate": 1, "blacklisted_word": 1})
        assert store.counters == expected
        assert scan_counters(tmp_path) == expected
        assert store.next_request == 3
    finally:
        store.close()
    # A checkpoint that no longer fits its file (the file was replaced) is ignored, not trusted.
    rejected = tmp_path / "rejected.jsonl"
    rejected.write_bytes(rejected.read_bytes().splitlines(keepends=True)[-1])
    store = opened(tmp_path)
    try:
        assert store.counters.rejected == {"blacklisted_word": 1}
    finally:
        store.close()


def test_commit_writes_the_request_line_first_and_flushes_everything(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        number = store.new_request_number()
        task = AcceptedTask(id=store.new_task_id(), instruction="Give one synonym for quick.", input="", output="fast", request=number)
        rejection = Rejection(reason="too_short", detail="2 words", instruction="Say hi.", input="", output="hi", request=number)
        store.commit(RequestRecord(request=number, outcome="answered", prompt_tokens=10, completion_tokens=5), [task], [rejection])
        # Readable by another process before close: it is in the OS, not in a Python buffer.
        assert json.loads((tmp_path / "instructions.jsonl").read_bytes())["id"] == "task-000000"
        assert json.loads((tmp_path / "rejected.jsonl").read_bytes())["reason"] == "too_short"
        assert json.loads((tmp_path / "requests.jsonl").read_bytes())["completion_tokens"] == 5


def test_an_unreadable_run_json_is_kept_aside_and_rebuilt(tmp_path: Path) -> None:
    write(tmp_path / "instructions.jsonl", task_line(0))
    write(tmp_path / "run.json", b'{"status": "runn')
    store = opened(tmp_path)
    try:
        assert store.previous_run == {}
        assert any("run.json was unreadable" in n for n in store.notices)
        store.write_run({"status": "interrupted"})
    finally:
        store.close()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("run.json.unreadable-")]
    assert len(kept) == 1 and kept[0].read_bytes() == b'{"status": "runn'
    assert json.loads((tmp_path / "run.json").read_text())["checkpoint"]["counters"]["accepted"] == 1


def test_settings_survive_the_loss_of_run_json(tmp_path: Path) -> None:
    settings = {"temperature": 1.0, "model": "m"}
    with RunStore(tmp_path) as store:
        fingerprint = store.record_settings(settings)
        store.write_run({"status": "done"})
    (tmp_path / "run.json").unlink()
    with RunStore(tmp_path) as store:
        history = store.settings_history()
    assert [h["fingerprint"] for h in history] == [fingerprint]
    assert history[0]["settings"] == settings


def test_a_directory_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("a file")
    with pytest.raises(StoreError, match="exists and is not a directory"):
        opened(target)
    with pytest.raises(StoreError, match="choose another --output-dir"):
        opened(target / "below")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
def test_a_full_disk_is_one_clear_error(tmp_path: Path) -> None:
    """ENOSPC from a real, tiny file system (skipped where mounting is not allowed)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        filler = mount / "filler"
        filler.write_bytes(b"\0" * 40_000)  # leaves a few blocks for the run
        with RunStore(mount / "run") as store:
            with pytest.raises(StoreError, match="No space left on device.*free disk space"):
                for _ in range(200):
                    add_tasks(store, [(f"Explain idea {'x' * 400} clearly.", "", "y" * 400)])
            kept = [r.id for r in store.accepted]
        assert kept
        try:
            opened(mount / "run").close()
        except StoreError as exc:  # still full: a repair that needs room says so, and deletes nothing
            assert "No space left on device" in str(exc)
        filler.unlink()
        with RunStore(mount / "run") as store:  # space freed: repaired, nothing committed is lost
            assert [r.id for r in store.accepted][: len(kept)] == kept
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_lone_surrogate_is_stored_as_valid_json_and_reads_back(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        add_tasks(store, [("Describe this emoji \ud83d in words please.", "", "A face.")])
    raw = (tmp_path / "instructions.jsonl").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 on disk
    with RunStore(tmp_path) as store:
        assert store.accepted[0].instruction == "Describe this emoji \ud83d in words please."
        assert not store.notices


def test_the_accepted_tasks_read_back_from_the_file_as_written(tmp_path: Path) -> None:
    """The store keeps where each task begins, not the task: every field reads back, before and
    after a reopen that quarantined a line and skipped blank ones, and for tasks added since."""
    path = tmp_path / "instructions.jsonl"
    write(path, task_line(0), b"\n   \n", task_line(1), b"not json\n", task_line(2), b"\n")
    with RunStore(tmp_path) as store:
        assert store.notices  # the bad line went to quarantine: the file was rewritten under the starts
        add_tasks(store, [("Name a bird \ud83d that cannot fly.", "", "The kiwi.")], model="m1", settings="abc")
        add_tasks(store, [("List three rivers.", "x", "y"), ("Spell a word.", "", "z")], model="m2")
        on_disk = [r.to_json() for r in read_accepted_records(tmp_path)]
        assert [r.to_json() for r in store.accepted] == on_disk
        assert [store.accepted[i].to_json() for i in range(-len(on_disk), len(on_disk))] == on_disk + on_disk
        assert [r.id for r in store.accepted[1:4]] == ["task-000001", "task-000002", "task-000003"]
        with pytest.raises(IndexError):
            store.accepted[len(on_disk)]
        texts, ids = store.accepted.instructions_and_ids()
        assert (texts, ids) == ([r["instruction"] for r in on_disk], [r["id"] for r in on_disk])
        assert store.fingerprints_on_disk() == {"abc"} and store.models_on_disk() == {"", "m1", "m2"}
    with RunStore(tmp_path) as store:
        assert [r.to_json() for r in store.accepted] == on_disk
        assert store.accepted[-1].id == "task-000005" and store.new_task_id() == "task-000006"
        assert store.fingerprints_on_disk() == {"abc"} and store.models_on_disk() == {"", "m1", "m2"}


def test_an_accepted_file_changed_under_the_run_is_a_clear_error(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        add_tasks(store, [("Describe a cloud.", "", "White."), ("Describe the sea.", "", "Blue.")])
        (tmp_path / "instructions.jsonl").write_bytes(task_line(7))  # an editor replaced it
        with pytest.raises(StoreError, match="changed while the run was writing it"):
            store.accepted[1]
        with pytest.raises(StoreError, match="changed while the run was writing it"):
            list(store.accepted)
