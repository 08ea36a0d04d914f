"""``--method self-instruct`` through the real CLI, against a loopback server taught its three prompts."""

from __future__ import annotations

import json
import random
import re
import signal
import threading
from pathlib import Path

import pytest

from conftest import generate_args, lines, run_cli, spawn
from fake_openai import FakeOpenAI, Reply, TaskGenerator
from selfinstruct.stages import filter_instances, parse_classification, parse_instances, parse_instruction_list

CLASSIFY = re.compile(r"Task: ([^\n]*)\nClassification task:(?:\s*Answer with Yes or No only\.)?\s*$")
LABELS = re.compile(r"Task: ([^\n]*)\nLabels:(?:\s*Continue[^\n]*)?\s*$")
EXAMPLES = re.compile(r"Task: ([^\n]*)\nExample 1\n(?:\s*Continue[^\n]*)?\s*$")
LIST_END = re.compile(r"(\d+)\.\s*$")
LIST_CHAT = re.compile(r"Continue the list with items (\d+) to (\d+)")


class SelfInstructServer:
    """Answers the three kinds of Self-Instruct prompt; ``special`` scripts answers per instruction."""

    def __init__(self, seed: int = 0, special: dict[str, list[str]] | None = None, per_list: int = 4) -> None:
        self.gen = TaskGenerator(seed)
        self.lock = threading.Lock()
        self.special = {k: list(v) for k, v in (special or {}).items()}
        self.per_list = per_list
        self.planted: list[str] = []  # instructions to hand out first, in list answers
        self.clf_prompts: list[str] = []  # instructions whose instances were asked label-first
        self.gen_prompts: list[str] = []

    def is_clf(self, instruction: str) -> bool:
        return sum(map(ord, instruction)) % 3 == 0

    def __call__(self, ctx: object) -> Reply:
        prompt: str = ctx.prompt  # type: ignore[attr-defined]
        chat = "chat" in ctx.path  # type: ignore[attr-defined]
        with self.lock:
            m = CLASSIFY.search(prompt)
            if m:
                scripted = self.special.get(("classify", m.group(1)))  # type: ignore[call-overload]
                if scripted:
                    return Reply.text(scripted.pop(0) if len(scripted) > 1 else scripted[0])
                return Reply.text(" Yes" if self.is_clf(m.group(1)) else " No")
            m = LABELS.search(prompt)
            if m:
                self.clf_prompts.append(m.group(1))
                scripted = self.special.get(("instances", m.group(1)))  # type: ignore[call-overload]
                if scripted:
                    return Reply.text(scripted[0])
                a, b = self.gen.output().split()[:2]
                return Reply.text(f" {a} | {b}\nLabel: {a}\nInput: {self.gen.output()}\nLabel: {b}\nInput: {self.gen.output()}\n")
            m = EXAMPLES.search(prompt)
            if m:
                self.gen_prompts.append(m.group(1))
                scripted = self.special.get(("instances", m.group(1)))  # type: ignore[call-overload]
                if scripted:
                    return Reply.text(scripted[0])
                parts = [f"Input: {self.gen.input() or '<none>'}\nOutput: {self.gen.output()}\n"]
                parts.append(f"Example 2\nInput: {self.gen.input() or '<none>'}\nOutput: {self.gen.output()}\n")
                return Reply.text("".join(parts))
            # Stage 1: continue the numbered list.
            m = LIST_CHAT.search(prompt) if chat else LIST_END.search(prompt)
            first = int(m.group(1)) if m else 9
            items = []
            for k in range(self.per_list):
                text = self.planted.pop(0) if self.planted else self.gen.instruction()
                items.append(text)
            if chat:
                return Reply.text("".join(f"{first + i}. {t}\n" for i, t in enumerate(items)))
            return Reply.text(" " + items[0] + "\n" + "".join(f"{first + i}. {t}\n" for i, t in enumerate(items[1:], 1)))


def si_args(out: Path, server: FakeOpenAI, n: int, *extra: str) -> list[str]:
    return generate_args(out, server, n, "--method", "self-instruct", *extra)


def check_run(out: Path, target: int) -> list[dict]:
    instructions = lines(out / "instructions.jsonl")
    tasks = lines(out / "tasks.jsonl")
    assert len(instructions) == target
    assert sorted(t["id"] for t in tasks) == sorted(i["id"] for i in instructions), "an instruction without its task line"
    for task in tasks:
        pairs = [(i["input"], i["output"]) for i in task["instances"]]
        assert len(pairs) == len(set(pairs)), "a duplicated instance"
        assert 1 <= len(pairs) <= 5 or task.get("reason"), task
    return tasks


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_reaches_the_target_and_every_instruction_gets_its_instances(tmp_path: Path, api: str) -> None:
    logic = SelfInstructServer()
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        server.set_handler(logic)
        result = run_cli(*si_args(out, server, 24, "--api", api, "--concurrency", "4"))
    assert result.returncode == 0, result.stderr
    tasks = check_run(out, 24)
    assert all(t["instances"] and t.get("reason") is None for t in tasks)
    clf = {t["instruction"] for t in tasks if t["is_classification"]}
    assert clf and clf == {t["instruction"] for t in tasks if logic.is_clf(t["instruction"])}
    # Classification tasks were asked label first, the others input first.
    assert set(logic.clf_prompts) == clf
    assert set(logic.gen_prompts) == {t["instruction"] for t in tasks} - clf
    for task in tasks:
        if task["is_classification"]:
            assert {i["output"] for i in task["instances"]} <= set(task["labels"])
    stages = {r.get("stage") for r in lines(out / "requests.jsonl")}
    assert stages == {"instruction", "classification", "instances"}
    export = run_cli("export", str(out), "--format", "alpaca", "-o", str(tmp_path / "a.json"))
    assert export.returncode == 0, export.stderr
    rows = json.loads((tmp_path / "a.json").read_text())
    assert len(rows) == sum(len(t["instances"]) for t in tasks)


GOOD_GEN = "Input: <none>\nOutput: a fine answer\n"
PLANTED = {
    # instruction -> (is classification, stage-3 answer, reason expected in rejected.jsonl)
    "Decide whether the review of the cafe sounds happy or sad overall.": (
        True, " happy | sad\nLabel: happy\nInput: Lovely cake.\nLabel: angry\nInput: Awful tea.\n", "label_not_in_labels"),
    "Rewrite the sentence about the harbour so that it sounds more formal.": (
        False, "Input: The boats are nice.\nOutput: The boats are nice.\nExample 2\n" + GOOD_GEN, "input_equals_output"),
    "Summarise the weather report for the coming weekend in one sentence.": (
        False, "Input: Rain on Saturday.\nOutput:\nExample 2\n" + GOOD_GEN, "empty_output"),
    "List three ingredients that a simple tomato soup usually needs.": (
        False, "Input: Soup:\nOutput: tomatoes, onion, stock\nExample 2\n" + GOOD_GEN, "ends_with_colon"),
    "Suggest a polite reply to a neighbour who asks to borrow a ladder.": (
        False, GOOD_GEN + "Example 2\n" + GOOD_GEN, "duplicate_instance"),
    "Translate the short greeting from Spanish into plain English words.": (
        False, "Input: Hola\nOutput: Hello\nExample 2\nInput: Hola\nOutput: Goodbye\n", "conflicting_outputs"),
}


def test_each_instance_filter_rejects_its_planted_case(tmp_path: Path) -> None:
    special = {}
    for text, (clf, answer, _) in PLANTED.items():
        special[("classify", text)] = [" Yes" if clf else " No"]
        special[("instances", text)] = [answer]
    logic = SelfInstructServer(special=special)  # type: ignore[arg-type]
    logic.planted = list(PLANTED)
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        server.set_handler(logic)
        result = run_cli(*si_args(out, server, 10, "--concurrency", "1"))
    assert result.returncode == 0, result.stderr
    tasks = {t["instruction"]: t for t in check_run(out, 10)}
    rejected = lines(out / "rejected.jsonl")
    for text, (_, _, reason) in PLANTED.items():
        assert any(r["reason"] == reason and r["instruction"] == text and r["stage"] == "instances" for r in rejected), reason
    assert tasks["Translate the short greeting from Spanish into plain English words."]["reason"] == "conflicting_outputs"
    assert tasks["Translate the short greeting from Spanish into plain English words."]["instances"] == []
    kept = tasks["Suggest a polite reply to a neighbour who asks to borrow a ladder."]["instances"]
    assert kept == [{"input": "", "output": "a fine answer"}]


def test_an_unclear_classification_is_asked_again_never_taken_as_no(tmp_path: Path) -> None:
    maybe = "Judge if the following email sounds urgent to its reader or not."
    never = "Pick the colour that best matches the mood of the poem given."
    special = {("classify", maybe): ["Maybe?", "Hmm", " Yes"], ("classify", never): ["Perhaps"]}
    logic = SelfInstructServer(special=special)  # type: ignore[arg-type]
    logic.planted = [maybe, never]
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        server.set_handler(logic)
        result = run_cli(*si_args(out, server, 4, "--concurrency", "1"))
    assert result.returncode == 0, result.stderr
    tasks = {t["instruction"]: t for t in check_run(out, 4)}
    assert tasks[maybe]["is_classification"] is True and tasks[maybe]["instances"]
    assert tasks[never]["is_classification"] is None and tasks[never]["reason"] == "classification_unclear"


def test_sigkill_across_stages_then_resume(tmp_path: Path) -> None:
    rng = random.Random(11)
    out = tmp_path / "run"
    target = 60
    with FakeOpenAI(latency=0.003) as server:
        server.set_handler(SelfInstructServer(per_list=3))
        args = si_args(out, server, target, "--concurrency", "3")
        kills = 0
        for _ in range(8):
            done = len(lines(out / "tasks.jsonl")) if (out / "tasks.jsonl").exists() else 0
            if done >= target - 5:
                break
            proc = spawn(args)
            seen = len(server.completion_requests())
            try:
                server.wait_until(lambda s: len(s.completion_requests()) >= seen + rng.randint(3, 25) or proc.poll() is not None, timeout=60)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)
            kills += 1
        assert kills >= 5
        final = run_cli(*args)
        assert final.returncode == 0, final.stderr
    tasks = check_run(out, target)
    assert len(tasks) == target and len({t["id"] for t in tasks}) == target
    instructions = [i["instruction"] for i in lines(out / "instructions.jsonl")]
    assert len(set(instructions)) == target


# -- the pure parts -----------------------------------------------------------------------------


def test_instruction_list_parsing_keeps_case_and_drops_only_the_cut_item() -> None:
    text = " Tell me about NASA and the USA.\n10. Write a haiku about rain\n11. Explain the"
    found, cut = parse_instruction_list(text, continuation_number=9, finish_reason="length")
    assert [c.instruction for c in found] == ["Tell me about NASA and the USA.", "Write a haiku about rain"] and cut == 1
    chat = "Sure! Here you go:\n9. Name a city:\n10. Describe a bird\n   that sings at night."
    found, cut = parse_instruction_list(chat, continuation_number=None, finish_reason="stop")
    assert [c.instruction for c in found] == ["Name a city", "Describe a bird that sings at night."] and cut == 0


@pytest.mark.parametrize("answer, expected", [(" Yes", True), ("no.", False), ("**YES**", True), ("Maybe", None), ("", None)])
def test_classification_answers(answer: str, expected: bool | None) -> None:
    assert parse_classification(answer) is expected


def test_example_inside_content_is_not_a_marker() -> None:
    text = "Input: For example, cats.\nOutput: For Example 2 cats\nExample 2\nInput: <none>\nOutput: dogs\n"
    parsed = parse_instances(text, classification=False, finish_reason="stop")
    assert parsed.instances == [("For example, cats.", "For Example 2 cats"), ("", "dogs")]


def test_labels_are_not_left_in_inputs_and_cut_instances_are_dropped() -> None:
    text = " spam | not spam\nLabel: spam\nInput: WIN A PRIZE\nnow!\nLabel: not spam\nInput: Lunch at 12?\nLabel: spam\nInput: Che"
    parsed = parse_instances(text, classification=True, finish_reason="length")
    assert parsed.labels == ("spam", "not spam")
    assert parsed.instances == [("WIN A PRIZE\nnow!", "spam"), ("Lunch at 12?", "not spam")] and parsed.cut == 1


def test_filter_keeps_at_most_k_in_answer_order() -> None:
    instances = [(f"in {i}", f"out {i}") for i in range(8)]
    verdict = filter_instances(instances, labels=(), classification=False, max_instances=5)
    assert verdict.kept == instances[:5]
    assert [r for _, r in verdict.rejected] == ["over_max_instances"] * 3 and verdict.task_reason is None


def test_self_instruct_export_format_is_reproducible_and_varied(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        server.set_handler(SelfInstructServer())
        assert run_cli(*si_args(out, server, 30, "--concurrency", "2")).returncode == 0
    for name in ("a.jsonl", "b.jsonl"):
        assert run_cli("export", str(out), "--format", "self-instruct", "-o", str(tmp_path / name)).returncode == 0
    first = (tmp_path / "a.jsonl").read_text()
    assert first == (tmp_path / "b.jsonl").read_text()
    pairs = [json.loads(line) for line in first.splitlines()]
    assert len(pairs) == sum(len(t["instances"]) for t in lines(out / "tasks.jsonl"))
    assert len({p["prompt"].split("\n")[0].split(":")[0] for p in pairs if p["prompt"].startswith(("Task:", "Instruction:"))}) == 2
    for pair, task in zip(pairs, [t for t in lines(out / "tasks.jsonl") for _ in t["instances"]]):
        assert task["instruction"] in pair["prompt"]


def test_stats_report_the_self_instruct_table(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        server.set_handler(SelfInstructServer())
        assert run_cli(*si_args(out, server, 12, "--concurrency", "2")).returncode == 0
    result = run_cli("stats", str(out), "--json")
    si = json.loads(result.stdout)["self_instruct"]
    tasks = lines(out / "tasks.jsonl")
    assert si["instructions"] == 12 and si["instances"] == sum(len(t["instances"]) for t in tasks)
    assert si["classification"] == sum(1 for t in tasks if t["is_classification"])
    assert si["rouge_l_to_nearest_seed"]["count"] == 12
    assert "Self-Instruct" in run_cli("stats", str(out)).stdout


def test_instructions_accepted_but_not_yet_decided_are_finished_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        server.set_handler(SelfInstructServer())
        assert run_cli(*si_args(out, server, 8, "--concurrency", "2")).returncode == 0
        # As a kill between stage 1 and stage 3 leaves it: the target's instructions, not all their tasks.
        kept = (out / "tasks.jsonl").read_text().splitlines(keepends=True)[:5]
        (out / "tasks.jsonl").write_text("".join(kept))
        before = len(server.completion_requests())
        result = run_cli(*si_args(out, server, 8, "--concurrency", "2"))
        assert result.returncode == 0, result.stderr
        assert len(server.completion_requests()) > before
    check_run(out, 8)
