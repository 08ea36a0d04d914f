"""The report page in a real headless Chromium: search, facets, near-duplicate pairs, flags, downloads.

Runs Debian's ``chromium`` through the ``playwright`` package with ``executable_path`` (never
``playwright install``, which downloads a browser). Skipped when either is missing, except under
CI (``CI=true``), where a missing browser is a failure: .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selfinstruct.records import AcceptedTask, RequestRecord
from selfinstruct.report import FLAGS_FILE, ReportServer, write_report
from selfinstruct.store import RunStore

from test_report import HOSTILE, SEEDS, make_run

SEED_ID = SEEDS[3].id  # the nearest of the first two tasks of make_run

CHROMIUM = shutil.which(os.environ.get("CHROMIUM", "")) or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser tests need {what}; .ci/run installs it")
    pytest.skip(f"needs {what}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package (pip install playwright; never `playwright install`)")
    if not CHROMIUM:
        _missing("Debian's chromium (apt-get install chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1300, "height": 800})
    tab = context.new_page()
    problems: list[str] = []
    # Any script error or CSP violation (our own code breaking its policy) fails the test.
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    yield tab
    context.close()
    assert problems == []


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report")
    make_run(base / "run")
    write_report(base / "run", base / "run.html")
    return base / "run.html"


def _open(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector('body[data-ready="1"]', state="attached")


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _tab(page: Any, name: str) -> Any:
    return page.locator(f"section.tab[data-tab={name}]")


def _download(page: Any, click: Any) -> list[dict[str, Any]]:
    with page.expect_download() as info:
        click()
    text = Path(info.value.path()).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_search_narrows_the_list(page: Any, report: Path) -> None:
    expect = _expect()
    _open(page, report.as_uri())
    accepted = _tab(page, "accepted")
    expect(accepted.locator(".total")).to_have_text("6 rows")
    accepted.locator("input[type=search]").fill("haiku")
    expect(accepted.locator(".total")).to_have_text("2 rows")
    expect(accepted.locator(".row:not([hidden]) span:nth-child(3)")).to_have_text(
        ["Write a haiku about the sea at night.", "Write a haiku about the sea at dawn."]
    )
    accepted.locator("input[type=search]").fill('"sea at dawn"')
    expect(accepted.locator(".total")).to_have_text("1 row")
    accepted.locator("input[type=search]").fill("no such words anywhere")
    expect(accepted.locator(".total")).to_have_text("0 rows")


def test_hostile_text_is_shown_as_text_and_never_runs(page: Any, report: Path) -> None:
    expect = _expect()
    _open(page, report.as_uri() + "#task-000003")
    detail = _tab(page, "accepted").locator(".detail")
    expect(detail.locator("h2")).to_have_text("task-000003")
    expect(detail.locator("pre.text").first).to_have_text(HOSTILE.replace("\u2028", "\u2028"))
    assert detail.locator("pre.text").first.text_content() == HOSTILE
    expect(detail.locator("pre.text").nth(1)).to_have_text("<b>bold</b>")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("img").count() == 0 and page.locator("b").count() == 0
    assert page.locator("script").count() == 2


def test_filter_rejections_by_reason(page: Any, report: Path) -> None:
    expect = _expect()
    _open(page, report.as_uri() + "#tab-rejected")
    rejected = _tab(page, "rejected")
    expect(rejected.locator(".total")).to_have_text("8 rows")
    expect(rejected.locator(".facet[data-reason=too_short] .n")).to_have_text("3")
    rejected.locator(".facet[data-reason=too_short]").click()
    expect(rejected.locator(".total")).to_have_text("3 rows")
    expect(rejected.locator(".row:not([hidden]) .chip")).to_have_text(["too_short"] * 3)
    rejected.locator(".row").nth(1).click()
    expect(rejected.locator(".detail h2")).to_have_text("rejected #4")
    expect(rejected.locator(".detail pre.text").first).to_have_text("Be brief.")
    # Facet counts follow the search.
    rejected.locator(".facet[data-reason=too_short]").click()  # off again
    rejected.locator("input[type=search]").fill("haiku")
    expect(rejected.locator(".facet[data-reason=near_duplicate] .n")).to_have_text("2")
    expect(rejected.locator(".facet[data-reason=too_short] .n")).to_have_text("0")
    expect(rejected.locator(".total")).to_have_text("2 rows")


def test_open_a_near_duplicate_pair_and_follow_its_link(page: Any, report: Path) -> None:
    expect = _expect()
    _open(page, report.as_uri() + "#tab-near")
    near = _tab(page, "near")
    expect(near.locator(".total")).to_have_text("3 rows")
    expect(near.locator(".row:not([hidden]) .num")).to_have_text(["1.000", "0.875", "0.875"])  # highest first
    near.locator(".row").first.click()
    sides = near.locator(".pair .side")
    expect(sides).to_have_count(2)
    expect(sides.nth(0).locator("pre.text").first).to_have_text("List three uses of a paperclip!")
    expect(sides.nth(1).locator("pre.text").first).to_have_text("List three uses of a paperclip.")
    expect(sides.nth(0).locator("mark")).to_have_count(6)  # every ROUGE token is in the common subsequence
    expect(near.locator(".score")).to_have_text("ROUGE-L 1.000")
    sides.nth(1).locator("h4.side-head a").click()
    expect(_tab(page, "accepted").locator(".detail h2")).to_have_text("task-000001")
    assert page.evaluate("location.hash") == "#task-000001"
    # Accepted tasks and their nearest: the seed side of a pair is a seed.
    page.evaluate("location.hash = 'pair-task-000000'")
    expect(near.locator(".pair .side").nth(1).locator("h4.side-head")).to_have_text(f"Its nearest {SEED_ID} (seed)")


def test_flag_then_download_flags_and_the_filtered_rows(page: Any, report: Path) -> None:
    expect = _expect()
    _open(page, report.as_uri() + "#task-000002")
    accepted = _tab(page, "accepted")
    accepted.locator(".detail input.note").fill("too close to task 0")
    accepted.locator(".detail button", has_text="Flag").click()
    expect(page.locator("header button", has_text="flagged")).to_have_text("⚑ 1 flagged ⤓")
    expect(accepted.locator(".row.sel .flag")).to_have_text("⚑")
    flags = _download(page, lambda: page.locator("header button", has_text="flagged").click())
    assert [(f["ref"], f["note"], f["record"]["instruction"]) for f in flags] == [
        ("task-000002", "too close to task 0", "Write a haiku about the sea at dawn.")
    ]
    accepted.locator("label", has_text="flagged only").click()
    expect(accepted.locator(".total")).to_have_text("1 row")
    accepted.locator("label", has_text="flagged only").click()
    accepted.locator("input[type=search]").fill("haiku")
    expect(accepted.locator(".total")).to_have_text("2 rows")
    rows = _download(page, lambda: accepted.locator("button", has_text="JSONL").click())
    assert [r["id"] for r in rows] == ["task-000000", "task-000002"]
    assert rows[0]["nearest_id"] and rows[0]["instruction"] == "Write a haiku about the sea at night."
    # Flags of a single file live in this browser: they are still there after a reload.
    page.reload()
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    expect(page.locator("header button", has_text="flagged")).to_have_text("⚑ 1 flagged ⤓")


def test_run_tab_draws_its_charts(page: Any, report: Path) -> None:
    expect = _expect()
    _open(page, report.as_uri() + "#tab-run")
    run = _tab(page, "run")
    expect(run.locator(".tile").first.locator("b")).to_have_text("6")
    assert run.locator("svg.chart").count() >= 9
    expect(run.locator(".card", has_text="Rejections by reason").locator("text")).to_contain_text(["near_duplicate"])
    expect(run.locator("table.tbl td").first).to_have_text("http://e0/v1")


def test_a_big_list_keeps_few_rows_in_the_page(page: Any, tmp_path: Path) -> None:
    expect = _expect()
    with RunStore(tmp_path / "big") as store:
        number = store.new_request_number()
        tasks = [
            AcceptedTask(id=store.new_task_id(), instruction=f"Describe item number {i} in one line.", input="",
                         output=f"Item {i}.", request=number)  # fmt: skip
            for i in range(5000)
        ]
        store.commit(RequestRecord(request=number, outcome="answered"), tasks)
    write_report(tmp_path / "big", tmp_path / "big.html")
    _open(page, (tmp_path / "big.html").as_uri())
    accepted = _tab(page, "accepted")
    expect(accepted.locator(".total")).to_have_text("5,000 rows")
    assert page.locator(".row").count() < 100
    accepted.locator(".vlist").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(accepted.locator(".row:not([hidden]) .id").last).to_have_text("task-004999")
    accepted.locator(".row:not([hidden])").last.click()
    accepted.locator(".vlist").press("ArrowUp")
    expect(accepted.locator(".detail h2")).to_have_text("task-004998")


def test_serve_mode_in_the_browser(page: Any, tmp_path: Path) -> None:
    expect = _expect()
    run = make_run(tmp_path / "run")
    with ReportServer(run, port=0).start(follow=False) as server:
        server.refresh()
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url.rstrip("/"))
        _open(page, server.url)
        accepted = _tab(page, "accepted")
        expect(accepted.locator(".total")).to_have_text("6 rows")
        accepted.locator("input[type=search]").fill("haiku")
        expect(accepted.locator(".total")).to_have_text("2 rows")
        accepted.locator(".row").first.click()
        expect(accepted.locator(".detail h2")).to_have_text("task-000000")
        accepted.locator(".detail button", has_text="Copy JSON").click()
        expect(page.locator(".toast")).to_have_text("Copied")
        copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
        assert copied["id"] == "task-000000" and copied["instruction"] == "Write a haiku about the sea at night."
        accepted.locator(".detail button", has_text="Flag").click()
        expect(page.locator("header button", has_text="flagged")).to_have_text("⚑ 1 flagged ⤓")
        lines = [json.loads(x) for x in (run / FLAGS_FILE).read_text().splitlines()]
        assert [(x["ref"], x["flagged"]) for x in lines] == [("task-000000", True)]
        page.evaluate("location.hash = 'tab-rejected'")
        rejected = _tab(page, "rejected")
        rejected.locator(".facet[data-reason=near_duplicate]").click()
        expect(rejected.locator(".total")).to_have_text("3 rows")
        rows = _download(page, lambda: rejected.locator("button", has_text="JSONL").click())
        assert [r["reason"] for r in rows] == ["near_duplicate"] * 3
        page.evaluate("location.hash = 'tab-near'")
        near = _tab(page, "near")
        near.locator(".row").first.click()
        expect(near.locator(".pair .side").nth(1).locator("h4.side-head a")).to_have_text(re.compile(r"task-00000[0-2]"))
