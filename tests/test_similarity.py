"""Tests for selfinstruct.similarity: exactness against rouge-score, pruning, unicode tokenizer.

The reference everywhere is rouge-score itself (its tokenizer and its pure-Python LCS table),
never our own code, and scores are compared with ``==``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from selfinstruct import similarity
from selfinstruct.errors import ConfigError
from selfinstruct.similarity import RougeLIndex, rouge_l, tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


class _UnicodeTok:
    """rouge-score tokenizer plug-in using our unicode tokenizer (rouge-score does the LCS)."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, "unicode")


UNICODE_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_UnicodeTok())


def ref_score(a: str, b: str, tokenizer: str = "rouge") -> float:
    scorer = SCORER if tokenizer == "rouge" else UNICODE_SCORER
    return scorer.score(a, b)["rougeL"].fmeasure


def brute_nearest(
    pool: Sequence[str], query: str, tokenizer: str = "rouge"
) -> tuple[float, int | None]:
    scores = [ref_score(p, query, tokenizer) for p in pool]
    if not scores or max(scores) == 0:
        return 0.0, None
    best = max(scores)
    return best, scores.index(best)  # index() = smallest id among ties


@contextlib.contextmanager
def tiny_budgets() -> Iterator[None]:
    """Shrink the search constants so that small pools go through every pruning stage."""
    names = {"_SEED_POSTINGS": 2, "_SEED_TOP": 2, "_SCORE_DIRECTLY": 3, "_PEEK": 2,
             "_FIRST_CHUNK": 1, "_EXTEND_BATCH": 7}  # fmt: skip
    saved = {k: getattr(similarity, k) for k in names}
    for k, v in names.items():
        setattr(similarity, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(similarity, k, v)


class TupleIndex(RougeLIndex):
    """Forces the tuple-of-ints representation used once token ids pass the code point range."""

    _char_limit = 3


def build(pool: Sequence[str], split: int, cls: type[RougeLIndex] = RougeLIndex,
          tokenizer: str = "rouge") -> RougeLIndex:  # fmt: skip
    """Index built with extend() for the first ``split`` texts and add() for the rest."""
    idx = cls(tokenizer)
    split = min(split, len(pool))
    assert idx.extend(pool[:split]) == list(range(split))
    for i, text in enumerate(pool[split:], start=split):
        assert idx.add(text) == i
    return idx


# -- strategies ------------------------------------------------------------------------------

WORDS = ["a", "A", "the", "The", "cat", "CAT", "cats", "dog", "x1", "42", "4", "2", "b", "on",
         "mat", "sat", "café", "naïve", "straße", "İ", "\u212a", "中", "文字", "Москва",
         "é"]  # fmt: skip
SEPS = [" ", " ", " ", "  ", ", ", ". ", "-", "_", "'", "!", "\n", "\t", "é", "\u00a0", "…"]


@st.composite
def texts(draw: st.DrawFn, max_words: int = 12) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=30))  # arbitrary Unicode
    n = draw(st.integers(0, max_words))
    out = []
    for _ in range(n):
        out.append(draw(st.sampled_from(WORDS)))
        out.append(draw(st.sampled_from(SEPS)))
    return "".join(out)


POOLS = st.lists(texts(), max_size=25)
QUERIES = st.lists(texts(), min_size=1, max_size=6)
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- tokenizer and single pair ---------------------------------------------------------------


@HYP
@given(st.one_of(texts(), st.text()))
def test_rouge_tokenizer_is_rouge_scores(text: str) -> None:
    assert tokenize(text) == rouge_tokenize.tokenize(text, None)


@pytest.mark.parametrize("text", ["İstanbul", "\u212a", "ÀB c", "x²", "Ⅻ", "ｆｕｌｌ", "a\u0301b"])
def test_rouge_tokenizer_non_ascii_cases(text: str) -> None:
    assert tokenize(text) == rouge_tokenize.tokenize(text, None)


@HYP
@given(texts(), texts())
def test_rouge_l_equals_rouge_score(a: str, b: str) -> None:
    assert rouge_l(a, b) == ref_score(a, b)
    assert rouge_l(b, a) == rouge_l(a, b)
    assert rouge_l(a, b, "unicode") == ref_score(a, b, "unicode")


def test_rouge_l_known_values() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("the cat", "dog") == 0.0
    assert rouge_l("", "") == 0.0
    # LCS "the cat mat": 3 of the 3 query tokens and of the 6 target tokens
    a, b = "the cat sat on the mat", "The CAT, mat!"
    assert rouge_l(a, b) == 2 * 1.0 * 0.5 / 1.5 == ref_score(a, b)


def test_unknown_tokenizer_is_config_error() -> None:
    for call in (lambda: RougeLIndex("words"), lambda: rouge_l("a", "a", "words"),
                 lambda: tokenize("a", "words")):  # fmt: skip
        with pytest.raises(ConfigError) as exc:
            call()
        assert "'rouge'" in str(exc.value) and "'unicode'" in str(exc.value)
        assert "'words'" in str(exc.value)


# -- nearest against brute force -------------------------------------------------------------


@HYP
@given(POOLS, QUERIES, st.integers(0, 25))
def test_nearest_is_exact(pool: list[str], queries: list[str], split: int) -> None:
    idx = build(pool, split)
    for q in queries:
        assert idx.nearest(q) == brute_nearest(pool, q)


@HYP
@given(POOLS, QUERIES, st.integers(0, 25))
def test_nearest_is_exact_through_every_pruning_stage(
    pool: list[str], queries: list[str], split: int
) -> None:
    with tiny_budgets():
        idx = build(pool, split)
        for q in queries:
            assert idx.nearest(q) == brute_nearest(pool, q)


@settings(max_examples=60, deadline=None)
@given(POOLS, QUERIES, st.integers(0, 25))
def test_nearest_is_exact_with_tuple_sequences(
    pool: list[str], queries: list[str], split: int
) -> None:
    idx = build(pool, split, cls=TupleIndex)
    for q in queries:
        assert idx.nearest(q) == brute_nearest(pool, q)


@settings(max_examples=60, deadline=None)
@given(POOLS, QUERIES)
def test_unicode_nearest_matches_rouge_score_with_same_tokenizer(
    pool: list[str], queries: list[str]
) -> None:
    with tiny_budgets():
        idx = build(pool, len(pool) // 2, tokenizer="unicode")
        for q in queries:
            assert idx.nearest(q) == brute_nearest(pool, q, "unicode")


@HYP
@given(POOLS, texts())
def test_returned_id_achieves_the_score(pool: list[str], query: str) -> None:
    idx = build(pool, len(pool))
    score, i = idx.nearest(query)
    if i is None:
        assert score == 0.0
    else:
        assert ref_score(idx.text(i), query) == score
        assert all(ref_score(p, query) < score for p in pool[:i])


def test_ties_go_to_the_smallest_id() -> None:
    idx = RougeLIndex()
    idx.extend(["dog bites man", "the cat sat", "man bites dog", "THE CAT SAT!", "the cat sat"])
    assert idx.nearest("the cat sat") == (1.0, 1)
    # equal F from different texts: "x y" and "y z" both share one token with "y q"
    idx = RougeLIndex()
    idx.extend(["a b c d", "x y", "y z"])
    assert idx.nearest("y q") == (ref_score("x y", "y q"), 1)


# -- empty and no-overlap cases, ids, len, text ----------------------------------------------


def test_empty_pool_and_no_shared_token() -> None:
    idx = RougeLIndex()
    assert len(idx) == 0
    assert idx.nearest("anything at all") == (0.0, None)
    idx.extend(["", "!!!", "the cat sat"])
    assert idx.nearest("a dog barked") == (0.0, None)
    assert idx.nearest("") == (0.0, None)
    assert idx.nearest("?? --") == (0.0, None)
    assert idx.nearest("中文") == (0.0, None)  # rouge tokenizer drops it entirely
    assert idx.nearest("cat") == (ref_score("the cat sat", "cat"), 2)


def test_add_extend_len_text() -> None:
    idx = RougeLIndex()
    assert idx.tokenizer == "rouge"
    assert idx.add("first one") == 0
    assert idx.extend(["second", "", "fourth text"]) == [1, 2, 3]
    assert idx.extend([]) == []
    assert idx.extend(t for t in ["fifth"]) == [4]  # any iterable
    assert idx.add("sixth") == 5
    assert len(idx) == 6
    assert [idx.text(i) for i in range(6)] == ["first one", "second", "", "fourth text", "fifth",
                                               "sixth"]  # fmt: skip
    for bad in (-1, 6):
        with pytest.raises(IndexError):
            idx.text(bad)
    assert idx.nearest("fourth") == (ref_score("fourth text", "fourth"), 3)


def test_extend_keeps_the_texts_added_before_a_bad_item() -> None:
    idx = RougeLIndex()
    with pytest.raises(AttributeError):
        idx.extend(["the cat sat", "a dog ran", None])  # type: ignore[list-item]
    assert len(idx) == 2
    assert idx.nearest("a dog ran") == (1.0, 1)
    assert idx.add("the cat sat") == 2


def test_extend_and_add_build_the_same_index() -> None:
    rng = random.Random(3)
    pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 15))) for _ in range(300)]
    queries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 15))) for _ in range(40)]
    a, b = build(pool, len(pool)), build(pool, 0)
    with tiny_budgets():
        for q in queries:
            assert a.nearest(q) == b.nearest(q) == brute_nearest(pool, q)


# -- unicode tokenizer -----------------------------------------------------------------------


def test_unicode_tokens() -> None:
    assert tokenize("Ünïcode STRASSE café", "unicode") == ["ünïcode", "strasse", "café"]
    assert tokenize("东京是首都。", "unicode") == ["东", "京", "是", "首", "都"]
    assert tokenize("カタカナとひらがな", "unicode") == list("カタカナとひらがな")
    assert tokenize("서울은 수도", "unicode") == ["서", "울", "은", "수", "도"]
    assert tokenize("Москва-река foo_bar x2", "unicode") == ["москва", "река", "foo", "bar", "x2"]
    assert tokenize("हिन्दी पाठ", "unicode") == ["हिन्दी", "पाठ"]  # marks stay inside words
    assert tokenize("cafe\u0301 ＡＢＣ", "unicode") == ["café", "abc"]  # NFKC
    assert tokenize("", "unicode") == []
    # for comparison: rouge-score cuts accented words apart
    assert tokenize("Un résumé", "rouge") == ["un", "r", "sum"]


NEAR_DUPLICATES = [
    ("请写一首关于春天的短诗。", "请写一首关于春天的诗。"),
    ("Как приготовить борщ дома?", "Как приготовить вкусный борщ дома?"),
    ("Écrivez un résumé de l'article.", "Écrivez un court résumé de l'article."),
    ("日本の首都はどこですか？", "日本の首都はどこでしょうか？"),
    ("한국의 수도는 어디입니까?", "한국의 수도는 어디인가요?"),
]  # fmt: skip


@pytest.mark.parametrize(("a", "b"), NEAR_DUPLICATES)
def test_unicode_near_duplicates_score_high(a: str, b: str) -> None:
    assert rouge_l(a, b, "unicode") >= 0.7
    assert rouge_l(a, a, "unicode") == 1.0
    assert rouge_l(a, b, "unicode") == ref_score(a, b, "unicode")
    if not any(c.isascii() and c.isalpha() for c in a):
        assert rouge_l(a, b) == 0.0  # what the rouge tokenizer misses
    idx = RougeLIndex("unicode")
    idx.extend(["Translate the sentence into English.", a, "Что такое борщ?"])
    score, i = idx.nearest(b)
    assert i == 1 and score == rouge_l(a, b, "unicode")
    assert idx.nearest(a) == (1.0, 1)


def test_rouge_tokenizer_ignores_non_latin_text() -> None:
    idx = RougeLIndex()
    idx.add("请写一首关于春天的短诗")
    idx.add("Как приготовить борщ")
    assert idx.nearest("请写一首关于春天的短诗") == (0.0, None)
    assert idx.nearest("Как приготовить борщ") == (0.0, None)


# -- larger pools: realistic frequency skew, so pruning really prunes ------------------------


def zipf_pool(rng: random.Random, n: int) -> list[str]:
    vocab = [f"w{i}" for i in range(800)] + ["the", "a", "of", "to", "and", "in", "is"]
    weights = [1 / (r + 1) for r in range(len(vocab))][::-1]  # stopwords most frequent
    out = []
    for _ in range(n):
        words = rng.choices(vocab, weights=weights, k=rng.randint(3, 30))
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ""]))
    return out


def edited(rng: random.Random, text: str, edits: int) -> str:
    words = text.split()
    for _ in range(edits):
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.4:
            words[i] = f"w{rng.randrange(800)}"
        elif op < 0.7 and len(words) > 1:
            del words[i]
        else:
            words.insert(i, "the")
    return " ".join(words)


@pytest.mark.parametrize("tiny", [False, True], ids=["default", "tiny-budgets"])
def test_large_pool_is_exact(tiny: bool) -> None:
    rng = random.Random(11 + tiny)
    pool = zipf_pool(rng, 3000)
    pool += [edited(rng, rng.choice(pool), rng.randint(0, 4)) for _ in range(200)]  # near-dups
    queries = zipf_pool(rng, 12) + [
        edited(rng, rng.choice(pool), rng.randint(0, 6)) for _ in range(12)
    ]
    with tiny_budgets() if tiny else contextlib.nullcontext():
        idx = build(pool, 2000)
        for q in queries:
            assert idx.nearest(q) == brute_nearest(pool, q)


def test_large_pool_interleaved_add_and_query() -> None:
    # The generation loop: query a candidate, add it if it is new enough, repeat.
    rng = random.Random(5)
    base = zipf_pool(rng, 1500)
    idx = RougeLIndex()
    idx.extend(base)
    kept = list(base)
    for _ in range(15):
        cand = edited(rng, rng.choice(kept), rng.randint(0, 5))
        assert idx.nearest(cand) == brute_nearest(kept, cand)
        if idx.nearest(cand)[0] < 0.7:
            assert idx.add(cand) == len(kept)
            kept.append(cand)
