"""How far to trust a judge: its verdicts compared with a small sample of human labels.

``calibrate(run, labels)`` reads the run's judgments (one judge: the current one unless named)
and a human file, and ``format_calibration`` prints the result. Two kinds of human file:

* a labels file (JSONL, one line per labelled task)::

      {"task_id": "task-000012", "instance": 0, "valid": true, "input": true, "output": false, "overall": 2}

  ``instance`` only for self-instruct runs (which are judged per instance); any subset of the
  questions per line. Gives, per question, the observed agreement, Cohen's kappa and the
  confusion counts; for ``overall`` the exact and within-one agreement, the quadratic-weighted
  kappa and the kappa of the pass/fail split at ``threshold``.

* the report's flag file (``flags.jsonl``, written by ``report --serve`` or downloaded from the
  page). A flag says "this one is bad"; no flag says nothing (nobody looked, or nobody bothered),
  so a flag file has one class only. Agreement and kappa need both, so it gives the judge's
  recall of the flagged tasks: how many it also failed.

Kappa corrects agreement for chance: two raters who both pass 90 % of the tasks agree on 82 %
of them by luck alone. Labels of tasks the judge never judged are counted and left out.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import CHECKS, Judgment
from .stats import first_verdicts, judge_order, task_output_words
from .store import read_accepted, read_judges, read_judgments

__all__ = [
    "DEFAULT_PASS_THRESHOLD",
    "LabelError",
    "calibrate",
    "cohen_kappa",
    "format_calibration",
    "kappa_reading",
    "quadratic_kappa",
]

DEFAULT_PASS_THRESHOLD = 4  # overall >= 4 passes, as `export --min-overall 4`
_LEVELS = (1, 2, 3, 4, 5)
_SHOWN = 20  # disagreements / missed tasks listed by id
_FEW = 30  # below this many labels a kappa moves a lot with one label: say so
_LABEL_HELP = (
    'a labels file has one JSON object per line: {"task_id": "task-000012", "valid": true, '
    '"input": true, "output": false, "overall": 2} (instance too for self-instruct runs)'
)


class LabelError(ConfigError):
    """A labels or flag file that cannot be used (the message names file:line and the fix)."""


# -- agreement measures -----------------------------------------------------------------------------


def cohen_kappa(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two raters' yes/no answers: (po - pe) / (1 - pe).

    po is the share of agreements, pe the agreement expected by chance from each rater's own
    share of yes. None without pairs, or when pe is 1 (both raters gave one same answer
    throughout: chance explains all of it and kappa is undefined).
    """
    n = len(pairs)
    if not n:
        return None
    po = sum(1 for a, b in pairs if a == b) / n
    yes_a = sum(1 for a, _ in pairs if a) / n
    yes_b = sum(1 for _, b in pairs if b) / n
    pe = yes_a * yes_b + (1 - yes_a) * (1 - yes_b)
    if math.isclose(pe, 1.0):
        return None
    return (po - pe) / (1 - pe)


def quadratic_kappa(pairs: Sequence[tuple[int, int]], levels: Sequence[int] = _LEVELS) -> float | None:
    """Quadratic-weighted kappa of two raters' scores: 1 - sum(w * observed) / sum(w * expected).

    The weight of a disagreement grows with the square of its distance, so 2 against 5 costs
    nine times 4 against 5. None without pairs or when chance predicts no disagreement at all.
    """
    n = len(pairs)
    if not n:
        return None
    index = {level: i for i, level in enumerate(levels)}
    k = len(levels)
    observed = [[0.0] * k for _ in range(k)]
    for a, b in pairs:
        observed[index[a]][index[b]] += 1
    rows = [sum(observed[i]) for i in range(k)]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    disagreement = expected = 0.0
    for i in range(k):
        for j in range(k):
            weight = (i - j) ** 2 / (k - 1) ** 2
            disagreement += weight * observed[i][j]
            expected += weight * rows[i] * cols[j] / n
    if expected == 0:
        return None
    return 1 - disagreement / expected


def _kappa_ci(kappa: float | None, pairs: Sequence[tuple[bool, bool]]) -> list[float] | None:
    """An approximate 95 % interval of Cohen's kappa (Cohen 1960's standard error)."""
    n = len(pairs)
    if kappa is None or not n:
        return None
    po = sum(1 for a, b in pairs if a == b) / n
    yes_a = sum(1 for a, _ in pairs if a) / n
    yes_b = sum(1 for _, b in pairs if b) / n
    pe = yes_a * yes_b + (1 - yes_a) * (1 - yes_b)
    se = math.sqrt(po * (1 - po) / (n * (1 - pe) ** 2))
    return [max(-1.0, kappa - 1.96 * se), min(1.0, kappa + 1.96 * se)]


def kappa_reading(kappa: float | None) -> str:
    """Kappa in words, on the scale of Landis & Koch (1977)."""
    if kappa is None:
        return "undefined (every answer was the same on both sides)"
    value = round(kappa, 9)  # 0.3999999999999999 from float arithmetic is 0.4 on paper: "moderate"
    if value < 0:
        return "poor (below chance)"
    for bound, word in ((0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial")):
        if value < bound:
            return word
    return "almost perfect"


def _confusion(pairs: Sequence[tuple[bool, bool]]) -> dict[str, int]:
    """Counts keyed human_judge: ``pass_pass`` both passed, ``pass_fail`` the human passed and the judge failed..."""
    counts = {"pass_pass": 0, "pass_fail": 0, "fail_pass": 0, "fail_fail": 0}
    for human, judge in pairs:
        counts[("pass" if human else "fail") + "_" + ("pass" if judge else "fail")] += 1
    return counts


def _binary(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    n = len(pairs)
    kappa = cohen_kappa(pairs)
    agree = sum(1 for a, b in pairs if a == b)
    return {
        "n": n,
        "agree": agree,
        "agreement": agree / n if n else None,
        "kappa": kappa,
        "ci95": _kappa_ci(kappa, pairs),
        "reading": kappa_reading(kappa) if n else "no labels",
        "human_pass_rate": sum(1 for a, _ in pairs if a) / n if n else None,
        "judge_pass_rate": sum(1 for _, b in pairs if b) / n if n else None,
        "confusion": _confusion(pairs),
    }


# -- reading the run and the human file ---------------------------------------------------------------


Key = tuple[str, "int | None"]


def _fails(verdict: Judgment, threshold: int) -> bool:
    return (verdict.overall or 0) < threshold or not all(verdict.passed(c) for c in CHECKS)


def _pick_judge(run_dir: Path, judgments: list[Judgment], judge: str | None) -> tuple[str, str | None]:
    """The fingerprint to calibrate (the current judge unless named; a unique prefix will do) and its model."""
    judges = read_judges(run_dir)
    order = judge_order(judgments, judges)
    if not order:
        raise LabelError(f"{run_dir} has no judgments yet; run `selfinstruct judge {run_dir}` first, then calibrate")
    if judge is None:
        chosen = order[0]
    else:
        matches = [fp for fp in order if fp.startswith(judge)]
        if len(matches) != 1:
            known = ", ".join(order)
            what = "matches several judges" if matches else "is not a judge of this run"
            raise LabelError(f"judge {judge!r} {what}; give one of: {known}")
        chosen = matches[0]
    settings = next((h.get("settings") or {} for h in judges if h.get("fingerprint") == chosen), {})
    model = settings.get("model") or next((j.model for j in judgments if j.judge == chosen and j.model), None)
    return chosen, model


def _lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LabelError(f"{path}: no such file; pass --labels a JSONL file of human labels or the report's flags.jsonl") from None
    except IsADirectoryError:
        raise LabelError(f"{path} is a directory; pass --labels the labels file itself (or the run's flags.jsonl)") from None
    except OSError as exc:
        raise LabelError(f"cannot read {path}: {exc.strerror}") from exc
    objects = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise LabelError(f"{path}:{number} is not valid JSON ({exc}); fix or delete that line") from None
        if not isinstance(value, dict):
            raise LabelError(f"{path}:{number} is not a JSON object; {_LABEL_HELP}")
        objects.append((number, value))
    if not objects:
        raise LabelError(f"{path} holds no labels; {_LABEL_HELP}")
    return objects


def _is_flag_file(objects: list[tuple[int, dict[str, Any]]]) -> bool:
    return "ref" in objects[0][1] and "task_id" not in objects[0][1]


def calibrate(
    run_dir: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    judge: str | None = None,
    *,
    threshold: int = DEFAULT_PASS_THRESHOLD,
) -> dict[str, Any]:
    """Compare one judge of ``run_dir`` with human labels; see the module docstring.

    ``judge`` is a fingerprint (or a unique prefix of one); None takes the current judge.
    ``threshold`` is the overall score a task needs to pass. The result is JSON data with
    ``mode`` "labels" or "flags". A file that cannot be used raises :class:`LabelError`.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold not in _LEVELS:
        raise LabelError(f"the pass threshold must be a whole number from 1 to 5, not {threshold!r}")
    directory, path = Path(run_dir), Path(labels_path)
    judgments = read_judgments(directory)  # also checks that run_dir is a run directory
    objects = _lines(path)
    fingerprint, model = _pick_judge(directory, judgments, judge)
    verdicts = first_verdicts(judgments, fingerprint)
    keys = set(task_output_words(directory))
    head = {
        "run_dir": str(directory),
        "labels_file": str(path),
        "judge": fingerprint,
        "model": model,
        "threshold": threshold,
    }
    if _is_flag_file(objects):
        return head | _from_flags(directory, path, objects, keys, verdicts, threshold)
    return head | _from_labels(directory, path, objects, keys, verdicts, threshold)


def _from_labels(
    directory: Path,
    path: Path,
    objects: list[tuple[int, dict[str, Any]]],
    keys: set[Key],
    verdicts: dict[Key, Judgment],
    threshold: int,
) -> dict[str, Any]:
    per_instance = any(instance is not None for _, instance in keys)
    task_ids = {task_id for task_id, _ in keys}
    seen: dict[Key, int] = {}
    answers: dict[str, list[tuple[bool, bool]]] = {c: [] for c in CHECKS}
    overall: list[tuple[int, int]] = []
    disagreements: list[dict[str, Any]] = []
    not_judged = 0
    for number, label in objects:
        where = f"{path}:{number}"
        if "ref" in label and "task_id" not in label:
            raise LabelError(f"{where} is a flag line (it has 'ref'), but line 1 is a label; keep labels and flags in separate files")
        task_id = label.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise LabelError(f"{where} has no 'task_id'; {_LABEL_HELP}")
        instance = label.get("instance")
        if instance is not None and (isinstance(instance, bool) or not isinstance(instance, int)):
            raise LabelError(f"{where}: 'instance' should be a whole number (the instance's position in its task), found {instance!r}")
        if task_id not in task_ids:
            raise LabelError(f"{where}: task {task_id!r} is not in {directory}; check the id, or label this run's tasks")
        if per_instance and instance is None:
            raise LabelError(f"{where}: {directory} is a self-instruct run, judged per instance; add \"instance\": N (0 for the first)")
        if not per_instance and instance is not None:
            raise LabelError(f"{where}: the tasks of {directory} have no instances; drop 'instance' from the line")
        key = (task_id, instance)
        if key not in keys:
            raise LabelError(f"{where}: task {task_id!r} has no instance {instance}; instances count from 0")
        if key in seen:
            raise LabelError(f"{where} labels {_name(key)} again (first on line {seen[key]}); keep one line per task")
        seen[key] = number
        given: dict[str, bool] = {}
        for check in CHECKS:
            if check in label and label[check] is not None:
                if not isinstance(label[check], bool):
                    raise LabelError(f"{where}: {check!r} should be true or false, found {label[check]!r}")
                given[check] = label[check]
        score = label.get("overall")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int) or score not in _LEVELS):
            raise LabelError(f"{where}: 'overall' should be a whole number from 1 to 5, found {score!r}")
        if not given and score is None:
            raise LabelError(f"{where} labels nothing; give at least one of {', '.join(CHECKS)} (true/false) or overall (1-5)")
        verdict = verdicts.get(key)
        if verdict is None:
            not_judged += 1
            continue
        for check, human in given.items():
            machine = bool(verdict.passed(check))
            answers[check].append((human, machine))
            if human != machine:
                disagreements.append({"task_id": task_id, "instance": instance, "question": check, "human": human, "judge": machine})
        if score is not None and verdict.overall is not None:
            overall.append((score, verdict.overall))
            if abs(score - verdict.overall) > 1:
                disagreements.append(
                    {"task_id": task_id, "instance": instance, "question": "overall", "human": score, "judge": verdict.overall}
                )
    split = [(h >= threshold, j >= threshold) for h, j in overall]
    n = len(overall)
    weighted = quadratic_kappa(overall)
    return {
        "mode": "labels",
        "labels": len(objects),
        "compared": len(objects) - not_judged,
        "not_judged": not_judged,
        "questions": {check: _binary(pairs) for check, pairs in answers.items()},
        "overall": {
            "n": n,
            "exact": sum(1 for h, j in overall if h == j) / n if n else None,
            "within_one": sum(1 for h, j in overall if abs(h - j) <= 1) / n if n else None,
            "weighted_kappa": weighted,
            "reading": kappa_reading(weighted) if n else "no labels",
            "human_mean": sum(h for h, _ in overall) / n if n else None,
            "judge_mean": sum(j for _, j in overall) / n if n else None,
            "pass_fail": _binary(split),
        },
        "disagreements": disagreements[:_SHOWN],
        "disagreements_total": len(disagreements),
    }


_INDEX_REF = re.compile(r"a(\d+)")


def _from_flags(
    directory: Path,
    path: Path,
    objects: list[tuple[int, dict[str, Any]]],
    keys: set[Key],
    verdicts: dict[Key, Judgment],
    threshold: int,
) -> dict[str, Any]:
    # The report names an accepted task by its id, or "a<position>" when it has none.
    accepted_ids = [r.get("id") or "" for r in read_accepted(directory)]
    known_ids = set(accepted_ids)
    by_task: dict[str, list[Key]] = {}
    for key in keys:
        by_task.setdefault(key[0], []).append(key)
    state: dict[str, tuple[int, bool, str]] = {}  # ref -> (line, flagged, kind); the last line wins
    for number, line in objects:
        where = f"{path}:{number}"
        ref, kind = line.get("ref"), line.get("kind")
        if not isinstance(ref, str) or not ref:
            raise LabelError(f"{where} has no 'ref'; a flag file is the report's flags.jsonl, written as you flag records")
        flagged = line.get("flagged", True)  # a downloaded flag file lists flagged records only
        if not isinstance(flagged, bool):
            raise LabelError(f"{where}: 'flagged' should be true or false, found {flagged!r}")
        state[ref] = (number, flagged, kind if isinstance(kind, str) else "")
    flagged_tasks: dict[str, str] = {}  # task id -> ref
    ignored = 0
    for ref, (number, flagged, kind) in state.items():
        if not flagged:
            continue
        if kind != "accepted":
            ignored += 1  # a flagged rejection or seed says nothing about the judge
            continue
        task_id = ref
        match = _INDEX_REF.fullmatch(ref)
        if ref not in known_ids and match and int(match.group(1)) < len(accepted_ids):
            task_id = accepted_ids[int(match.group(1))]
        if task_id not in known_ids and task_id not in by_task:
            raise LabelError(f"{path}:{number}: flag on {ref!r}, which is no accepted task of {directory}; was the flag file made from another run?")
        flagged_tasks[task_id] = ref
    not_judged = 0
    failed: list[str] = []
    missed: list[str] = []
    failed_on = {c: 0 for c in CHECKS} | {"overall": 0}
    for task_id in flagged_tasks:
        # A self-instruct task is judged per instance: the judge failed it if it failed any instance.
        judged = [verdicts[k] for k in sorted(by_task.get(task_id, []), key=lambda k: k[1] or 0) if k in verdicts]
        if not judged:
            not_judged += 1
            continue
        if any(_fails(v, threshold) for v in judged):
            failed.append(task_id)
            for check in CHECKS:
                failed_on[check] += any(not v.passed(check) for v in judged)
            failed_on["overall"] += any((v.overall or 0) < threshold for v in judged)
        else:
            missed.append(task_id)
    compared = len(failed) + len(missed)
    return {
        "mode": "flags",
        "flagged": len(flagged_tasks),
        "ignored": ignored,
        "compared": compared,
        "not_judged": not_judged,
        "judge_failed": len(failed),
        "recall": len(failed) / compared if compared else None,
        "failed_on": failed_on,
        "missed": missed[:_SHOWN],
        "missed_total": len(missed),
    }


def _name(key: Key) -> str:
    return key[0] if key[1] is None else f"{key[0]} instance {key[1]}"


# -- text -------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _k(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _table(rows: list[list[str]], indent: int = 2) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        out.append((" " * indent + "  ".join(cells)).rstrip())
    return out


def format_calibration(result: dict[str, Any]) -> str:
    """A plain-text reading of :func:`calibrate`'s result for the terminal."""
    judge = result["judge"] + (f" ({result['model']})" if result.get("model") else "")
    lines = [f"Calibration of judge {judge}", f"against {result['labels_file']} (run {result['run_dir']})"]
    if result["mode"] == "flags":
        lines += _format_flags(result)
    else:
        lines += _format_labels(result)
    return "\n".join(lines) + "\n"


def _format_labels(r: dict[str, Any]) -> list[str]:
    lines = [f"{r['labels']:,} labelled tasks, {r['compared']:,} compared"]
    if r["not_judged"]:
        lines[-1] += f"; {r['not_judged']:,} not judged by this judge (left out: run `selfinstruct judge` first)"
    rows = [["question", "n", "agreement", "kappa", "95% interval", "reading", "human/judge pass"]]
    for check, q in r["questions"].items():
        if not q["n"]:
            rows.append([check, "0", "-", "-", "-", "no labels", "-"])
            continue
        ci = q["ci95"]
        rows.append([
            check, f"{q['n']:,}", _pct(q["agreement"]), _k(q["kappa"]),
            f"{ci[0]:+.2f}..{ci[1]:+.2f}" if ci else "-", q["reading"],
            f"{_pct(q['human_pass_rate'])} / {_pct(q['judge_pass_rate'])}",
        ])  # fmt: skip
    lines += [""] + _table(rows)
    lines += ["", "Confusion (rows: human, columns: judge)"]
    conf = [["", "", "judge pass", "judge fail"]]
    for check, q in r["questions"].items():
        if q["n"]:
            c = q["confusion"]
            conf.append([check, "human pass", str(c["pass_pass"]), str(c["pass_fail"])])
            conf.append(["", "human fail", str(c["fail_pass"]), str(c["fail_fail"])])
    lines += _table(conf) if len(conf) > 1 else ["  (no yes/no labels)"]
    o = r["overall"]
    lines += ["", f"Overall score (1-5): {o['n']:,} compared"]
    if o["n"]:
        pf = o["pass_fail"]
        lines += _table([
            ["exact agreement", _pct(o["exact"])],
            ["within one point", _pct(o["within_one"])],
            ["weighted kappa (quadratic)", f"{_k(o['weighted_kappa'])} {o['reading']}"],
            ["mean score: human / judge", f"{o['human_mean']:.2f} / {o['judge_mean']:.2f}"],
            [f"pass at >= {r['threshold']}: agreement", _pct(pf["agreement"])],
            [f"pass at >= {r['threshold']}: kappa", f"{_k(pf['kappa'])} {pf['reading']}"],
        ])  # fmt: skip
    if r["disagreements_total"]:
        lines += ["", f"Disagreements ({r['disagreements_total']:,}; overall only when more than one point apart)"]
        for d in r["disagreements"]:
            where = d["task_id"] + ("" if d["instance"] is None else f"#{d['instance']}")
            lines.append(f"  {where}  {d['question']}: human {_word(d['human'])}, judge {_word(d['judge'])}")
        if r["disagreements_total"] > len(r["disagreements"]):
            lines.append(f"  ... and {r['disagreements_total'] - len(r['disagreements']):,} more")
    small = max([q["n"] for q in r["questions"].values()] + [o["n"]])
    lines += ["", "Kappa reads on the scale of Landis & Koch: below 0.2 slight, 0.2-0.4 fair, 0.4-0.6 moderate,"
              " 0.6-0.8 substantial, above 0.8 almost perfect."]  # fmt: skip
    if small < _FEW:
        lines.append(f"With fewer than {_FEW} labels per question the intervals are wide: label more tasks to narrow them.")
    return lines


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "pass" if value else "fail"
    return str(value)


def _format_flags(r: dict[str, Any]) -> list[str]:
    lines = [f"{r['flagged']:,} accepted tasks flagged as bad, {r['compared']:,} of them judged"]
    if r["not_judged"]:
        lines[-1] += f" ({r['not_judged']:,} not judged by this judge: left out)"
    if r["ignored"]:
        lines.append(f"{r['ignored']:,} flags on rejections or seeds ignored (the judge only scores accepted tasks)")
    if r["compared"]:
        lines.append(
            f"The judge also failed {r['judge_failed']:,} of {r['compared']:,} (recall of flagged tasks "
            f"{_pct(r['recall'])}; failing = overall below {r['threshold']} or any check failed)"
        )
        f = r["failed_on"]
        lines.append(
            "  failed on: " + ", ".join(f"{k} {f[k]:,}" for k in CHECKS) + f", overall < {r['threshold']} {f['overall']:,}"
        )
        if r["missed_total"]:
            lines.append(f"  passed by the judge though flagged ({r['missed_total']:,}): " + ", ".join(r["missed"])
                         + (" ..." if r["missed_total"] > len(r["missed"]) else ""))  # fmt: skip
    lines += [
        "",
        "A flag file only holds tasks a person marked bad; an unflagged task is not a label (nobody said it",
        "is good). Agreement and Cohen's kappa need both classes: write a labels file with a line per task",
        'you checked, good ones too: {"task_id": ..., "valid": true, "input": true, "output": false, "overall": 2}',
    ]
    return lines
