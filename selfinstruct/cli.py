"""Command line: parses options, calls one library function per command, prints the result.

Exit codes: 0 done, 1 an error the user must fix (one line on stderr), 2 bad usage,
130 interrupted by Ctrl-C and 143 by SIGTERM (the run resumes with the same command).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import EMBEDDED_JUDGE_MAX_TOKENS, JUDGE_MAX_TOKENS, JudgeConfig, default
from .errors import SelfInstructError
from .filters import DEFAULT_BLACKLIST, FILTER_NAMES, FilterConfig

__all__ = ["main"]

EMBEDDED_NOTE = (
    "No --base-url and no OPENAI_BASE_URL: using the small embedded model (SmolLM2-135M-Instruct on the "
    "CPU via llama.cpp) to show the tool working; its tasks are simple. For real data point it at your "
    "server: --base-url http://HOST:8000/v1 (vLLM), or export OPENAI_BASE_URL."
)


EMBEDDED_JUDGE_NOTE = (
    "No --base-url and no OPENAI_BASE_URL: judging with the small embedded model (SmolLM2-135M-Instruct on the "
    "CPU), which shows the stage working but whose verdicts are close to noise. For a judgment to trust, point "
    "it at a strong model: --base-url http://HOST:8000/v1 --model NAME."
)


def _concurrency(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number or 'auto'") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _directory(value: str) -> Path:
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty; name a directory")
    return Path(value)


def _split_urls(values: Sequence[str] | None) -> tuple[str, ...]:
    urls: list[str] = []
    for value in values or ():
        urls.extend(u.strip() for u in value.split(",") if u.strip())
    return tuple(urls)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="grow a dataset of new tasks (resumable: rerun the same command)",
        description="Grow a dataset of new tasks from seed tasks. Killed or interrupted, the same "
        "command resumes where it stopped.",
    )
    p.add_argument("-o", "--output-dir", required=True, type=_directory, help="run directory (created; reused to resume)")
    p.add_argument(
        "-n", "--num-instructions", type=int, default=default("num_instructions"),
        help="target number of accepted tasks (default %(default)s); raise it later to grow the dataset",
    )  # fmt: skip
    p.add_argument("--seed-tasks", type=Path, help="seed file: Self-Instruct JSONL or Alpaca JSON/JSONL (default: bundled)")
    p.add_argument(
        "--prompt-template", type=Path, metavar="FILE",
        help="JSON file replacing the prose of the prompts (to aim at a domain or a language); see README, 'Prompts'",
    )  # fmt: skip
    server = p.add_argument_group("model server")
    server.add_argument(
        "--base-url", action="append", metavar="URL",
        help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1; repeat or comma-separate for several "
        "replicas (default $OPENAI_BASE_URL; neither: the embedded local model)",
    )  # fmt: skip
    server.add_argument("--api-key", help="API key (default $OPENAI_API_KEY, else a placeholder local servers accept)")
    server.add_argument("--model", help="model name (default: the first model the server lists)")
    server.add_argument("--model-path", type=Path, help="GGUF file for the embedded server (default: SmolLM2-135M-Instruct)")
    server.add_argument(
        "--api", choices=("chat", "completions"),
        help="chat (default for servers) or legacy completions (default for the embedded model, measured: "
        "3.6 vs 1.6 accepted tasks per 1k generated tokens on SmolLM2-135M)",
    )  # fmt: skip
    server.add_argument(
        "--concurrency", type=_concurrency, default=None, metavar="K|auto",
        help="requests in flight per endpoint: a number, or auto (default; adapts to the server; 1 on the embedded model)",
    )  # fmt: skip
    server.add_argument("--max-concurrency", type=int, default=default("max_concurrency"), help="upper bound for auto concurrency (default %(default)s)")
    server.add_argument("--request-timeout", type=float, default=default("request_timeout"), help="seconds a whole request may take (default %(default)s)")
    server.add_argument("--max-attempts", type=int, default=default("max_attempts"), help="attempts per request before it is dropped (default %(default)s)")
    server.add_argument("--retry-wait", type=float, default=default("retry_wait"), help="first retry wait in seconds, doubled per attempt (default %(default)s)")
    server.add_argument("--retry-wait-max", type=float, default=default("retry_wait_max"), help="longest retry wait (default %(default)s); Retry-After wins")
    server.add_argument(
        "--give-up-after", type=float, default=default("give_up_after"),
        help="stop when no server has answered, or no task was accepted, for this many seconds (default %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--max-fruitless-answers", type=int, default=default("max_fruitless_answers"),
        help="stop after this many answers in a row gave no usable task (default %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--max-consecutive-bad-requests", type=int, default=default("max_consecutive_bad_requests"),
        help="one 400/422 drops that request only; the same one on this many requests in a row stops the job "
        "(default %(default)s)",
    )  # fmt: skip
    gen = p.add_argument_group("generation (fixed for a run; see --allow-config-change)")
    gen.add_argument(
        "--method", choices=("alpaca", "self-instruct"), default=default("method"),
        help="alpaca: instruction, input and output in one answer (default); self-instruct: instructions, then "
        "'is it classification?', then up to --max-instances instances each (output first for classification)",
    )  # fmt: skip
    gen.add_argument("--max-instances", type=int, default=default("max_instances"), help="self-instruct: instances kept per task (default %(default)s)")
    gen.add_argument("--num-prompt-instructions", type=int, help="demonstrations per prompt (default 3; self-instruct 8)")
    gen.add_argument("--machine-demos", type=int, help="how many demos come from accepted tasks (default 0; self-instruct 2)")
    gen.add_argument("--tasks-per-prompt", type=int, help="list length asked for, demos included (default 20; self-instruct 15)")
    gen.add_argument("--temperature", type=float, help="sampling temperature, 0 to 2 (default 1.0; self-instruct 0.7)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass, above 0 up to 1 (default 1.0; self-instruct 0.5)")
    gen.add_argument("--max-tokens", type=int, help="tokens per answer (default 3072; 1024 on the embedded model)")
    gen.add_argument("--similarity-threshold", type=float, default=default("similarity_threshold"), help="reject at ROUGE-L F above this (default %(default)s)")
    gen.add_argument("--tokenizer", choices=("rouge", "unicode"), default=default("tokenizer"), help="ROUGE-L tokenizer (default %(default)s; unicode for non-English text)")
    gen.add_argument("--seed", type=int, help="make demo sampling reproducible")
    filt = _add_filter_options(p.add_argument_group("filters"))
    filt.add_argument("--no-seed-check", action="store_true", help="use the seed file even if `seeds check` finds problems")
    p.add_argument("--allow-config-change", action="store_true", help="resume even though generation settings changed")
    p.add_argument(
        "--filter-process", choices=("auto", "yes", "no"), default="auto",
        help="parse, filter and deduplicate answers in a process of their own, on another core "
        "(default auto: yes with 2 or more cores; the self-instruct method always judges in-process)",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    judge = p.add_argument_group("judge (see `selfinstruct judge --help`)")
    judge.add_argument("--judge", action="store_true", help="have a judge model review each task as it is accepted")
    _add_judge_options(judge, prefix="judge-")


def _add_judge_options(group: Any, prefix: str = "") -> None:
    """The judge's server and rubric options; under `generate` they carry a judge- prefix."""
    group.add_argument(
        f"--{prefix}base-url", action="append", metavar="URL", dest="judge_base_url",
        help="the judge's OpenAI-compatible base URL(s) (default: " + (
            "the generator's servers)" if prefix else "$OPENAI_BASE_URL; neither: the embedded local model)"
        ),
    )  # fmt: skip
    group.add_argument(f"--{prefix}model", dest="judge_model", help="the judge's model (default: the first the server lists)")
    if not prefix:
        group.add_argument("--api-key", dest="judge_api_key", help="API key (default $OPENAI_API_KEY)")
        group.add_argument("--model-path", type=Path, dest="judge_model_path", help="GGUF file for the embedded server")
    group.add_argument(
        f"--{prefix}rubric", type=Path, metavar="FILE", dest="judge_rubric",
        help="JSON file with 'system' and/or 'template' replacing the rubric's texts (a new rubric is a new judge)",
    )  # fmt: skip
    group.add_argument(
        f"--{prefix}structured", choices=("auto", "json_schema", "json_object", "off"), default="auto", dest="judge_structured",
        help="how JSON is asked for: auto (default) tries response_format json_schema, then json_object, then none",
    )  # fmt: skip
    group.add_argument(f"--{prefix}api", choices=("chat", "completions"), default="chat", dest="judge_api", help="default chat")
    group.add_argument(
        f"--{prefix}concurrency", type=_concurrency, default=None, metavar="K|auto", dest="judge_concurrency",
        help="judge requests in flight per endpoint (default auto)",
    )  # fmt: skip
    group.add_argument(
        f"--{prefix}max-tokens", type=int, dest="judge_max_tokens",
        help=f"tokens per judge answer (default {JUDGE_MAX_TOKENS}; {EMBEDDED_JUDGE_MAX_TOKENS} on the embedded model)",
    )  # fmt: skip
    group.add_argument(
        f"--{prefix}attempts", type=int, default=default("attempts_per_task", JudgeConfig), dest="judge_attempts",
        help="tries per task in a session when the answer cannot be read (default %(default)s); it stays unjudged, never scored",
    )  # fmt: skip


def _add_filter_options(group: Any) -> Any:
    defaults = FilterConfig()
    group.add_argument("--min-words", type=int, default=defaults.min_words, help="shortest instruction kept, in words (default %(default)s)")
    group.add_argument("--max-words", type=int, default=defaults.max_words, help="longest instruction kept, in words (default %(default)s)")
    group.add_argument("--blacklist", help="comma-separated whole words/phrases to reject (default: the Alpaca list)")
    group.add_argument("--disable-filter", action="append", default=[], choices=FILTER_NAMES, metavar="NAME",
                       help=f"turn a filter off (repeatable): {', '.join(FILTER_NAMES)}")  # fmt: skip
    return group


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfinstruct", description="Grow instruction-tuning data from seed tasks with any OpenAI-compatible server."
    )
    parser.add_argument("--version", action="version", version=f"selfinstruct {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)

    from .export import EXPORT_FORMATS

    p = sub.add_parser("export", help="write the dataset in a fine-tuning format")
    p.add_argument("dir", type=Path, help="run directory of `generate`")
    p.add_argument("--format", "-f", choices=EXPORT_FORMATS, default="alpaca", help="default alpaca (the Alpaca JSON list)")
    p.add_argument("-o", "--output", required=True, help="destination file ('-' for stdout; a directory for hf)")
    p.add_argument("--include-meta", action="store_true", help="keep provenance fields (alpaca formats)")

    p.add_argument("--min-overall", type=int, choices=range(1, 6), metavar="1-5", help="keep tasks the judge scored at least this")
    p.add_argument(
        "--require", metavar="CHECKS",
        help="keep tasks that passed these judge questions, comma-separated: valid,input,output",
    )  # fmt: skip
    p.add_argument("--judge", dest="judge_fingerprint", metavar="FINGERPRINT", help="whose judgments filter (default: the latest judge)")

    p = sub.add_parser(
        "judge", help="have a model review every task (resumable); filter the export by its scores",
        description="A judge model answers three questions of each task (valid instruction? fitting input? correct "
        "output?) and scores it 1-5. Killed or interrupted, the same command goes on; a task is never judged twice "
        "by the same judge, and an answer that cannot be read leaves the task unjudged, never scored.",
    )  # fmt: skip
    p.add_argument("dir", type=_directory, help="run directory of `generate`")
    _add_judge_options(p)
    p.add_argument("--limit", type=int, help="judge at most this many tasks in this session (e.g. a sample for calibration)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("calibrate", help="how far to trust the judge: its agreement with human labels (Cohen's kappa)")
    p.add_argument("dir", type=Path, help="run directory with judgments")
    p.add_argument(
        "--labels", type=Path,
        help="JSONL of human labels {task_id, valid, input, output, overall} (any subset), or flags from the report "
        "(default: DIR/flags.jsonl)",
    )  # fmt: skip
    p.add_argument("--judge", dest="judge_fingerprint", metavar="FINGERPRINT", help="which judge (default: the latest)")
    p.add_argument("--threshold", type=int, default=4, choices=range(1, 6), metavar="1-5", help="overall score that counts as a pass (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")

    p = sub.add_parser("stats", help="report statistics of a run (and plot them)")
    p.add_argument("dir", type=Path, help="run directory of `generate`")
    p.add_argument("--plots", type=Path, metavar="DIR", help="also write PNG plots into DIR")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")

    p = sub.add_parser("report", help="look at a run in the browser: one self-contained HTML file, or --serve")
    p.add_argument("dir", type=Path, help="run directory of `generate` (may still be running)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", type=Path, help="write one self-contained HTML file here")
    where.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 instead (for runs over ~150k rows)")
    p.add_argument("--port", type=int, default=8765, help="--serve: port on 127.0.0.1 (default %(default)s; 0 picks a free one)")
    p.add_argument(
        "--max-rejected", default="10000", metavar="N|all",
        help="rejections carried per reason in the file, a seeded sample (default %(default)s; counts stay exact)",
    )  # fmt: skip
    p.add_argument("--seed-tasks", type=Path, help="the run's seed file, if not the bundled one (links pairs to seeds)")

    p = sub.add_parser("seeds", help="seed file tools")
    seeds_sub = p.add_subparsers(dest="seeds_command", required=True)
    c = seeds_sub.add_parser("check", help="validate a seed file and describe it")
    c.add_argument("path", type=Path, nargs="?", help="seed file (default: the bundled one)")
    c.add_argument("--similarity-threshold", type=float, default=default("similarity_threshold"), help="flag pairs above this ROUGE-L F (default %(default)s)")
    c.add_argument("--tokenizer", choices=("rouge", "unicode"), default=default("tokenizer"), help="ROUGE-L tokenizer (default %(default)s; unicode for non-English text)")
    _add_filter_options(c)
    return parser


def _filters(args: argparse.Namespace) -> FilterConfig:
    blacklist = DEFAULT_BLACKLIST
    if args.blacklist is not None:
        blacklist = tuple(w.strip() for w in args.blacklist.split(",") if w.strip())
    return FilterConfig(
        min_words=args.min_words,
        max_words=args.max_words,
        blacklist=blacklist,
        disabled=frozenset(args.disable_filter),
        # Count words the way the similarity tokenizer sees them: whitespace cannot split CJK text.
        word_tokenizer="unicode" if args.tokenizer == "unicode" else "whitespace",
    )


def _resume_command(argv: Sequence[str]) -> str:
    """The command to rerun, with the API key and URL credentials left out (never printed)."""
    from .llm import redact_url

    words: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            words.append('"$OPENAI_API_KEY"')
            continue
        if arg == "--api-key":
            words.append(arg)
            skip_next = True
        elif arg.startswith("--api-key="):
            words.append('--api-key="$OPENAI_API_KEY"')
        elif "://" in arg:
            words.append(shlex.quote(",".join(redact_url(u) for u in arg.split(","))))
        else:
            words.append(shlex.quote(arg))
    line = "selfinstruct " + " ".join(words)
    if '"$OPENAI_API_KEY"' in line:
        line += "   (with your key in OPENAI_API_KEY)"
    return line


def _run_generate(args: argparse.Namespace) -> int:
    from .config import RunConfig
    from .runner import generate

    urls = _split_urls(args.base_url) or _split_urls([os.environ.get("OPENAI_BASE_URL", "")])
    if not urls:
        print(EMBEDDED_NOTE, file=sys.stderr)
    config = RunConfig(
        output_dir=args.output_dir,
        base_urls=urls,
        num_instructions=args.num_instructions,
        seed_tasks=args.seed_tasks,
        prompt_template=args.prompt_template,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        model=args.model,
        model_path=args.model_path,
        method=args.method,
        max_instances=args.max_instances,
        api=args.api,
        concurrency=args.concurrency,
        max_concurrency=args.max_concurrency,
        num_prompt_instructions=args.num_prompt_instructions,
        machine_demos=args.machine_demos,
        tasks_per_prompt=args.tasks_per_prompt,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        similarity_threshold=args.similarity_threshold,
        tokenizer=args.tokenizer,
        seed=args.seed,
        filters=_filters(args),
        check_seed_file=not args.no_seed_check,
        allow_config_change=args.allow_config_change,
        request_timeout=args.request_timeout,
        max_attempts=args.max_attempts,
        retry_wait=args.retry_wait,
        retry_wait_max=args.retry_wait_max,
        give_up_after=args.give_up_after,
        max_fruitless_answers=args.max_fruitless_answers,
        max_consecutive_bad_requests=args.max_consecutive_bad_requests,
        progress=not args.quiet,
        judge=_judge_config(args, args.output_dir, env_url=False) if args.judge else None,
        filter_process={"auto": None, "yes": True, "no": False}[args.filter_process],
    )
    return _finish(generate(config), "Resume")


def _finish(summary: Any, verb: str) -> int:
    """Print a session's summary; an interrupted one also gets the command that goes on."""
    print(summary.format(), file=sys.stderr)
    if summary.status == "interrupted":
        print(f"Interrupted. {verb} with the same command: {_resume_command(sys.argv[1:])}", file=sys.stderr)
        return 128 + summary.signal if summary.signal else 128 + signal.SIGINT
    return 0


def _judge_config(args: argparse.Namespace, output_dir: Path, *, env_url: bool) -> Any:
    from .config import JudgeConfig

    urls = _split_urls(args.judge_base_url)
    if not urls and env_url:
        urls = _split_urls([os.environ.get("OPENAI_BASE_URL", "")])
    return JudgeConfig(
        output_dir=output_dir,
        base_urls=urls,
        api_key=getattr(args, "judge_api_key", None) or getattr(args, "api_key", None) or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        model=args.judge_model,
        model_path=getattr(args, "judge_model_path", None) or getattr(args, "model_path", None),
        rubric=args.judge_rubric,
        structured=args.judge_structured,
        api=args.judge_api,
        concurrency=args.judge_concurrency,
        max_tokens=args.judge_max_tokens,
        attempts_per_task=args.judge_attempts,
        limit=getattr(args, "limit", None),
        progress=not args.quiet,
    )


def _run_judge(args: argparse.Namespace) -> int:
    from .judging import judge_tasks

    config = _judge_config(args, args.dir, env_url=True)
    if not config.base_urls:
        print(EMBEDDED_JUDGE_NOTE, file=sys.stderr)
    return _finish(judge_tasks(config), "Go on")


def _run_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate, format_calibration

    labels = args.labels or args.dir / "flags.jsonl"
    result = calibrate(args.dir, labels, args.judge_fingerprint, threshold=args.threshold)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_calibration(result), end="")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .export import JudgeFilter, export_dataset

    keep = None
    if args.min_overall is not None or args.require or args.judge_fingerprint:
        keep = JudgeFilter.parse(args.min_overall, args.require, args.judge_fingerprint)
    rows = export_dataset(args.dir, args.format, args.output, include_meta=args.include_meta, keep=keep)
    if args.output != "-":
        print(f"wrote {rows} tasks to {args.output} ({args.format})", file=sys.stderr)
    return 0


def _run_stats(args: argparse.Namespace) -> int:
    from .stats import compute_stats, format_stats, plot_stats

    stats = compute_stats(args.dir)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    if args.plots:
        for path in plot_stats(args.dir, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .report import SERVE_SUGGESTED_ROWS, serve_report, write_report

    if args.serve:
        serve_report(args.dir, port=args.port, seed_tasks=args.seed_tasks,
                     announce=lambda url: print(f"serving {args.dir} at {url} (Ctrl-C to stop)", file=sys.stderr))  # fmt: skip
        return 0
    limit = args.max_rejected.strip().lower()
    if not (limit == "all" or limit.isdigit()):
        raise ConfigError(f"--max-rejected takes a whole number or 'all', not {args.max_rejected!r}")
    counts = write_report(args.dir, args.output, max_rejected=None if limit == "all" else int(limit), seed_tasks=args.seed_tasks)
    print(
        f"wrote {args.output} ({counts['bytes'] / 1e6:.1f} MB): {counts['accepted']:,} tasks, "
        f"{counts['rejected']:,} of {counts['rejected_total']:,} rejections",
        file=sys.stderr,
    )
    if counts["accepted"] + counts["rejected"] >= SERVE_SUGGESTED_ROWS:
        print("that is a big file for a browser; `selfinstruct report DIR --serve` pages it instead", file=sys.stderr)
    return 0


def _run_seeds_check(args: argparse.Namespace) -> int:
    from .seeds import check_seeds

    report = check_seeds(args.path, threshold=args.similarity_threshold, tokenizer=args.tokenizer, filters=_filters(args))
    print(report.format())
    return 0 if report.ok else 1


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"selfinstruct: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    logger = logging.getLogger("selfinstruct")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLine())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        _setup_logging()
        handlers = {
            "generate": _run_generate, "export": _run_export, "stats": _run_stats, "report": _run_report,
            "judge": _run_judge, "calibrate": _run_calibrate,
        }  # fmt: skip
        if args.command == "seeds":
            return _run_seeds_check(args)
        return handlers[args.command](args)
    except SelfInstructError as exc:
        if os.environ.get("SELFINSTRUCT_RAISE_ERRORS"):
            raise
        print(f"selfinstruct: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C outside the generation loop (e.g. while starting up): nothing half-written.
        print("selfinstruct: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:
        return 0
