"""The accepted set is exactly what a brute-force ``rouge_score`` filter accepts.

The reference below scores every candidate against every seed and every task accepted before
it with ``rouge_score`` itself (its tokenizer, its LCS, its F-measure) and keeps the candidate
when no score is above the threshold. The only other rules are the ones the judge applies
before similarity: the length/keyword filters (``check_candidate``, the same function) and the
exact-copy rule (case and spacing folded), which matters only for text the ROUGE tokenizer
reduces to nothing. The candidate streams mix fresh instructions with near copies of earlier
candidates (accepted or not), of seeds and of tasks earlier in the same answer, so scores fall
on both sides of 0.7 and ties at it occur.

Two paths are checked: the :class:`Judge` alone (answers fed in order, a resume from the records
midway, default and tiny index budgets), and a real ``selfinstruct generate`` run at concurrency
1 against the fake server, whose emitted tasks are the candidate stream.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from conftest import generate_args, lines, run_cli
from fake_openai import FakeOpenAI, Reply, RequestContext
from selfinstruct import similarity
from selfinstruct.filters import FilterConfig, check_candidate
from selfinstruct.judge import Accept, Judge, Reject
from selfinstruct.records import AcceptedTask, Candidate
from selfinstruct.seeds import load_seed_tasks

THRESHOLD = 0.7
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
SEED_TASKS = load_seed_tasks()
SEEDS = [s.instruction for s in SEED_TASKS]

# -- a candidate stream with near-duplicates --------------------------------------------------

FRAMES = [
    "Write a short poem about {}.", "Generate a list of five {}.", "Explain how {} works to a beginner.",
    "Describe {} in three sentences.", "Give two examples of {}.", "Summarize the history of {}.",
    "Suggest some ways to improve {}.", "Compare {} with {}.", "Classify the following {} as useful or not.",
    "Create a slogan for {}.", "Tell a story about {} and {}.", "What are the benefits of {}?",
]  # fmt: skip
WORDS = """garden river winter coffee bicycle library market teacher island harbour volcano
    forest kitchen bridge festival letter museum planet robot violin castle desert ocean village
    cloud mountain train recipe holiday neighbour lantern meadow orchard storm candle engine
    quiet bright old small busy ancient friendly local modern simple healthy careful""".split()
FILLERS = ["the", "a", "very", "some", "new", "and", "of", "for", "children", "please", "today"]


def fresh(rng: random.Random) -> str:
    frame = rng.choice(FRAMES)
    topics = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(frame.count("{}"))]
    return frame.format(*topics)


def edit(rng: random.Random, text: str, edits: int) -> str:
    """``text`` with a few word-level edits; the first word is kept (the filters check it)."""
    words = text.split()
    for _ in range(edits):
        if len(words) < 3:
            break
        i = rng.randrange(1, len(words))
        op = rng.random()
        if op < 0.4:
            words[i] = rng.choice(WORDS + FILLERS)
        elif op < 0.7:
            words.insert(i, rng.choice(FILLERS + WORDS))
        else:
            del words[i]
    return " ".join(words)


class Stream:
    """Deterministic candidates: fresh ones, near copies of earlier candidates and seeds, exact
    copies with other case and spacing, a few that fail the filters."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.history: list[str] = []

    def instruction(self, answer: Sequence[str]) -> str:
        rng, r = self.rng, self.rng.random()
        earlier = self.history + list(answer)
        if r < 0.35 or not earlier:
            text = fresh(rng)
        elif r < 0.75:
            text = edit(rng, rng.choice(earlier[-40:] if rng.random() < 0.7 else earlier), rng.randint(0, 4))
        elif r < 0.85:
            text = edit(rng, rng.choice(SEEDS), rng.randint(0, 3))
        elif r < 0.9 and answer:
            text = edit(rng, answer[-1], rng.randint(1, 2))  # near copy within the same answer
        elif r < 0.95:
            text = "  ".join(rng.choice(earlier).upper().split(" "))  # an exact copy, folded
        else:
            text = " ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(1, 3)))  # too short
        return text

    def answer(self, k: int) -> list[tuple[str, str, str]]:
        instructions: list[str] = []
        for _ in range(k):
            instructions.append(self.instruction(instructions))
        self.history += instructions
        return [(i, "", f"An answer to: {i.lower()}") for i in instructions]


# -- the reference ----------------------------------------------------------------------------


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def _tokens(text: str) -> list[str]:
    return SCORER._tokenizer.tokenize(text)


@dataclass
class Expected:
    verdict: str  # "accept", "near_duplicate", or a filter's reason
    score: float | None = None  # the maximum F over the pool at that point
    nearest: int | None = None  # its first position in the pool (seeds, then accepted)


def brute_force(candidates: Sequence[tuple[str, str, str]], room: int | None = None,
                seeds: Sequence[str] = SEEDS) -> tuple[list[str], list[Expected]]:  # fmt: skip
    """Accepted instructions and a verdict per candidate, by rouge_score against the whole pool.

    ``rouge_scorer._score_lcs`` is what ``RougeScorer.score`` calls after tokenizing; calling it
    on tokens kept from the first tokenization just avoids tokenizing every pool text again.
    """
    pool = list(seeds)
    pool_tokens = [_tokens(p) for p in pool]
    folded = {_fold(p) for p in pool}
    accepted: list[str] = []
    verdicts: list[Expected] = []
    for instruction, input_, output in candidates:
        if room is not None and len(accepted) >= room:
            break
        failed = check_candidate(Candidate(instruction, input_, output))
        if failed:
            verdicts.append(Expected(failed[0]))
            continue
        tokens = _tokens(instruction)
        scores = [rouge_scorer._score_lcs(p, tokens).fmeasure for p in pool_tokens]
        best = max(scores)
        where = scores.index(best) if best > 0 else None
        if _fold(instruction) in folded:
            first = next(i for i, p in enumerate(pool) if _fold(p) == _fold(instruction))
            verdicts.append(Expected("near_duplicate", 1.0, first))
        elif best > THRESHOLD:
            verdicts.append(Expected("near_duplicate", best, where))
        else:
            verdicts.append(Expected("accept", best if where is not None else 0.0, where))
            pool.append(instruction)
            pool_tokens.append(tokens)
            folded.add(_fold(instruction))
            accepted.append(instruction)
    return accepted, verdicts


def test_reference_scores_are_rouge_scores() -> None:
    a, b = "Write a short poem about the old harbour.", "Write a poem about the harbour at night!"
    assert rouge_scorer._score_lcs(_tokens(a), _tokens(b)).fmeasure == SCORER.score(a, b)["rougeL"].fmeasure


# -- the judge alone --------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_budgets() -> Iterator[None]:
    """Index constants small enough that a few hundred texts go through every pruning stage
    (merges, re-snapshots of the key order, the capped length bucket, seeded probes)."""
    names = {"_SEED_POSTINGS": 2, "_SEED_TOP": 2, "_SCORE_DIRECTLY": 3, "_PEEK": 2, "_FIRST_CHUNK": 1,
             "_EXTEND_BATCH": 7, "_TAIL_MIN": 2, "_SMALL_RUN": 3, "_SNAPSHOT_MIN": 4, "_RESNAPSHOT": 2,
             "_N_COMMON": 3, "_M_CAP": 6, "_OVERLAP_MIN": 1, "_VERIFY_CHUNK": 1, "_SEED_HITS": 2,
             "_SEED_SAMPLE": 2, "_BUILD_CHUNK": 5, "_RUNNERS_UP": 1}  # fmt: skip
    names = {k: v for k, v in names.items() if hasattr(similarity, k)}  # the constants this index has
    saved = {k: getattr(similarity, k) for k in names}
    try:
        for k, v in names.items():
            setattr(similarity, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(similarity, k, v)


def new_judge(accepted: Sequence[AcceptedTask] = ()) -> Judge:
    return Judge(filters=FilterConfig(), threshold=THRESHOLD, tokenizer="rouge", seeds=SEED_TASKS,
                 accepted=accepted, next_task_number=len(accepted))  # fmt: skip


def check_decisions(decisions: Sequence[Accept | Reject], expected: Sequence[Expected],
                    pool_ids: list[str], pool_texts: list[str]) -> None:  # fmt: skip
    """Each decision against the reference; grows ``pool_ids``/``pool_texts`` as the judge does."""
    assert len(decisions) == len(expected)
    for d, want in zip(decisions, expected, strict=True):
        if want.verdict == "accept":
            assert isinstance(d, Accept), (d, want)
        else:
            assert isinstance(d, Reject) and d.reason == want.verdict, (d, want)
        if want.score is None:
            continue
        # The recorded score is the exact maximum and names its first pool text.
        assert d.rouge_l == want.score
        if want.nearest is None:
            assert d.nearest_id is None and d.nearest in ("", None)
        else:
            assert (d.nearest_id, d.nearest) == (pool_ids[want.nearest], pool_texts[want.nearest])
        if isinstance(d, Accept):
            pool_ids.append(d.id)
            pool_texts.append(d.candidate.instruction)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("tiny", [False, True], ids=["default", "tiny-budgets"])
def test_judge_accepts_exactly_what_brute_force_accepts(seed: int, tiny: bool) -> None:
    stream = Stream(seed)
    answers = [stream.answer(random.Random(seed * 100 + k).randint(1, 12)) for k in range(40)]
    candidates = [c for a in answers for c in a]
    want_accepted, want = brute_force(candidates)
    assert 40 < len(want_accepted) < len(candidates) - 40  # both sides of the threshold are hit
    assert sum(w.verdict == "near_duplicate" and w.score == 1.0 for w in want) > 5
    with tiny_budgets() if tiny else contextlib.nullcontext():
        judge = new_judge()
        pool_ids = [s.id for s in SEED_TASKS]
        pool_texts = list(SEEDS)
        decisions: list[Accept | Reject] = []
        records: list[AcceptedTask] = []
        for k, answer in enumerate(answers):
            if k == len(answers) // 2:
                # Resume: a new judge built from the records so far must continue identically.
                judge = new_judge(records)
            verdict = judge.judge_candidates([Candidate(*t) for t in answer], room=len(answer))
            decisions += verdict.decisions
            records += [AcceptedTask(id=a.id, instruction=a.candidate.instruction, input="", output=a.candidate.output,
                                     request=k) for a in verdict.accepted]  # fmt: skip
    assert [d.candidate.instruction for d in decisions if isinstance(d, Accept)] == want_accepted
    check_decisions(decisions, want, pool_ids, pool_texts)


# -- a real run -------------------------------------------------------------------------------


def test_a_deterministic_run_accepts_exactly_what_brute_force_accepts(tmp_path: Path) -> None:
    target = 90
    stream = Stream(5)

    def handler(ctx: RequestContext) -> Reply:
        return Reply.tasks(stream.answer(random.Random(ctx.number).randint(4, 12)))

    with FakeOpenAI() as server:
        server.set_handler(handler)
        out = tmp_path / "run"
        result = run_cli(*generate_args(out, server, target, "--concurrency", "1"))
        assert result.returncode == 0, result.stderr
        emitted = list(server.emitted)  # at concurrency 1: the candidates in the order judged
    want_accepted, want = brute_force(emitted, room=target)
    accepted = lines(out / "instructions.jsonl")
    assert [r["instruction"] for r in accepted] == want_accepted
    assert len(want_accepted) == target
    # Every candidate judged is on record once, with the reference's verdict and scores.
    rejected = lines(out / "rejected.jsonl")
    by_text = {r["instruction"]: r for r in accepted}
    pool = list(SEEDS) + want_accepted
    n_rejected = 0
    for (instruction, _, _), w in zip(emitted, want, strict=False):
        if w.verdict == "accept":
            record = by_text[instruction]
            assert record["rouge_l"] == w.score
            assert record["most_similar_instruction"] == (pool[w.nearest] if w.nearest is not None else "")
            continue
        record = rejected[n_rejected]
        n_rejected += 1
        assert (record["instruction"], record["reason"]) == (instruction, w.verdict)
        if w.score is not None:
            assert record["rouge_l"] == w.score
            assert record["most_similar_instruction"] == pool[w.nearest]
    assert n_rejected == len(rejected)
    assert sum(w.verdict == "near_duplicate" for w in want) > 20
