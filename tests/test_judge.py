"""The judge on its own: one answer in, decisions out, checked against the reference scorer."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from selfinstruct.filters import FilterConfig
from selfinstruct.judge import Accept, Judge, Reject
from selfinstruct.prompts import render_block
from selfinstruct.records import AcceptedTask, Candidate, SeedTask

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
SEEDS = [
    SeedTask("seed-a", "a", "Explain how a rainbow forms after a summer storm.", (("", "Light refracts in drops."),)),
    SeedTask("seed-b", "b", "Suggest three names for a friendly bakery in a small town.", (("", "Crumbs, Rise, Loaf."),)),
]


def answer(*tasks: tuple[str, str, str], start: int = 1) -> str:
    return "".join(render_block(i, *t) for i, t in enumerate(tasks, start))


def make_judge(accepted: list[AcceptedTask] | None = None, *, threshold: float = 0.7, tokenizer: str = "rouge") -> Judge:
    return Judge(
        filters=FilterConfig(), threshold=threshold, tokenizer=tokenizer, seeds=SEEDS, accepted=accepted or [],
        next_task_number=len(accepted or []),
    )  # fmt: skip


def test_each_task_gets_one_decision_in_answer_order() -> None:
    judge = make_judge()
    text = answer(
        ("Describe the water cycle to a curious ten year old child.", "", "Water evaporates, condenses, falls."),
        ("Hi.", "", "Hello."),
        ("Explain how a rainbow forms after a summer storm.", "", "Copy of a seed."),
        ("Name two board games that a family of four can play.", "", "Chess and Ludo."),
    )
    verdict = judge.judge(text, finish_reason="stop", continuation_number=None, room=10)
    kinds = [(type(d).__name__, getattr(d, "reason", None)) for d in verdict.decisions]
    assert kinds == [("Accept", None), ("Reject", "too_short"), ("Reject", "near_duplicate"), ("Accept", None)]
    assert [d.id for d in verdict.accepted] == ["task-000000", "task-000001"]
    seed_copy = verdict.decisions[2]
    assert isinstance(seed_copy, Reject) and seed_copy.nearest_id == "seed-a" and seed_copy.rouge_l == 1.0


def test_scores_are_exactly_rouge_score_and_name_the_nearest() -> None:
    judge = make_judge()
    first = "Write a short poem about the sea at night for a child."
    second = "Write a short poem about autumn leaves for a child who loves colours."
    verdict = judge.judge(answer((first, "", "Waves hum."), (second, "", "Red, gold.")), finish_reason="stop",
                          continuation_number=None, room=10)  # fmt: skip
    accepted = verdict.accepted
    assert len(accepted) == 2
    assert accepted[1].nearest == first and accepted[1].nearest_id == accepted[0].id
    assert accepted[1].rouge_l == SCORER.score(first, second)["rougeL"].fmeasure


def test_a_near_copy_later_in_the_same_answer_is_rejected_against_the_earlier_one() -> None:
    judge = make_judge()
    base = "Give three practical tips for keeping houseplants alive in winter."
    verdict = judge.judge(answer((base, "", "Light, water less, humidity."), (base + " Be brief.", "", "Short.")),
                          finish_reason="stop", continuation_number=None, room=10)  # fmt: skip
    first, second = verdict.decisions
    assert isinstance(first, Accept) and isinstance(second, Reject)
    assert second.reason == "near_duplicate" and second.nearest_id == first.id
    assert second.rouge_l == SCORER.score(base, base + " Be brief.")["rougeL"].fmeasure


def test_room_limits_what_is_accepted_and_the_rest_is_surplus() -> None:
    judge = make_judge()
    tasks = [(f"List {w} facts about the planet Mars for a school poster.", "", "It is red.") for w in ("two", "seven", "nine")]
    tasks[1] = ("Compose a limerick about a cat who learns to play the piano.", "", "There once was a cat...")
    tasks[2] = ("Summarise the main causes of the French Revolution in a paragraph.", "", "Debt, hunger, ideas.")
    verdict = judge.judge(answer(*tasks), finish_reason="stop", continuation_number=None, room=2)
    assert len(verdict.accepted) == 2 and verdict.surplus == 1


def test_ids_continue_after_the_tasks_already_accepted() -> None:
    earlier = [AcceptedTask(id="task-000041", instruction="Translate good morning into Spanish and Italian.",
                            input="", output="Buenos días; buongiorno.", request=3)]  # fmt: skip
    judge = Judge(filters=FilterConfig(), threshold=0.7, tokenizer="rouge", seeds=SEEDS, accepted=earlier, next_task_number=42)
    verdict = judge.judge(answer(("Translate good morning into Spanish and Italian please.", "", "x"),
                                 ("Plan a three day hiking trip in the Scottish Highlands.", "", "Day 1...")),
                          finish_reason="stop", continuation_number=None, room=5)  # fmt: skip
    dup, new = verdict.decisions
    assert isinstance(dup, Reject) and dup.nearest_id == "task-000041"
    assert isinstance(new, Accept) and new.id == "task-000042"


def test_an_answer_with_no_task_is_one_unparseable_rejection() -> None:
    verdict = make_judge().judge("I'm sorry, I can't help.", finish_reason="stop", continuation_number=None, room=5)
    assert [(d.reason, d.candidate.output) for d in verdict.rejected] == [("unparseable", "I'm sorry, I can't help.")]


def test_a_task_cut_by_the_token_limit_is_counted_not_judged() -> None:
    text = answer(("Describe a sunrise over the desert in three sentences.", "", "The sky turns pink."),
                  ("Explain how compound interest works using an example.", "", "If you invest"))  # fmt: skip
    verdict = make_judge().judge(text, finish_reason="length", continuation_number=None, room=5)
    assert len(verdict.decisions) == 1 and verdict.incomplete == 1


@pytest.mark.parametrize("tokenizer", ["rouge", "unicode"])
def test_identical_non_english_instructions_are_caught_with_either_tokenizer(tokenizer: str) -> None:
    # The rouge tokenizer keeps only a-z and 0-9: Chinese text becomes no tokens, ROUGE-L 0.
    filters = FilterConfig(word_tokenizer="unicode", disabled=frozenset({"non_ascii_start"}))
    judge = Judge(filters=filters, threshold=0.7, tokenizer=tokenizer, seeds=SEEDS, accepted=[], next_task_number=0)
    chinese = "请用三句话介绍一下北京的历史和文化特点。"
    verdict = judge.judge(answer((chinese, "", "北京是一座古城。"), (chinese, "", "另一个回答。")),
                          finish_reason="stop", continuation_number=None, room=5)  # fmt: skip
    first, second = verdict.decisions
    assert isinstance(first, Accept)
    assert isinstance(second, Reject) and second.reason == "near_duplicate" and second.nearest_id == first.id
    assert verdict.untokenizable == (1 if tokenizer == "rouge" else 0)


@pytest.mark.parametrize("prepared", [False, True], ids=["postings", "decision-index"])
@pytest.mark.parametrize("here", ["never", "some", "always"])
def test_a_deciding_judge_and_a_nearest_filling_judge_give_the_same_verdicts(prepared: bool, here: str) -> None:
    # The split the judging process makes: one judge only decides, a replica of its pool fills in
    # the nearest of each accepted task (with the decision index built, from the decision's
    # runner-up). Together they must equal one judge doing both, also when the decider fills in
    # the nearest of some answers itself (nearest_here: the other process has fallen behind).
    whole, deciding, filling = make_judge(), make_judge(), make_judge()
    deciding.defer_nearest = True
    if prepared:
        filling.index.prepare(0.7)
    base = [
        "Write a short poem about the sea at night for a child.",
        "Write a short poem about autumn leaves for a child who loves colours.",
        "Give three practical tips for keeping houseplants alive in winter.",
        "Give three practical tips for keeping houseplants alive in winter. Be brief.",
        "Explain how a rainbow forms after a summer storm.",
        "Explain how a rainbow forms after a storm in summer, step by step.",
        "Name two board games that a family of four can play on a rainy day.",
    ]
    answers = [answer(*[(text, "", "Some answer.") for text in base[i : i + 3]]) for i in range(0, len(base), 2)]
    pending = hinted = filled_here = 0
    for n, text in enumerate(answers):
        deciding.nearest_here = here == "always" or (here == "some" and n % 3 == 0)
        expected = whole.judge(text, finish_reason="stop", continuation_number=None, room=10)
        decided = deciding.judge(text, finish_reason="stop", continuation_number=None, room=10)
        pending += sum(1 for d in decided.accepted if d.nearest_id is None)
        hinted += sum(1 for d in decided.accepted if d.runner_up is not None)
        if deciding.nearest_here:
            assert decided == expected  # complete already
            filled_here += len(decided.accepted)
        assert [type(d) for d in decided.decisions] == [type(d) for d in expected.decisions]
        assert decided.rejected == expected.rejected  # a near-duplicate's exact nearest is found either way
        assert filling.fill_nearest(decided) == expected
    assert len(whole.index) == len(deciding.index) == len(filling.index)
    assert (pending > 0 and hinted > 0) == (here != "always") and (filled_here > 0) == (here != "never")


@pytest.mark.parametrize("clash", [False, True], ids=["hashes", "every-hash-clashes"])
def test_exact_copies_are_caught_whatever_their_hashes(monkeypatch: pytest.MonkeyPatch, clash: bool) -> None:
    # Copies are found by the folded text's hash; a hash two texts share must not hide either.
    import selfinstruct.judge as judge_module

    if clash:
        monkeypatch.setattr(judge_module, "_fold_hash", lambda key: 7)
    earlier = [
        AcceptedTask(id="task-000000", instruction="Write a poem about the sea at dawn.", input="", output="o", request=0),
        AcceptedTask(id="custom-id", instruction="List five rivers of South America.", input="", output="o", request=0),
    ]
    judge = make_judge(earlier)
    for text, nearest_id in (("WRITE a poem  about the sea at dawn.", "task-000000"), ("list five rivers of south   America.", "custom-id")):
        decision = judge.decide(Candidate(instruction=text, input="", output="A poem."))
        assert isinstance(decision, Reject) and decision.detail == "the same instruction is already in the pool"
        assert decision.nearest_id == nearest_id
    fresh = judge.decide(Candidate(instruction="Describe a quiet forest after the rain.", input="", output="A story."))
    assert isinstance(fresh, Accept) and fresh.id == "task-000002"


def test_task_ids_give_back_every_id_and_keep_canonical_ones_as_numbers() -> None:
    from selfinstruct.judge import _TaskIds

    canonical = ["task-000000", "task-000123", "task-999999", "task-1000000", "task-12345678"]
    others = ["task-00123", "task-0001234", "task-0000000", "task-", "task-12a456", "task--00001", "task-+00001",
              "task-١٢٣٤٥٦", "task-１２３４５６", "task-²³⁴⁵⁶⁷", "task-123456 ", " task-123456", "Task-000001",
              "task-1_000_000", "seed-a", ""]  # fmt: skip
    ids = _TaskIds()
    ids.extend(canonical + others)
    assert [ids[i] for i in range(len(ids))] == canonical + others
    assert list(ids._numbers) == [0, 123, 999999, 1000000, 12345678] + [-1] * len(others)
