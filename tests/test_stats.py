"""Run statistics on a hand-computed fixture, the text report and the PNG charts."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import pytest
from conftest import run_cli

from selfinstruct import stats as stats_mod
from selfinstruct.errors import ConfigError, StoreError
from selfinstruct.stats import compute_stats, format_stats, plot_stats
from selfinstruct.store import RunStore

from conftest import add_tasks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Word counts — instruction: 4, 6, 8, 10, 12; input (B and D have one): 6, 2; output: 3, 7, 1, 5, 7.
ACCEPTED = [
    {"instruction": "Write a haiku please.", "input": "  ", "output": "Leaves fall softly", "rouge_l": 0.05},
    {"instruction": "Write a story about a cat.", "output": "Once upon a time a cat sat.", "rouge_l": 0.1},
    {
        "instruction": "Classify the sentiment of the following customer review.",
        "input": "I loved every minute of it.",
        "output": "Positive",
        "rouge_l": 0.3,
    },
    {
        "instruction": '"Explain" why the sky looks blue on clear summer days.',
        "input": "",
        "output": "Sunlight scatters off air molecules.",
        "rouge_l": 0.7,  # equal to the threshold is still accepted: lands in the over bin
    },
    {
        "instruction": "write, in plain words, what a compiler does for programmers and users",
        "input": "Audience: beginners",
        "output": "It translates source code into machine code.",
    },
]
REJECTED = [
    {"schema": 1, "reason": "near_duplicate", "instruction": "x", "rouge_l": 0.8},
    {"schema": 1, "reason": "near_duplicate", "instruction": "y", "rouge_l": 0.95},
    {"schema": 1, "reason": "too_short", "instruction": "Hi"},
    {"schema": 1, "reason": "unparseable", "instruction": "", "output": "garbage"},
]
# The layout selfinstruct.pipeline writes: counters disagree with rejected.jsonl on purpose,
# to show which source is used.
RUN_JSON = {
    "schema": 1,
    "status": "done",
    "elapsed_seconds": 120.0,
    "target": 10,
    "generation": {"model": "tiny-model", "similarity_threshold": 0.6},
    "counters": {
        "requests": 4,
        "failed_requests": 1,
        "answers": 3,
        "candidates": 9,
        "accepted": 5,
        "rejected": {"too_short": 1, "near_duplicate": 3, "unparseable": 1},
        "prompt_tokens": 1000,
        "completion_tokens": 500,
    },
}


def _write(directory: Path, run: dict | None = None, rejected: list[dict] = REJECTED) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, records in (("instructions.jsonl", ACCEPTED), ("rejected.jsonl", rejected)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if run is not None:
        (directory / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return directory


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return _write(tmp_path / "run", RUN_JSON)


def _require_matplotlib() -> None:
    if os.environ.get("CI") != "true":
        pytest.importorskip("matplotlib")


# ---------------------------------------------------------------- numbers


def test_counts_come_from_the_files_not_from_run_json(run_dir: Path) -> None:
    # run.json says 9 candidates and 3 near-duplicates; the files hold 8 and 2. A crash leaves
    # run.json behind the files, so the files win. Request counters of a run from before
    # requests.jsonl still come from its run.json.
    s = compute_stats(run_dir)
    assert s["accepted"] == 5 and s["target"] == 10
    assert s["candidates"] == 8 and s["candidates_source"] == "files"
    assert s["accept_rate"] == pytest.approx(5 / 8)
    assert s["rejected"] == 4
    assert s["rejected_by_reason"] == {"near_duplicate": 2, "too_short": 1, "unparseable": 1}
    assert list(s["rejected_by_reason"]) == ["near_duplicate", "too_short", "unparseable"]  # by count
    assert s["rejected_source"] == "rejected.jsonl"
    assert (s["status"], s["model"], s["requests"], s["failed_requests"], s["answers"]) == (
        "done", "tiny-model", 4, 1, 3,
    )  # fmt: skip


def test_rejections_counted_from_the_file_without_run_json(tmp_path: Path) -> None:
    s = compute_stats(_write(tmp_path / "run", None))
    assert s["rejected_by_reason"] == {"near_duplicate": 2, "too_short": 1, "unparseable": 1}
    assert s["rejected_source"] == "rejected.jsonl"
    # An unparseable answer never became a candidate: 5 accepted + 3 rejected candidates.
    assert s["candidates"] == 8 and s["candidates_source"] == "files"
    assert s["accept_rate"] == pytest.approx(0.625)
    assert s["status"] is None and s["requests"] is None
    assert s["tokens"] == {"prompt": None, "completion": None, "total": None, "per_accepted": None}
    assert s["elapsed_seconds"] is None and s["tasks_per_minute"] is None
    assert s["rouge_l"]["threshold"] == 0.7
    lines = format_stats(s).splitlines()
    assert "candidates  8" in lines and "requests    -" in lines
    assert "Rejections by reason (from rejected.jsonl)" in lines
    assert "Speed" not in lines  # no elapsed time known


def test_old_config_key_still_gives_the_threshold(tmp_path: Path) -> None:
    run = {"schema": 1, "config": {"similarity_threshold": 0.5}, "counters": {"candidates": 20}}
    s = compute_stats(_write(tmp_path / "run", run))
    assert s["rejected_source"] == "rejected.jsonl" and s["rejected"] == 4
    assert s["accept_rate"] == pytest.approx(5 / 8)
    assert s["rouge_l"]["threshold"] == 0.5


def test_inputs_and_word_percentiles(run_dir: Path) -> None:
    s = compute_stats(run_dir)
    assert (s["with_input"], s["without_input"]) == (2, 3)  # whitespace and missing input count as none
    words = s["words"]
    # numpy linear percentiles of [4, 6, 8, 10, 12]: rank 0.2 -> 4.4, rank 3.8 -> 11.6.
    assert words["instruction"] == pytest.approx(
        {"count": 5, "min": 4, "p5": 4.4, "p50": 8, "p95": 11.6, "max": 12, "mean": 8}
    )
    assert words["input"] == pytest.approx(
        {"count": 2, "min": 2, "p5": 2.2, "p50": 4, "p95": 5.8, "max": 6, "mean": 4}
    )
    assert words["output"] == pytest.approx(
        {"count": 5, "min": 1, "p5": 1.4, "p50": 5, "p95": 7, "max": 7, "mean": 4.6}
    )


def test_rouge_histogram(run_dir: Path) -> None:
    rouge = compute_stats(run_dir)["rouge_l"]
    assert rouge["count"] == 4  # the last task has no score
    assert rouge["mean"] == pytest.approx((0.05 + 0.1 + 0.3 + 0.7) / 4)
    assert [(b["low"], b["high"]) for b in rouge["bins"]] == [(i / 10, (i + 1) / 10) for i in range(7)]
    # Bins are [low, high): 0.1 goes up to 0.1-0.2 and 0.3 to 0.3-0.4.
    assert [b["count"] for b in rouge["bins"]] == [1, 1, 0, 1, 0, 0, 0]
    assert rouge["over"] == 1
    assert rouge["threshold"] == 0.6
    assert rouge["rejected_near_duplicates_scored"] == 2


def test_rouge_bins_forgive_float_rounding(tmp_path: Path) -> None:
    # ROUGE-L F of a 1-word and a 9-word instruction sharing that word is exactly 0.2 on paper,
    # 0.19999999999999998 in floats; it belongs in [0.2, 0.3).
    precision, recall = 1 / 1, 1 / 9
    score = 2 * precision * recall / (precision + recall)
    assert score < 0.2
    run = tmp_path / "run"
    with RunStore(run) as store:
        add_tasks(store, [("Say hi to me.", "", "hi")], rouge_l=score)
    assert [b["count"] for b in compute_stats(run)["rouge_l"]["bins"]] == [0, 0, 1, 0, 0, 0, 0]


def test_leading_words_and_bigrams(run_dir: Path) -> None:
    s = compute_stats(run_dir)
    # Lower-cased, quotes and commas stripped: "Write", "write," and "Write" are one word.
    assert s["leading_words"] == {"distinct": 3, "top": [("write", 3), ("classify", 1), ("explain", 1)]}
    assert s["leading_bigrams"] == {
        "distinct": 4,
        "top": [("write a", 2), ("classify the", 1), ("explain why", 1), ("write in", 1)],
    }


def test_top_is_capped_at_twenty(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore(run) as store:
        for i in range(25):
            add_tasks(store, [(f"Verb{i:02d} something now", "", "ok")] * (i + 1))
    s = compute_stats(run)
    assert s["leading_words"]["distinct"] == 25
    assert len(s["leading_words"]["top"]) == 20
    assert s["leading_words"]["top"][0] == ("verb24", 25)
    assert s["leading_words"]["top"][-1] == ("verb05", 6)


def test_tokens_and_speed(run_dir: Path) -> None:
    s = compute_stats(run_dir)
    assert s["tokens"] == {"prompt": 1000, "completion": 500, "total": 1500, "per_accepted": 300}
    assert s["elapsed_seconds"] == 120
    assert s["tasks_per_minute"] == pytest.approx(2.5)


def test_stats_are_json_serialisable(run_dir: Path) -> None:
    s = compute_stats(run_dir)
    assert json.loads(json.dumps(s))["accepted"] == 5


def test_empty_run(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run"):
        pass
    s = compute_stats(tmp_path / "run")
    assert (s["accepted"], s["candidates"], s["accept_rate"], s["rejected"]) == (0, 0, None, 0)
    assert s["words"] == {"instruction": None, "input": None, "output": None}
    assert s["rouge_l"]["mean"] is None and s["rouge_l"]["count"] == 0
    assert s["leading_words"] == {"distinct": 0, "top": []}
    assert "accepted    0" in format_stats(s)


def test_reads_a_run_that_is_being_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore(run) as store:  # holds the lock, as a running generate does
        add_tasks(store, [("Sort these numbers please.", "3 1 2", "1 2 3")], rejected=[("too_short", "Sort.")])
        s = compute_stats(run)
    assert (s["accepted"], s["rejected"], s["with_input"]) == (1, 1, 1)
    assert s["accept_rate"] == pytest.approx(0.5)


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        compute_stats(tmp_path / "missing")


# ---------------------------------------------------------------- text report


def test_format_stats_report(run_dir: Path) -> None:
    text = format_stats(compute_stats(run_dir))
    lines = text.splitlines()
    assert "accepted    5 of 10 (accept rate 62.5%)" in lines
    assert "model       tiny-model" in lines
    assert "requests    4 (1 failed)" in lines

    reasons = lines[lines.index("Rejections by reason (from rejected.jsonl)") + 1 :][:3]
    assert [line.split() for line in reasons] == [
        ["near_duplicate", "2", "50.0%"], ["too_short", "1", "25.0%"], ["unparseable", "1", "25.0%"],
    ]  # fmt: skip
    assert len({len(line) for line in reasons}) == 1  # right-aligned numbers end in one column

    table = lines[lines.index("Length in words (input: tasks that have one)") + 1 :][:4]
    assert table[0].split() == ["tasks", "min", "p5", "p50", "p95", "max", "mean"]
    assert table[1].split() == ["instruction", "5", "4", "4.4", "8.0", "11.6", "12", "8.0"]
    assert table[2].split() == ["input", "2", "2", "2.2", "4.0", "5.8", "6", "4.0"]
    assert len({len(line) for line in table}) == 1

    assert "ROUGE-L to the nearest earlier task (accepted tasks with a score: 4, mean 0.287, threshold 0.6)" in text
    assert any(line.split()[:2] == [">=0.7", "1"] for line in lines)
    assert "Distinct first words: 3 (top 3)" in text
    assert any(line.split() == ["write", "3", "60.0%"] for line in lines)
    assert any(line.split() == ["per", "accepted", "task", "300"] for line in lines)
    assert any(line.split() == ["elapsed", "2m", "00s"] for line in lines)
    assert any(line.split() == ["accepted", "tasks", "per", "minute", "2.50"] for line in lines)
    assert text.endswith("\n") and all(line == line.rstrip() for line in lines)


# ---------------------------------------------------------------- charts


def test_plots_are_png_files(run_dir: Path, tmp_path: Path) -> None:
    _require_matplotlib()
    dest = tmp_path / "charts" / "nested"
    paths = plot_stats(run_dir, dest)
    assert [p.name for p in paths] == [
        "instruction_length.png", "rouge_l.png", "leading_words.png", "rejection_reasons.png",
    ]  # fmt: skip
    for path in paths:
        assert path.parent == dest
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 2000, path.name


def test_plots_of_an_empty_run(tmp_path: Path) -> None:
    _require_matplotlib()
    with RunStore(tmp_path / "run"):
        pass
    paths = plot_stats(tmp_path / "run", tmp_path / "charts")
    assert len(paths) == 4
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in paths)


def test_plots_do_not_touch_the_pyplot_backend(run_dir: Path, tmp_path: Path) -> None:
    _require_matplotlib()
    import matplotlib

    before = matplotlib.rcParams["backend"]
    plot_stats(run_dir, tmp_path / "charts")
    assert matplotlib.rcParams["backend"] == before


def test_plots_without_matplotlib_names_the_extra(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ConfigError, match=r'pip install "selfinstruct\[plots\]"'):
        plot_stats(run_dir, tmp_path / "charts")
    assert not (tmp_path / "charts").exists()


def test_plots_into_an_existing_file_is_refused(run_dir: Path, tmp_path: Path) -> None:
    _require_matplotlib()
    target = tmp_path / "charts.png"
    target.write_bytes(b"keep me")
    with pytest.raises(ConfigError) as info:
        plot_stats(run_dir, target)
    message = str(info.value)
    assert str(target) in message and "not a directory" in message and "\n" not in message
    assert target.read_bytes() == b"keep me"


def test_plots_below_a_file_is_refused(run_dir: Path, tmp_path: Path) -> None:
    _require_matplotlib()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"cannot be created: {re.escape(str(a_file))} is a file"):
        plot_stats(run_dir, a_file / "charts")
    assert a_file.read_text(encoding="utf-8") == "keep"


def test_cli_plots_path_problems_are_one_line_errors(run_dir: Path, tmp_path: Path) -> None:
    _require_matplotlib()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep", encoding="utf-8")
    for plots in (a_file, a_file / "charts"):
        result = run_cli("stats", str(run_dir), "--plots", str(plots))
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("selfinstruct: error: ") and str(a_file) in last


def test_plots_that_cannot_be_written_raise_store_error(run_dir: Path, tmp_path: Path) -> None:
    _require_matplotlib()
    charts = tmp_path / "charts"
    (charts / "rouge_l.png").mkdir(parents=True)  # a directory where a chart goes
    with pytest.raises(StoreError, match=re.escape(str(charts / "rouge_l.png"))):
        plot_stats(run_dir, charts)


# Chinese instructions: their first "words" (the whole sentence, having no spaces) are the
# labels of the leading-words chart.
ZH_INSTRUCTIONS = ["写一首关于秋天的短诗。", "把这句话翻译成英文。", "写一首关于秋天的短诗。", "列出三种常见的水果。"]
ZH_ACCEPTED = [
    {"schema": 1, "id": f"task-{i:06d}", "instruction": text, "input": "", "output": "好的。", "rouge_l": 0.1}
    for i, text in enumerate(ZH_INSTRUCTIONS)
]


def _zh_run(directory: Path) -> Path:
    directory.mkdir(parents=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ZH_ACCEPTED)
    (directory / "instructions.jsonl").write_text(text, encoding="utf-8")
    return directory


def _plot_catching(run: Path, dest: Path, caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """Plot; return matplotlib's missing-glyph warnings and selfinstruct's log warnings."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="selfinstruct"):
        warnings.simplefilter("always")
        assert len(plot_stats(run, dest)) == 4
    glyphs = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    notes = [r.getMessage() for r in caplog.records if r.name == "selfinstruct" and r.module == "stats"]
    return glyphs, notes


def test_cjk_text_is_drawn_with_a_cjk_font_or_the_missing_font_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _require_matplotlib()
    import matplotlib

    family = list(matplotlib.rcParams["font.family"])
    glyphs, notes = _plot_catching(_zh_run(tmp_path / "run"), tmp_path / "charts", caplog)
    assert glyphs == []  # drawn with real glyphs, or one clear note instead of a warning per glyph
    if stats_mod._cjk_fonts():  # e.g. apt install fonts-noto-cjk (or fonts-droid-fallback)
        assert notes == []
    else:
        assert len(notes) == 1 and "fonts-noto-cjk" in notes[0]
    assert matplotlib.rcParams["font.family"] == family  # the fallback font was set for these charts only


def test_without_a_cjk_font_one_warning_names_the_package(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_matplotlib()
    monkeypatch.setattr(stats_mod, "_cjk_fonts", lambda: [])
    glyphs, notes = _plot_catching(_zh_run(tmp_path / "run"), tmp_path / "charts", caplog)
    assert glyphs == []
    (note,) = notes
    assert "apt install fonts-noto-cjk" in note and "empty boxes" in note
    assert "写" in note  # names characters it cannot draw


def test_latin_text_needs_no_font_lookup(run_dir: Path, tmp_path: Path, caplog, monkeypatch) -> None:
    _require_matplotlib()

    def unexpected() -> list[tuple[str, str]]:
        raise AssertionError("looked for a CJK font for Latin text")

    monkeypatch.setattr(stats_mod, "_cjk_fonts", unexpected)
    glyphs, notes = _plot_catching(run_dir, tmp_path / "charts", caplog)
    assert glyphs == [] and notes == []
