"""The README's two commands are the ones that work: CI runs command 2 verbatim."""

from __future__ import annotations

import re
import shlex

from conftest import REPO
from selfinstruct.cli import _build_parser


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    block = ci.split("# --- README test command ---\n", 1)[1].split("\n# --- end ---", 1)[0]
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[1].strip() == block.strip()


def test_readme_main_command_uses_real_options() -> None:
    install, *steps = [part.strip() for part in readme_commands()[0].split("&&")]
    assert "[local]" in readme_commands()[0]
    parser = _build_parser()
    for step in steps:
        words = shlex.split(step)
        if words[0] == "selfinstruct":
            parser.parse_args(words[1:])  # raises SystemExit on an unknown option or format


def test_readme_main_command_exports_outside_the_run_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """export refuses to write into the run directory, so the README's command must not ask it to."""
    from selfinstruct.export import _check_destination

    steps = [shlex.split(part.strip()) for part in readme_commands()[0].split("&&")]
    parser = _build_parser()
    parsed = [parser.parse_args(words[1:]) for words in steps if words[0] == "selfinstruct"]
    run_dir = next(a.output_dir for a in parsed if a.command == "generate")
    for args in (a for a in parsed if a.command == "export"):
        assert args.dir == run_dir
        _check_destination(tmp_path / run_dir, tmp_path / args.output, args.format)  # raises if inside
