"""Turn a run directory's accepted tasks into the file layouts fine-tuning tools read.

Formats (``EXPORT_FORMATS``):

``alpaca``             one JSON list of ``{"instruction", "input", "output"}`` (the Alpaca 52k file)
``alpaca-jsonl``       the same objects, one a line
``sharegpt``           JSONL ``{"conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}``
``openai``             JSONL ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
``prompt-completion``  JSONL ``{"prompt", "completion"}``; the prompt is an Alpaca-style template
``self-instruct``      JSONL ``{"prompt", "completion"}`` in one of several layouts, chosen per row
                       reproducibly (Self-Instruct's fine-tuning format, our wording)
``hf``                 a ``datasets.Dataset`` saved with ``save_to_disk`` (needs the ``hf`` extra)
``sqlite``             one SQLite file (stdlib ``sqlite3``): tables ``tasks`` (every stored field),
                       ``rejected``, ``requests`` and ``flags``, full-text search on tasks and a
                       ``near_duplicates`` view; ``datasette run.db`` browses it with facets and CSV

The chat formats have no separate input slot, so their user turn is the instruction, followed by a
blank line and the input when the input is not blank (``chat_prompt``).

Text formats are written to a temporary file next to the destination and renamed over it, so a
reader never sees half a file; ``"-"`` writes them to standard output instead.

The destination is refused when it lies inside the run directory (the run's files belong to
``generate``, and which files those are is the store's business), when it is a symbolic link
(the rename would replace the link, not write where it points), or when it exists and is not a
regular file (a device or FIFO would be replaced by a file; use ``"-"`` and redirect instead).
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, StoreError
from .records import CHECKS, Judgment
from .store import TASKS_FILE, read_accepted, read_judges, read_judgments, read_self_instruct_tasks

__all__ = [
    "EXPORT_FORMATS",
    "JudgeFilter",
    "PROMPT_NO_INPUT",
    "PROMPT_WITH_INPUT",
    "chat_prompt",
    "export_dataset",
    "training_prompt",
]

EXPORT_FORMATS: tuple[str, ...] = (
    "alpaca", "alpaca-jsonl", "sharegpt", "openai", "prompt-completion", "self-instruct", "hf", "sqlite",
)  # fmt: skip

# Formats that may carry the per-task metadata (the others have a fixed shape).
_META_FORMATS = ("alpaca", "alpaca-jsonl")
_CORE_FIELDS = ("instruction", "input", "output")
# Storage bookkeeping, not a property of the task.
_DROPPED_META = ("schema",)

PROMPT_WITH_INPUT = (
    "The following is a task for you to carry out, along with input it refers to. "
    "Write a response that completes the task.\n\n"
    "### Instruction:\n{instruction}\n\n"
    "### Input:\n{input}\n\n"
    "### Response:\n"
)
PROMPT_NO_INPUT = (
    "The following is a task for you to carry out. Write a response that completes the task.\n\n"
    "### Instruction:\n{instruction}\n\n"
    "### Response:\n"
)


def _has_input(text: str) -> bool:
    return bool(text.strip())


def training_prompt(instruction: str, input: str = "") -> str:
    """The prompt of the ``prompt-completion`` format (the with-input variant when input is not blank)."""
    if _has_input(input):
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def chat_prompt(instruction: str, input: str = "") -> str:
    """The user turn of the chat formats: the instruction, then a blank line and the input if any."""
    return f"{instruction}\n\n{input}" if _has_input(input) else instruction


log = logging.getLogger("selfinstruct")


@dataclass(frozen=True)
class JudgeFilter:
    """Keep only what a judge passed: ``overall >= min_overall`` and every check in ``require``.

    ``judge`` picks whose judgments count (a fingerprint or its prefix); the default is the latest
    judge that judged anything. A task that judge has not judged is left out: no score is assumed.
    """

    min_overall: int | None = None
    require: tuple[str, ...] = ()
    judge: str | None = None

    @classmethod
    def parse(cls, min_overall: int | None, require: str | None, judge: str | None) -> JudgeFilter:
        names = tuple(n.strip() for n in (require or "").split(",") if n.strip())
        unknown = [n for n in names if n not in CHECKS]
        if unknown:
            raise ConfigError(f"--require {', '.join(unknown)}: unknown question; choose from {','.join(CHECKS)}")
        if min_overall is not None and not 1 <= min_overall <= 5:
            raise ConfigError(f"--min-overall {min_overall}: the judge scores 1 to 5")
        return cls(min_overall=min_overall, require=names, judge=judge)

    def keeps(self, judgment: Judgment) -> bool:
        if self.min_overall is not None and (judgment.overall or 0) < self.min_overall:
            return False
        return all(judgment.passed(name) for name in self.require)

    def verdicts(self, out_dir: Path) -> dict[tuple[str, int | None], Judgment]:
        """The judged record per task under the chosen judge (the first, should there be more)."""
        from .stats import first_verdicts, judge_order

        judgments = read_judgments(out_dir)
        # Judges with at least one verdict, the current one first (as `selfinstruct stats` shows them).
        order = judge_order([j for j in judgments if j.status == "judged"], read_judges(out_dir))
        if not order:
            raise ConfigError(f"{out_dir} has no judgments; run `selfinstruct judge {out_dir}` first")
        chosen = order[0]
        if self.judge is not None:
            matches = sorted(f for f in order if f.startswith(self.judge))
            if len(matches) != 1:
                raise ConfigError(
                    f"--judge {self.judge} matches {len(matches)} of the judges here ({', '.join(sorted(order))}); "
                    "give one fingerprint (see `selfinstruct stats`)"
                )
            chosen = matches[0]
        return first_verdicts(judgments, chosen)


Verdicts = dict[tuple[str, int | None], Judgment]


def _filter_rows(
    out_dir: Path, rows: list[dict[str, Any]], keys: list[tuple[str, int | None]], judged: tuple[JudgeFilter, Verdicts]
) -> list[dict[str, Any]]:
    keep, verdicts = judged
    kept: list[dict[str, Any]] = []
    unjudged = failed = 0
    for row, key in zip(rows, keys):
        judgment = verdicts.get(key)
        if judgment is None:
            unjudged += 1
        elif keep.keeps(judgment):
            kept.append(row)
        else:
            failed += 1
    log.info("judge filter: kept %d of %d tasks; %d below it, %d not judged by that judge", len(kept), len(rows), failed, unjudged)
    if unjudged:
        log.warning(
            "%d tasks have no judgment and were left out; run `selfinstruct judge %s` to judge them", unjudged, out_dir
        )
    return kept


def _self_instruct_rows(
    out_dir: Path, include_meta: bool, keys: list[tuple[str, int | None]] | None = None
) -> list[dict[str, Any]]:
    """One row per instance of a ``--method self-instruct`` run (tasks in the order they finished)."""
    rows: list[dict[str, Any]] = []
    for task in read_self_instruct_tasks(out_dir):
        for number, (task_input, output) in enumerate(task.instances):
            if keys is not None:
                keys.append((task.id, number))
            row: dict[str, Any] = {"instruction": task.instruction, "input": task_input, "output": output}
            if include_meta:
                row.update(id=task.id, instance=number, is_classification=task.is_classification,
                           most_similar_instruction=task.most_similar_instruction, rouge_l=task.rouge_l,
                           nearest_id=task.nearest_id, model=task.model)  # fmt: skip
            rows.append(row)
    return rows


def _rows(
    out_dir: str | os.PathLike[str], include_meta: bool, keep: tuple[JudgeFilter, Verdicts] | None = None
) -> list[dict[str, Any]]:
    keys: list[tuple[str, int | None]] = []
    if (Path(out_dir) / TASKS_FILE).exists():
        rows = _self_instruct_rows(Path(out_dir), include_meta, keys)
        return rows if keep is None else _filter_rows(Path(out_dir), rows, keys, keep)
    rows = []
    for number, record in enumerate(read_accepted(out_dir), 1):
        keys.append((str(record.get("id", "")), None))
        instruction, output = record.get("instruction"), record.get("output")
        task_input = record.get("input")
        task_input = "" if task_input is None else task_input
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(task_input, str):
            raise StoreError(
                f"{Path(out_dir) / 'instructions.jsonl'}: record {number} lacks a text instruction/input/output; "
                "fix or delete that line"
            )
        row: dict[str, Any] = {"instruction": instruction, "input": task_input, "output": output}
        if include_meta:
            for key, value in record.items():
                if key not in row and key not in _DROPPED_META:
                    row[key] = value
        rows.append(row)
    return rows if keep is None else _filter_rows(Path(out_dir), rows, keys, keep)


def _dump(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _jsonl(objects: Iterable[object]) -> Iterator[str]:
    for obj in objects:
        yield _dump(obj) + "\n"


def _alpaca(rows: list[dict[str, Any]]) -> Iterator[str]:
    # An empty dataset is "[]", which is what json.dumps gives; otherwise stream row by row.
    if not rows:
        yield "[]\n"
        return
    yield "[\n"
    for i, row in enumerate(rows):
        body = json.dumps(row, ensure_ascii=False, indent=2)
        yield "  " + body.replace("\n", "\n  ") + (",\n" if i < len(rows) - 1 else "\n")
    yield "]\n"


def _sharegpt(rows: list[dict[str, Any]]) -> Iterator[str]:
    return _jsonl(
        {
            "conversations": [
                {"from": "human", "value": chat_prompt(r["instruction"], r["input"])},
                {"from": "gpt", "value": r["output"]},
            ]
        }
        for r in rows
    )


def _openai(rows: list[dict[str, Any]]) -> Iterator[str]:
    return _jsonl(
        {
            "messages": [
                {"role": "user", "content": chat_prompt(r["instruction"], r["input"])},
                {"role": "assistant", "content": r["output"]},
            ]
        }
        for r in rows
    )


def _prompt_completion(rows: list[dict[str, Any]]) -> Iterator[str]:
    return _jsonl(
        {"prompt": training_prompt(r["instruction"], r["input"]), "completion": r["output"]} for r in rows
    )


# Self-Instruct fine-tuning layouts: the model learns the task from several ways of asking, not
# one template. (prompt, completion prefix); {i} instruction, {x} input.
SELF_INSTRUCT_LAYOUTS_WITH_INPUT: tuple[tuple[str, str], ...] = (
    ("{i}\n\nInput: {x}\n\nResponse:", " "),
    ("{i}\n{x}\n\n", ""),
    ("Task: {i}\nInput: {x}\nAnswer:", " "),
    ("{i}\n\n{x}\n\nAnswer:", " "),
    ("Instruction: {i}\nInput: {x}\n\n", ""),
)
SELF_INSTRUCT_LAYOUTS_NO_INPUT: tuple[tuple[str, str], ...] = (
    ("{i}\n\nResponse:", " "),
    ("{i}\n\n", ""),
    ("Task: {i}\nAnswer:", " "),
    ("Instruction: {i}\n\n", ""),
)


def _self_instruct(rows: list[dict[str, Any]]) -> Iterator[str]:
    """prompt/completion pairs, each in a layout drawn reproducibly from the row's own text."""

    def pair(row: dict[str, Any]) -> dict[str, str]:
        instruction, task_input, output = row["instruction"].strip(), row["input"].strip(), row["output"].strip()
        layouts = SELF_INSTRUCT_LAYOUTS_WITH_INPUT if task_input else SELF_INSTRUCT_LAYOUTS_NO_INPUT
        rng = random.Random(f"{instruction}\x00{task_input}")  # same file on every export
        prompt, prefix = rng.choice(layouts)
        return {"prompt": prompt.format(i=instruction, x=task_input), "completion": prefix + output}

    return _jsonl(pair(r) for r in rows)


_TEXT_WRITERS: dict[str, Callable[[list[dict[str, Any]]], Iterable[str]]] = {
    "self-instruct": _self_instruct,
    "alpaca": _alpaca,
    "alpaca-jsonl": _jsonl,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "prompt-completion": _prompt_completion,
}


def _create_temp(directory: Path, name: str) -> tuple[int, str]:
    # Like mkstemp, but with mode 0666 minus the umask (mkstemp's 0600 would survive the rename).
    while True:
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue


_FILE_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


def _is_within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _check_destination(out_dir: Path, dest: Path, fmt: str) -> None:
    """Refuse destinations whose replacement would destroy something (see the module docstring)."""
    run = out_dir.resolve()
    # The parent resolved (symlinked directories, ".."), the last part as given: a link there is refused below.
    where = dest.resolve() if dest.name in ("", "..") else dest.parent.resolve() / dest.name
    if _is_within(where, run):
        raise ConfigError(
            f"{dest} is inside the run directory {out_dir}, whose files belong to `selfinstruct generate`; "
            "export to a path outside it"
        )
    if fmt == "hf" and _is_within(run, where):
        raise ConfigError(f"{dest} contains the run directory {out_dir}; give the hf export a path of its own")
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot check {dest}: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(
            f"{dest} is a symbolic link and exporting would replace the link with a file; "
            f"export to the file it points to ({os.path.realpath(dest)}) or remove the link"
        )
    if fmt == "hf":
        if not stat.S_ISDIR(info.st_mode):
            what = "a file" if stat.S_ISREG(info.st_mode) else _kind(info.st_mode)
            raise ConfigError(f"{dest} is {what}; the hf format writes a directory, give another path")
        return
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{dest} is a directory; give a file name to export to")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"{dest} is {_kind(info.st_mode)}, not a regular file, and exporting would replace it; "
            "give a file path, or '-' to write to standard output"
        )


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def _write_text_atomically(dest: Path, chunks: Iterable[str]) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(dest.parent, dest.name)
    except OSError as exc:
        raise StoreError(f"cannot write to {dest.parent}: {exc.strerror}; check the path and its permissions") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            # E.g. a full disk: one line for the user, and the old export is still in place.
            raise StoreError(f"cannot write {dest}: {exc.strerror or exc}; the previous file is unchanged") from exc
        raise
    _sync_directory(dest.parent)


def _sync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform or filesystem allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_stdout(chunks: Iterable[str]) -> None:
    stream = sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        for chunk in chunks:
            stream.write(chunk)
    else:
        # Bytes, so non-ASCII text survives a terminal or pipe whose locale is not UTF-8.
        stream.flush()
        for chunk in chunks:
            buffer.write(chunk.encode("utf-8"))
        buffer.flush()
    stream.flush()


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError('the "hf" format needs the datasets package: pip install "selfinstruct[hf]"') from exc
    return datasets


def _looks_like_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "state.json").exists()


def _save_hf(rows: list[dict[str, Any]], dest: Path) -> None:
    datasets = _import_datasets()
    if dest.is_dir() and any(dest.iterdir()) and not _looks_like_saved_dataset(dest):
        raise ConfigError(f"{dest} is a non-empty directory that is not a saved dataset; refusing to replace it")
    features = datasets.Features({name: datasets.Value("string") for name in _CORE_FIELDS})
    # from_dict, not from_list: an empty list would give a dataset without columns.
    dataset = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in _CORE_FIELDS}, features=features)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as exc:
        raise StoreError(f"cannot write to {dest.parent}: {exc.strerror}") from exc
    new = staging / "dataset"
    old = staging / "previous"
    # save_to_disk draws a progress bar on stderr; keep the CLI's output to our own lines.
    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        # With 0 rows datasets would pick 0 shards and write a directory it cannot load back.
        dataset.save_to_disk(str(new), num_shards=1 if not rows else None)
        # A directory cannot be renamed over a non-empty one: move the old copy aside first,
        # and back if the second rename fails (staging is deleted below).
        if dest.exists():
            os.replace(dest, old)
        try:
            os.replace(new, dest)
        except BaseException:
            if old.exists():
                os.replace(old, dest)
            raise
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}; the previous export is unchanged") from exc
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
        shutil.rmtree(staging, ignore_errors=True)


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _sql_table(db: Any, name: str, rows: list[dict[str, Any]], first: tuple[str, ...]) -> None:
    """A table with the union of the rows' keys as columns (``first`` first); SQLite types by value."""
    columns = list(first)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)  # keys come from the data
    db.execute(f'CREATE TABLE "{name}" ({quoted})')
    marks = ", ".join("?" for _ in columns)
    db.executemany(
        f'INSERT INTO "{name}" ({quoted}) VALUES ({marks})', ([_sql_value(r.get(c)) for c in columns] for r in rows)
    )


def _save_sqlite(out_dir: Path, dest: Path) -> int:
    """Write the run as one SQLite database, atomically; return the tasks written."""
    import sqlite3

    from .records import RecordError
    from .report import FLAGS_FILE, read_requests
    from .store import read_rejections

    tasks = _rows(out_dir, include_meta=True)
    rejected = [{"line": i, **{k: v for k, v in r.to_json().items() if k != "schema"}}
                for i, r in enumerate(read_rejections(out_dir))]  # fmt: skip
    requests = [{k: v for k, v in r.to_json().items() if k != "schema"} for r in read_requests(out_dir)]
    flags: list[dict[str, Any]] = []
    if (out_dir / FLAGS_FILE).exists():
        for line in (out_dir / FLAGS_FILE).read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                flag = json.loads(line)
            except ValueError:
                continue  # a torn last line of a flag being written
            if isinstance(flag, dict):
                flags.append(flag)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(dest.parent, dest.name)
        os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot write to {dest.parent}: {exc.strerror}; check the path and its permissions") from exc
    try:
        db = sqlite3.connect(tmp)
        try:
            with db:
                _sql_table(db, "tasks", tasks, ("id", "instruction", "input", "output"))
                _sql_table(db, "rejected", rejected, ("line", "reason", "detail", "instruction", "input", "output",
                                                      "rouge_l", "most_similar_instruction", "nearest_id", "request"))  # fmt: skip
                _sql_table(db, "requests", requests, ("request", "outcome", "endpoint"))
                _sql_table(db, "flags", flags, ("ref", "kind", "flagged", "note", "at"))
                db.execute('CREATE INDEX tasks_id ON tasks ("id")')
                db.execute('CREATE INDEX rejected_reason ON rejected ("reason")')
                db.execute(
                    "CREATE VIEW near_duplicates AS SELECT r.rouge_l, r.instruction AS candidate, "
                    "t.instruction AS nearest, r.nearest_id, r.detail, r.line FROM rejected r "
                    "LEFT JOIN tasks t ON t.id = r.nearest_id WHERE r.reason = 'near_duplicate' ORDER BY r.rouge_l DESC"
                )
                try:
                    # content="tasks" (double quotes) is what datasette looks for to offer search.
                    db.execute('CREATE VIRTUAL TABLE tasks_fts USING fts5(instruction, input, output, content="tasks")')
                    db.execute("INSERT INTO tasks_fts (rowid, instruction, input, output) "
                               "SELECT rowid, instruction, input, output FROM tasks")  # fmt: skip
                except sqlite3.OperationalError:
                    pass  # an SQLite built without FTS5: everything else is there
        finally:
            db.close()
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, sqlite3.Error)):
            raise StoreError(f"cannot write {dest}: {exc}; the previous file is unchanged") from exc
        if isinstance(exc, RecordError):
            raise StoreError(str(exc)) from exc
        raise
    _sync_directory(dest.parent)
    return len(tasks)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_dataset(
    out_dir: str | os.PathLike[str],
    fmt: str,
    dest: str | os.PathLike[str],
    *,
    include_meta: bool = False,
    keep: JudgeFilter | None = None,
) -> int:
    """Write the accepted tasks of ``out_dir`` to ``dest`` in format ``fmt``; return the rows written.

    ``include_meta`` keeps every stored field (id, rouge_l, most_similar_instruction, model, ...)
    after instruction/input/output; only the alpaca formats take it. ``dest="-"`` prints a text
    format to standard output. An empty run exports an empty file (or dataset) and returns 0.
    A destination inside ``out_dir``, a symbolic link, or an existing path that is not a
    regular file (a directory for ``hf``) raises ConfigError before anything is written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    if include_meta and fmt not in (*_META_FORMATS, "sqlite"):  # sqlite always keeps every field
        raise ConfigError(
            f"the {fmt} format has a fixed shape and cannot include metadata; "
            f"use {' or '.join(_META_FORMATS)} for that"
        )
    to_stdout = os.fspath(dest) == "-"
    if to_stdout and fmt == "hf":
        raise ConfigError("the hf format writes a directory and cannot go to standard output; give a path")
    if to_stdout and fmt == "sqlite":
        raise ConfigError("the sqlite format writes a database file and cannot go to standard output; give a path")
    if not to_stdout:
        _check_destination(Path(out_dir), Path(dest), fmt)
    if fmt == "sqlite":
        if keep is not None:
            raise ConfigError("the sqlite format holds the whole run; filter by the judge in SQL, or pick another format")
        return _save_sqlite(Path(out_dir), Path(dest))
    # No judgments, or an unknown judge: said before anything is written.
    rows = _rows(out_dir, include_meta, None if keep is None else (keep, keep.verdicts(Path(out_dir))))
    if fmt == "hf":
        _save_hf(rows, Path(dest))
    elif to_stdout:
        _write_stdout(_TEXT_WRITERS[fmt](rows))
    else:
        _write_text_atomically(Path(dest), _TEXT_WRITERS[fmt](rows))
    return len(rows)
