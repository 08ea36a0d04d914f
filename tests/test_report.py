"""The run report: page data (counts, fields, links), escaping, well-formed HTML, and --serve's API."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from selfinstruct import report as report_mod
from selfinstruct.errors import ConfigError, StoreError
from selfinstruct.records import AcceptedTask, Rejection, RequestRecord
from selfinstruct.report import (
    FLAGS_FILE,
    ReportServer,
    build_page_data,
    load_run,
    write_report,
)
from selfinstruct.seeds import load_seed_tasks
from selfinstruct.stats import compute_stats
from selfinstruct.store import RunStore

from conftest import REPO, run_cli

SEEDS = load_seed_tasks()
HOSTILE = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=1"> & <!-- \u2028 x'


def _commit(store: RunStore, accepted: list[dict[str, Any]], rejected: list[dict[str, Any]], when: str) -> None:
    number = store.new_request_number()
    tasks = [
        AcceptedTask(id=store.new_task_id(), request=number, created=when, model="m", endpoint="http://e0/v1", **a)
        for a in accepted
    ]
    rejections = [Rejection(request=number, created=when, detail="", **r) for r in rejected]
    request = RequestRecord(request=number, outcome="answered", endpoint="http://e0/v1", prompt_tokens=100,
                            completion_tokens=400, candidates=len(accepted) + len(rejected), latency=2.5,
                            created=when)  # fmt: skip
    store.commit(request, tasks, rejections)


def make_run(directory: Path) -> Path:
    """Six tasks (one hostile, one near a seed), eight rejections of four reasons, one failed request."""
    seed = SEEDS[3]
    with RunStore(directory) as store:
        _commit(store, [
            dict(instruction="Write a haiku about the sea at night.", input="", output="Dark waves fold and hush.",
                 most_similar_instruction=seed.instruction, rouge_l=0.31, nearest_id=seed.id),
            dict(instruction="List three uses of a paperclip.", input="", output="Hold paper. Reset a router. Zip pull.",
                 most_similar_instruction=seed.instruction, rouge_l=0.12, nearest_id=seed.id),
        ], [
            dict(reason="too_short", instruction="Say hi.", input="", output="hi"),
            dict(reason="unparseable", instruction="", input="", output="I cannot list tasks."),
        ], "2025-03-01T08:00:00Z")  # fmt: skip
        _commit(store, [
            dict(instruction="Write a haiku about the sea at dawn.", input="", output="Grey light on the foam.",
                 most_similar_instruction="Write a haiku about the sea at night.", rouge_l=0.62, nearest_id="task-000000"),
            dict(instruction=HOSTILE, input="<b>bold</b>", output="a & b < c",
                 most_similar_instruction="List three uses of a paperclip.", rouge_l=0.05, nearest_id="task-000001"),
        ], [
            dict(reason="near_duplicate", instruction="Write a haiku about the sea at noon.", input="", output="Sun.",
                 rouge_l=0.875, most_similar_instruction="Write a haiku about the sea at night.", nearest_id="task-000000"),
            dict(reason="near_duplicate", instruction="List three uses of a paperclip!", input="", output="x",
                 rouge_l=1.0, most_similar_instruction="List three uses of a paperclip.", nearest_id="task-000001"),
            dict(reason="too_short", instruction="Be brief.", input="", output="ok"),
        ], "2025-03-01T08:10:00Z")  # fmt: skip
        _commit(store, [
            dict(instruction="Summarize the plot of a heist film in two sentences.", input="", output="They plan. It fails.",
                 most_similar_instruction="Write a haiku about the sea at dawn.", rouge_l=0.2, nearest_id="task-000002",
                 finish_reason="stop"),
            dict(instruction="Classify the sentiment of the review.", input="The food was cold.", output="negative",
                 most_similar_instruction="Summarize the plot of a heist film in two sentences.", rouge_l=0.1,
                 nearest_id="task-000004"),
        ], [
            dict(reason="near_duplicate", instruction="Write a haiku about the sea at dusk.", input="", output="Red.",
                 rouge_l=0.875, most_similar_instruction="Write a haiku about the sea at dawn.", nearest_id="task-000002"),
            dict(reason="blacklisted_word", instruction="Draw an image of a cat.", input="", output="no"),
            dict(reason="too_short", instruction="Go.", input="", output="ok"),
        ], "2025-03-01T08:20:00Z")  # fmt: skip
        failed = store.new_request_number()
        store.commit(RequestRecord(request=failed, outcome="failed", endpoint="http://e1/v1", error="timeout",
                                   created="2025-03-01T08:25:00Z"))  # fmt: skip
    return directory


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def _data_block(page: str) -> dict[str, Any]:
    found = re.findall(r'<script type="application/json" id="si-data">(.*?)</script>', page, flags=re.S)
    assert len(found) == 1
    return json.loads(found[0])  # type: ignore[no-any-return]


class _Checker(HTMLParser):
    """Collects tags; fails on unbalanced non-void elements."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "embed", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.starts: Counter[str] = Counter()
        self.attrs: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts[tag] += 1
        self.attrs.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)
        if self.stack and self.stack[-1] == "style":
            self.styles.append(data)


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# -- the single file --------------------------------------------------------------------------------


def test_counts_fields_and_links(run_dir: Path) -> None:
    data = build_page_data(load_run(run_dir))
    acc, rej, meta = data["acc"], data["rej"], data["meta"]
    assert acc["id"] == [f"task-{i:06d}" for i in range(6)]
    assert acc["instruction"][3] == HOSTILE and acc["input"][3] == "<b>bold</b>"
    assert meta["accepted"] == 6 and meta["rejected"] == 8
    assert meta["by_reason"] == {"too_short": 3, "unparseable": 1, "near_duplicate": 3, "blacklisted_word": 1}
    assert meta["included"] == meta["by_reason"]
    # Nearest neighbours are links: k >= 0 an accepted task, k < 0 a seed (only the seeds used are carried).
    assert data["seeds"]["id"] == [SEEDS[3].id] and data["seeds"]["instruction"] == [SEEDS[3].instruction]
    assert acc["near"] == [-1, -1, 0, 1, 2, 4] and acc["nearRaw"] == {}
    reasons = [data["dict"]["reason"][c] for c in rej["reason"]]
    near_rows = [i for i, r in enumerate(reasons) if r == "near_duplicate"]
    assert [rej["near"][i] for i in near_rows] == [0, 1, 2]
    assert [rej["rouge"][i] for i in near_rows] == [0.875, 1.0, 0.875]
    assert rej["n"] == list(range(8))
    assert acc["iw"][0] == 8 and acc["xw"][5] == 4 and acc["ow"][1] == 7
    assert data["dict"]["endpoint"][acc["endpoint"][0]] == "http://e0/v1"


def test_numbers_match_stats(run_dir: Path) -> None:
    stats = build_page_data(load_run(run_dir))["stats"]
    expected = compute_stats(run_dir)
    summary = stats["summary"]
    for key in ("accepted", "candidates", "accept_rate", "rejected", "requests", "failed_requests", "with_input"):
        assert summary[key] == expected[key], key
    assert dict(stats["rejected_by_reason"]) == expected["rejected_by_reason"]
    for field in ("instruction", "input", "output"):
        assert stats["words"][field]["percentiles"] == expected["words"][field]
    assert [b[2] for b in stats["rouge"]["bins"]] == [b["count"] for b in expected["rouge_l"]["bins"]]
    assert stats["rouge"]["threshold"] == expected["rouge_l"]["threshold"]
    assert stats["leading_words"]["top"] == [list(x) for x in expected["leading_words"]["top"]]
    assert sum(stats["timeline"]["accepted"]) == 6 and sum(stats["timeline"]["candidates"]) == 6 + 7
    endpoints = {row["endpoint"]: row for row in stats["endpoints"]["rows"]}
    assert endpoints["http://e0/v1"]["requests"] == 3 and endpoints["http://e0/v1"]["completion_tokens"] == 1200
    assert endpoints["http://e1/v1"]["failed"] == 1
    assert stats["failures"] == [["timeout", 1]]


def test_old_run_without_nearest_ids_links_by_text() -> None:
    data = build_page_data(load_run(REPO / "tests" / "data" / "run-0.1.0"))
    acc = data["acc"]
    assert len(acc["id"]) == 9 and all(k is not None for k in acc["near"])
    records = [json.loads(line) for line in (REPO / "tests/data/run-0.1.0/instructions.jsonl").read_text().splitlines()]
    for i, record in enumerate(records):
        k = acc["near"][i]
        text = acc["instruction"][k] if k >= 0 else data["seeds"]["instruction"][-1 - k]
        assert text == record["most_similar_instruction"]


def test_an_id_whose_text_differs_is_not_linked(tmp_path: Path) -> None:
    # A custom seed file may reuse the bundled ids: the text decides, and then it stays text.
    with RunStore(tmp_path / "run") as store:
        _commit(store, [dict(instruction="Name a color.", input="", output="red", rouge_l=0.3,
                             most_similar_instruction="Some custom seed text.", nearest_id=SEEDS[0].id)], [], "")  # fmt: skip
    data = build_page_data(load_run(tmp_path / "run"))
    assert data["acc"]["near"] == [None]
    assert data["acc"]["nearRaw"] == {0: [SEEDS[0].id, "Some custom seed text."]}


def test_max_rejected_is_a_stable_sample_per_reason(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run") as store:
        _commit(store, [dict(instruction="Name a color.", input="", output="red")],
                [dict(reason="too_short", instruction=f"Hi {i}.", input="", output="x") for i in range(50)]
                + [dict(reason="empty_output", instruction=f"Do {i}.", input="", output="") for i in range(3)],
                "")  # fmt: skip
    data = load_run(tmp_path / "run")
    first = build_page_data(data, max_rejected=10)
    again = build_page_data(data, max_rejected=10)
    assert first["rej"]["n"] == again["rej"]["n"]
    assert first["meta"]["included"] == {"too_short": 10, "empty_output": 3}
    assert first["meta"]["by_reason"] == {"too_short": 50, "empty_output": 3}
    assert first["rej"]["n"] == sorted(first["rej"]["n"]) and max(first["rej"]["n"]) > 20  # spread, not the head
    assert len(build_page_data(data, max_rejected=None)["rej"]["n"]) == 53
    assert build_page_data(data, max_rejected=0)["rej"]["n"] == []


def test_page_is_well_formed_and_self_contained(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "run.html"
    counts = write_report(run_dir, dest)
    assert counts == {"accepted": 6, "rejected": 8, "rejected_total": 8, "bytes": dest.stat().st_size}
    page = dest.read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert page.startswith("<!DOCTYPE html>")
    assert checker.starts["html"] == checker.starts["head"] == checker.starts["body"] == 1
    assert checker.starts["script"] == 2 and checker.starts["style"] == 1
    # Nothing is loaded from anywhere: no src or href attribute at all, no URL in the code.
    assert not [a for _, attrs in checker.attrs for a in attrs if a in ("src", "href")]
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", "".join(checker.scripts[1:]) + "".join(checker.styles))
    csp = next(attrs["content"] for tag, attrs in checker.attrs if tag == "meta" and attrs.get("http-equiv"))
    assert csp is not None
    assert f"script-src {_sha(checker.scripts[1])};" in csp and f"style-src {_sha(checker.styles[0])};" in csp
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp
    assert _data_block(page)["acc"]["instruction"][3] == HOSTILE
    assert sorted(p.name for p in dest.parent.iterdir()) == ["run.html"]  # written atomically, no temp left


def test_hostile_text_cannot_end_the_data_block(tmp_path: Path) -> None:
    evil = [
        HOSTILE,
        "</SCRIPT >",
        "</scr\u0131pt>",
        "<script>",
        "]]><!--<script>",
        "line\u2028sep\u2029end",
        "\ud800 lone surrogate",
    ]
    directory = tmp_path / "run"
    directory.mkdir()
    with (directory / "instructions.jsonl").open("w", encoding="utf-8", errors="surrogatepass") as fh:
        for i, text in enumerate(evil):
            line = {"schema": 2, "id": f"task-{i:06d}", "instruction": text, "input": text, "output": text, "request": i}
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    dest = tmp_path / "evil.html"
    write_report(directory, dest)
    page = dest.read_text(encoding="utf-8")
    assert len(re.findall(r"</script", page, flags=re.I)) == 2  # the two closing tags of our own blocks
    assert len(re.findall(r"<script", page, flags=re.I)) == 2
    assert "<!--" not in page and "\u2028" not in page
    checker = _Checker()
    checker.feed(page)
    assert checker.errors == [] and checker.starts["script"] == 2 and checker.starts["img"] == 0
    data = _data_block(page)
    assert data["acc"]["instruction"] == evil and data["acc"]["output"] == evil


def test_a_torn_last_line_is_left_alone(run_dir: Path, tmp_path: Path) -> None:
    path = run_dir / "instructions.jsonl"
    with path.open("ab") as fh:
        fh.write(b'{"schema":2,"id":"task-000099","instruction":"half a li')
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    write_report(run_dir, tmp_path / "r.html")
    assert _data_block((tmp_path / "r.html").read_text())["meta"]["accepted"] == 6
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # read-only


def test_works_while_generate_holds_the_lock(run_dir: Path, tmp_path: Path) -> None:
    with RunStore(run_dir):  # what a running `generate` holds
        assert write_report(run_dir, tmp_path / "r.html")["accepted"] == 6


def test_destination_rules_are_exports(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inside the run directory"):
        write_report(run_dir, run_dir / "report.html")
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    with pytest.raises(ConfigError, match="symbolic link"):
        write_report(run_dir, link)
    with pytest.raises(StoreError, match="is not a directory"):
        write_report(tmp_path / "nothing", tmp_path / "r.html")
    with pytest.raises(ConfigError, match="max-rejected"):
        write_report(run_dir, tmp_path / "r.html", max_rejected=-1)


def test_cli_report(run_dir: Path, tmp_path: Path) -> None:
    result = run_cli("report", str(run_dir), "-o", str(tmp_path / "r.html"), "--max-rejected", "1")
    assert result.returncode == 0, result.stderr
    assert "6 tasks, 4 of 8 rejections" in result.stderr
    assert _data_block((tmp_path / "r.html").read_text())["meta"]["included"] == {
        "too_short": 1, "unparseable": 1, "near_duplicate": 1, "blacklisted_word": 1,
    }  # fmt: skip
    bad = run_cli("report", str(run_dir), "-o", str(tmp_path / "r.html"), "--max-rejected", "lots")
    assert bad.returncode == 1 and "--max-rejected takes a whole number or 'all'" in bad.stderr
    both = run_cli("report", str(run_dir), "-o", str(tmp_path / "r.html"), "--serve")
    assert both.returncode == 2
    assert run_cli("report", str(run_dir), "--max-rejected", "all", "-o", str(tmp_path / "all.html")).returncode == 0


# -- --serve ------------------------------------------------------------------------------------------


@pytest.fixture
def server(run_dir: Path) -> Iterator[ReportServer]:
    with ReportServer(run_dir, port=0).start(follow=False) as srv:
        srv.refresh()
        yield srv


def _get(server: ReportServer, path: str, host: str | None = None) -> Any:
    request = urllib.request.Request(server.url.rstrip("/") + path)
    if host:
        request.add_header("Host", host)
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = answer.read()
        return json.loads(body) if answer.headers.get_content_type() == "application/json" else body


def _post(server: ReportServer, body: dict[str, Any], header: bool = True) -> Any:
    request = urllib.request.Request(server.url + "api/flags", data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if header:
        request.add_header("X-Selfinstruct", "1")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_serve_lists_pages_sorts_and_facets(server: ReportServer) -> None:
    meta = _get(server, "/api/meta")
    assert meta["accepted"] == 6 and meta["rejected"] == 8 and meta["loading"] is False and meta["mode"] == "serve"
    first = _get(server, "/api/list?view=accepted&offset=0&limit=4")
    rest = _get(server, "/api/list?view=accepted&offset=4&limit=4")
    assert first["total"] == 6 and [r["id"] for r in first["rows"] + rest["rows"]] == [f"task-{i:06d}" for i in range(6)]
    by_rouge = _get(server, "/api/list?view=accepted&sort=rouge&desc=1")["rows"]
    assert [r["r"] for r in by_rouge] == sorted((r["r"] for r in by_rouge), reverse=True)
    rejected = _get(server, "/api/list?view=rejected&reason=too_short")
    assert rejected["total"] == 3 and rejected["facets"]["near_duplicate"] == 3 and rejected["facets"]["too_short"] == 3
    searched = _get(server, "/api/list?view=rejected&q=haiku%20sea")
    assert searched["total"] == 2 and searched["facets"] == {"near_duplicate": 2}
    phrase = _get(server, "/api/list?view=accepted&q=%22sea%20at%20dawn%22")
    assert [r["id"] for r in phrase["rows"]] == ["task-000002"]
    near = _get(server, "/api/list?view=near-rejected")
    assert near["total"] == 3 and [r["r"] for r in near["rows"]] == [0.875, 1.0, 0.875]
    sorted_near = _get(server, "/api/list?view=near-rejected&sort=rouge&desc=1")["rows"]
    assert sorted_near[0]["r"] == 1.0 and sorted_near[0]["other"]["id"] == "task-000001"
    located = _get(server, "/api/list?view=accepted&q=haiku&limit=0&locate=2")
    assert located["position"] == 1 and located["rows"] == []


def test_serve_records_and_lookups(server: ReportServer) -> None:
    rec = _get(server, "/api/record?kind=a&key=3")
    assert rec["record"]["instruction"] == HOSTILE and rec["nearest"]["id"] == "task-000001"
    assert rec["record"]["id"] == "task-000003" and rec["ref"] == "task-000003"
    seed_side = _get(server, "/api/record?kind=a&key=0")["nearest"]
    assert seed_side["kind"] == "s" and seed_side["instruction"] == SEEDS[3].instruction
    assert _get(server, "/api/lookup?ref=task-000004") == {"kind": "a", "key": 4}
    assert _get(server, "/api/lookup?ref=rejected-7") == {"kind": "r", "key": 7}
    assert _get(server, f"/api/lookup?ref={SEEDS[3].id}")["kind"] == "s"
    assert _get(server, "/api/lookup?ref=nope") is None
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(server, "/api/record?kind=a&key=99")
    assert info.value.code == 400
    info.value.close()


def test_serve_page_is_the_same_page_without_data(server: ReportServer) -> None:
    page = _get(server, "/").decode()
    data = _data_block(page)
    assert data["meta"]["mode"] == "serve" and "acc" not in data
    assert "connect-src 'self'" in page


def test_serve_refuses_other_hosts_and_cross_site_posts(server: ReportServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(server, "/api/meta", host="attacker.example:80")
    assert info.value.code == 403
    info.value.close()
    with pytest.raises(urllib.error.HTTPError) as info:
        _post(server, {"ref": "task-000001", "kind": "accepted"}, header=False)
    assert info.value.code == 403
    info.value.close()
    assert not (server.directory / FLAGS_FILE).exists()


def test_serve_flags_are_appended_to_the_run(server: ReportServer) -> None:
    _post(server, {"ref": "task-000001", "kind": "accepted", "flagged": True, "note": "wrong answer"})
    _post(server, {"ref": "rejected-2", "kind": "rejected", "flagged": True})
    _post(server, {"ref": "rejected-2", "kind": "rejected", "flagged": False})
    lines = [json.loads(x) for x in (server.directory / FLAGS_FILE).read_text().splitlines()]
    assert [(x["ref"], x["flagged"]) for x in lines] == [("task-000001", True), ("rejected-2", True), ("rejected-2", False)]
    assert list(_get(server, "/api/flags")) == ["task-000001"]
    flagged = _get(server, "/api/list?view=accepted&flagged=1")
    assert [r["id"] for r in flagged["rows"]] == ["task-000001"]
    download = _get(server, "/api/flags?download=1").decode().splitlines()
    assert [json.loads(x)["record"]["instruction"] for x in download] == ["List three uses of a paperclip."]
    assert json.loads(download[0])["note"] == "wrong answer"
    with pytest.raises(urllib.error.HTTPError) as info:
        _post(server, {"kind": "accepted"})
    info.value.close()
    # A second server (or a restart) sees the same flags.
    again = ReportServer(server.directory, port=0)
    assert list(again.flags.snapshot()) == ["task-000001"]
    again.httpd.server_close()


def test_serve_export_streams_the_filtered_rows(server: ReportServer) -> None:
    body = _get(server, "/api/export?view=accepted&q=haiku").decode()
    rows = [json.loads(line) for line in body.splitlines()]
    assert [r["id"] for r in rows] == ["task-000000", "task-000002"]
    on_disk = json.loads((server.directory / "instructions.jsonl").read_text().splitlines()[0])
    assert rows[0] == {k: v for k, v in on_disk.items() if k != "schema"}
    pairs = [json.loads(x) for x in _get(server, "/api/export?view=near-rejected&sort=rouge&desc=1").decode().splitlines()]
    assert pairs[0]["rouge_l"] == 1.0 and pairs[0]["nearest"]["id"] == "task-000001"
    assert pairs[0]["candidate"]["reason"] == "near_duplicate"


def test_serve_follows_a_run_that_is_writing(server: ReportServer) -> None:
    path = server.directory / "instructions.jsonl"
    with RunStore(server.directory) as store:  # generate holds the lock and appends
        _commit(store, [dict(instruction="Invent a word for the smell of rain.", input="", output="petrichor",
                             most_similar_instruction="Name a color.", rouge_l=0.0)], [], "2025-03-01T09:00:00Z")  # fmt: skip
        with path.open("ab") as fh:
            fh.write(b'{"schema":2,"id":"task-000007","instr')  # a line being written
        server.refresh()
        assert _get(server, "/api/meta")["accepted"] == 7
        assert _get(server, "/api/list?view=accepted&q=petrichor")["total"] == 1
        with path.open("ab") as fh:
            fh.write(b'uction":"Name a river.","input":"","output":"Nile","request":9}\n')
        server.refresh()
        assert _get(server, "/api/list?view=accepted&q=river")["rows"][0]["id"] == "task-000007"


def test_serve_starts_over_when_a_file_is_rewritten(server: ReportServer) -> None:
    path = server.directory / "instructions.jsonl"
    kept = path.read_text().splitlines()[:2]
    tmp = path.with_name("tmp")
    tmp.write_text("\n".join(kept) + "\n")
    os.replace(tmp, path)  # what the store does when it moves a bad line to quarantine
    server.refresh()
    assert _get(server, "/api/meta")["accepted"] == 2
    assert _get(server, "/api/list?view=accepted")["total"] == 2


def test_text_index_matches_a_plain_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "_BLOCK_ROWS", 4)
    texts = [f"Row {i} about {'cats' if i % 3 else 'dogs'} and {'Rain' if i % 4 == 0 else 'sun'}" for i in range(23)]
    index = report_mod._TextIndex()
    for start in range(0, 23, 5):  # appended in pieces that straddle blocks, as a live run does
        index.extend(texts[start : start + 5])
    assert [b[0] for b in index.blocks] == [0, 4, 8, 12, 16, 20]
    for query in ("cats", "rain dogs", '"about dogs"', "row 1", "nothing-here", ""):
        terms = report_mod._terms(query)
        expected = [i for i, t in enumerate(texts) if all(term in t.lower() for term in terms)]
        assert index.search(terms, 23).tolist() == expected, query
    assert index.search(["cats"], 10).tolist() == [i for i in range(10) if i % 3]


def test_serve_loader_thread_reads_the_run(run_dir: Path) -> None:
    with ReportServer(run_dir, port=0, poll_seconds=0.05) as srv:  # follow=True: the loader thread
        assert srv.wait_loaded(timeout=60)
        assert _get(srv, "/api/meta")["accepted"] == 6
        assert _get(srv, "/api/stats")["summary"]["accepted"] == 6


def test_odd_numbers_on_disk_do_not_break_the_page(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "instructions.jsonl").write_text(
        '{"instruction": "Name a fruit.", "output": "pear", "rouge_l": NaN, "judge_score": Infinity}\n'
        '{"instruction": "Name a tree.", "output": "oak", "judge_score": 4.5}\n'
    )
    (directory / "rejected.jsonl").write_text('{"reason": "near_duplicate", "instruction": "Name a tree!", "rouge_l": NaN}\n')
    write_report(directory, tmp_path / "r.html")
    data = _data_block((tmp_path / "r.html").read_text())
    assert data["acc"]["rouge"] == [0.0, 0.0] and data["acc"]["score"] == [None, 4.5] and data["rej"]["rouge"] == [None]
    assert data["meta"]["has_score"] is True


def test_a_judged_run_shows_the_judge_scores(run_dir: Path, tmp_path: Path) -> None:
    from selfinstruct.records import Judgment

    def verdict(task: int, overall: int | None, judge: str = "f" * 16, output: bool = True) -> dict[str, Any]:
        if overall is None:
            return Judgment(task_id=f"task-{task:06d}", judge=judge, status="unjudged", error="no JSON").to_json()
        checks = (("valid", True), ("input", True), ("output", output))
        return Judgment(task_id=f"task-{task:06d}", judge=judge, status="judged", checks=checks, overall=overall,
                        reasoning=f"why {task}", parse="json").to_json()  # fmt: skip

    # task 0: 5; task 1: 2 with a failed output check; task 2: unjudged only; task 3: an older judge's 1 only.
    lines = [verdict(0, 5), verdict(1, 2, output=False), verdict(2, None), verdict(3, 1, judge="0" * 16)]
    (run_dir / "judgments.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    judges = [{"fingerprint": fp, "since": "t", "settings": {"model": "jm"}} for fp in ("0" * 16, "f" * 16)]
    (run_dir / "judges.json").write_text(json.dumps({"schema": 2, "judges": judges}))

    write_report(run_dir, tmp_path / "r.html")
    data = _data_block((tmp_path / "r.html").read_text())
    acc = data["acc"]
    assert data["meta"]["has_score"] is True and data["meta"]["judge"] == "f" * 16
    assert acc["score"] == [5.0, 2.0, None, None, None, None]  # the current judge's only; unjudged shows none
    assert acc["checks"] == [7, 3, None, None, None, None]  # bits: 1 valid, 2 input, 4 output
    assert acc["why"][:2] == ["why 0", "why 1"]
    judge = data["stats"]["judge"]
    assert judge["current"] == "f" * 16 and [j["fingerprint"] for j in judge["judges"]] == ["f" * 16, "0" * 16]
    current = judge["judges"][0]
    assert (current["judged"], current["unjudged"], current["not_tried"]) == (2, 1, 3)
    assert current["scores"]["5"] == 1 and current["pass_rates"]["output"] == 0.5
    assert judge == compute_stats(run_dir)["judge"]  # the Run tab shows what `selfinstruct stats` says

    # --serve: the rows carry the score and checks, the record the reasoning, and the list sorts by score.
    with ReportServer(run_dir, port=0).start(follow=False) as srv:
        srv.refresh()
        rows = _get(srv, "/api/list?view=accepted&sort=score&desc=1&offset=0&limit=3")["rows"]
        assert [(r["id"], r["s"], r["c"]) for r in rows] == [("task-000000", 5.0, 7), ("task-000001", 2.0, 3), ("task-000002", None, None)]
        record = _get(srv, "/api/record?kind=a&key=1")["record"]
        assert record["judge_checks"] == {"valid": True, "input": True, "output": False}
        assert record["judge_reasoning"] == "why 1" and record["judge_score"] == 2.0
        assert _get(srv, "/api/stats")["judge"]["current"] == "f" * 16
        # A verdict written while the report is served shows up on the next read.
        with (run_dir / "judgments.jsonl").open("a") as fh:
            fh.write(json.dumps(verdict(2, 4)) + "\n")
        srv.refresh()
        assert _get(srv, "/api/record?kind=a&key=2")["record"]["judge_score"] == 4.0
