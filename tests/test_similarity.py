"""Tests for selfinstruct.similarity: exactness against rouge-score, pruning, unicode tokenizer.

The reference everywhere is rouge-score itself (its tokenizer and its pure-Python LCS table),
never our own code, and scores are compared with ``==``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from selfinstruct import similarity
from selfinstruct.errors import ConfigError
from selfinstruct.similarity import RougeLIndex, rouge_l, tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@pytest.fixture(autouse=True, scope="module", params=["native", "native+index", "numpy"])
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs three ways: the native kernel wherever it applies, the native kernel with
    every decision and nearest search sent through the decision index (what large pools do), and
    numpy alone (an install without a C compiler)."""
    saved = (RougeLIndex._native, similarity._NATIVE_SCAN_MAX, similarity._NATIVE_FLAT_SCAN_MAX,
             similarity._NATIVE_NEAREST_MAX)  # fmt: skip
    if request.param == "numpy":
        RougeLIndex._native = None
    elif RougeLIndex._native is None:
        pytest.skip("the native kernel is not built (no C compiler at install time)")
    if request.param == "native+index":
        similarity._NATIVE_SCAN_MAX = similarity._NATIVE_FLAT_SCAN_MAX = similarity._NATIVE_NEAREST_MAX = -1
    try:
        yield request.param
    finally:
        (RougeLIndex._native, similarity._NATIVE_SCAN_MAX, similarity._NATIVE_FLAT_SCAN_MAX,
         similarity._NATIVE_NEAREST_MAX) = saved  # fmt: skip


def test_the_native_kernel_is_built_in_ci() -> None:
    """CI must exercise the native kernel: the install there has a compiler."""
    if os.environ.get("CI") != "true":
        pytest.skip("only checked in CI")
    assert similarity._native_overlap is not None


def test_the_native_kernel_verifies_through_rapidfuzz_in_ci() -> None:
    """CI must exercise the native verification too: the installed rapidfuzz publishes the scorer
    interface (version 3) it calls."""
    if os.environ.get("CI") != "true":
        pytest.skip("only checked in CI")
    assert similarity._NATIVE_LCS


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
    """Shrink the search constants so that small pools go through every pruning stage.

    Besides nearest()'s budgets: postings tails and prefix runs merge after a few entries, the
    key order is re-snapshotted as the pool doubles, only 3 keys count as common (so the rare
    key bound is used), texts of 6+ tokens share the capped length bucket, the exact-overlap
    filter and the seed check run with 1-2 candidates, and builds work in tiny chunks.
    """
    names = {"_SEED_POSTINGS": 2, "_SEED_TOP": 2, "_SCORE_DIRECTLY": 3, "_PEEK": 2,
             "_FIRST_CHUNK": 1, "_EXTEND_BATCH": 7, "_TAIL_MIN": 2, "_SMALL_RUN": 3,
             "_SNAPSHOT_MIN": 4, "_RESNAPSHOT": 2, "_N_COMMON": 3, "_M_CAP": 6,
             "_OVERLAP_MIN": 1, "_VERIFY_CHUNK": 1, "_SEED_HITS": 2, "_SEED_SAMPLE": 2,
             "_BUILD_CHUNK": 5, "_NATIVE_SEED_TOP": 2, "_NATIVE_PREFIX_X": 1}  # fmt: skip
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


def test_the_common_keys_bitsets_follow_the_postings_as_the_pool_grows(kernel: str, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:  # fmt: skip
    if kernel == "numpy":  # they serve the native kernel only: no memory for them without it
        idx = build([f"the cat {i}" for i in range(600)], 100)
        assert idx._full.bitsets is None and idx.nearest("the cat 7") == (1.0, 7)
        return
    # Early texts repeat "early" (a row, later dropped as it grows rare); "late" becomes common
    # only later (a row from then on); merges every few texts set the bits of each new text.
    monkeypatch.setattr(similarity, "_TAIL_MIN", 8)
    rng = random.Random(5)
    pool = [" ".join(["early" if i < 5 else "late" if i > 200 and rng.random() < 0.5 else rng.choice(WORDS),
                      *(rng.choice(WORDS) + str(rng.randint(0, 60)) for _ in range(rng.choice((1, 4, 9, 30, 45))))])
            for i in range(700)]  # fmt: skip  (past the first width of the rows: a resize)
    idx = RougeLIndex()
    idx.extend(pool[:30])
    seen = {}
    for i, text in enumerate(pool[30:], start=30):
        idx.add(text)
        bitsets = idx._full.bitsets
        assert bitsets is not None
        for word in ("early", "late"):
            if word in idx._vocab:
                seen.setdefault(word, set()).add(idx._vocab[word] in bitsets.row_of)
        if i % 37 == 0 or i == len(pool) - 1:
            cover, df = bitsets.cover, idx._df.a
            for key in range(idx._n_keys):
                has = key in bitsets.row_of
                if df[key] * similarity._BITSET_SHARE > cover and idx._full.get(key)[-1:].tolist() < [cover]:
                    assert has  # common at the last merge (no postings since)
                if has:
                    bits = np.unpackbits(bitsets.row_of[key], bitorder="little")[:cover]
                    assert np.flatnonzero(bits).tolist() == [d for d in idx._full.get(key).tolist() if d < cover]
            # The length classes' rows: each text below the cover in the row of its length's class.
            classes = np.searchsorted(similarity._LENGTH_CLASSES, idx._lens.a[:cover], side="right") - 1
            for c, row in enumerate(bitsets.lengths):
                bits = np.unpackbits(row, bitorder="little")
                assert np.flatnonzero(bits).tolist() == np.flatnonzero(classes == c).tolist()
    assert seen == {"early": {True, False}, "late": {False, True}}


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


# -- the decision: first_above / decide against brute force ----------------------------------

# Thresholds around the ones used in practice, 0 and 1, and fractions that real scores hit
# exactly (F = 2l/(m+n): 2/3 for l=2, m+n=6; 0.5; 0.75; 0.8): ties at the threshold are common.
THRESHOLDS = st.sampled_from([0.0, 0.3, 0.5, 0.6, 2 / 3, 0.7, 0.75, 0.8, 0.9, 1.0])


def brute_decision(pool: Sequence[str], query: str, t: float,
                   tokenizer: str = "rouge") -> tuple[bool, float, int | None]:  # fmt: skip
    scores = [ref_score(p, query, tokenizer) for p in pool]
    best, i = brute_nearest(pool, query, tokenizer)
    return any(s > t for s in scores), best, i


def check_decision(idx: RougeLIndex, pool: Sequence[str], q: str, t: float,
                   tokenizer: str = "rouge") -> None:  # fmt: skip
    dup, best, i = brute_decision(pool, q, t, tokenizer)
    assert idx.decide(q, t) == (dup, best, i)
    hit = idx.first_above(q, t)
    assert (hit is not None) == dup
    if hit is not None:
        score, j = hit
        assert score > t and ref_score(pool[j], q, tokenizer) == score
    assert idx.max_above(q, t) == ((best, i) if dup else None)


@st.composite
def threshold_with_ties(draw: st.DrawFn, pool: Sequence[str], query: str) -> float:
    """A listed threshold, or exactly the score of some pool text (a tie at the threshold)."""
    if pool and draw(st.booleans()):
        return ref_score(draw(st.sampled_from(list(pool))), query)
    return draw(THRESHOLDS)


@HYP
@given(POOLS, QUERIES, st.integers(0, 25), st.data())
def test_decision_is_exact(pool: list[str], queries: list[str], split: int,
                           data: st.DataObject) -> None:  # fmt: skip
    idx = build(pool, split)
    for q in queries:
        check_decision(idx, pool, q, data.draw(threshold_with_ties(pool, q)))


@HYP
@given(POOLS, QUERIES, st.integers(0, 25), st.data(), st.booleans())
def test_nearest_on_a_copy_from_the_runner_up_is_exact(pool: list[str], queries: list[str], split: int,
                                                        data: st.DataObject, tiny: bool) -> None:  # fmt: skip
    # The judging process's split: one index decides (max_above), an identical one (another
    # process) computes the nearest of an accepted text from the decision's runner-up.
    with tiny_budgets() if tiny else contextlib.nullcontext():
        deciding, filling = build(pool, split), build(pool, split)
        for q in queries:
            t = data.draw(threshold_with_ties(pool, q))
            if t >= 1.0:
                continue
            filling.prepare(t)
            if deciding.max_above(q, t) is None:
                runner_up = deciding.runner_up(q)
                assert filling.nearest(q, runner_up=runner_up) == brute_nearest(pool, q)


@HYP
@given(POOLS, POOLS, QUERIES, st.data())
def test_decision_is_exact_through_every_stage_while_the_pool_grows(
    first: list[str], later: list[str], queries: list[str], data: st.DataObject
) -> None:
    # The decision index is built on the first query, then kept up to date by add(): runs
    # merge, the order is re-snapshotted, the capped length bucket and the seed check are hit.
    with tiny_budgets():
        idx = build(first, len(first) // 2)
        pool = list(first)
        for q in queries[:2]:
            check_decision(idx, pool, q, data.draw(threshold_with_ties(pool, q)))
        while later:
            # add() one text, or extend() by a batch: small ones go through the tails, large
            # ones (>= 1/8 of the pool) rebuild the postings and the decision index in bulk.
            k = data.draw(st.integers(0, len(later)))
            if k == 0:
                assert idx.add(later[0]) == len(pool)
                k = 1
            else:
                assert idx.extend(later[:k]) == list(range(len(pool), len(pool) + k))
            pool += later[:k]
            later = later[k:]
            q = data.draw(st.sampled_from(queries))
            check_decision(idx, pool, q, data.draw(threshold_with_ties(pool, q)))


@settings(max_examples=60, deadline=None)
@given(POOLS, QUERIES, st.data())
def test_decision_is_exact_with_tuple_sequences(pool: list[str], queries: list[str],
                                                data: st.DataObject) -> None:  # fmt: skip
    with tiny_budgets():
        idx = build(pool, len(pool) // 2, cls=TupleIndex)
        for q in queries:
            check_decision(idx, pool, q, data.draw(THRESHOLDS))


@settings(max_examples=60, deadline=None)
@given(POOLS, QUERIES, st.data())
def test_unicode_decision_matches_rouge_score_with_same_tokenizer(
    pool: list[str], queries: list[str], data: st.DataObject
) -> None:
    with tiny_budgets():
        idx = build(pool, len(pool) // 2, tokenizer="unicode")
        for q in queries:
            check_decision(idx, pool, q, data.draw(THRESHOLDS), "unicode")


@HYP
@given(POOLS, texts(), st.integers(0, 26))
def test_nearest_before_sees_only_the_earlier_texts(pool: list[str], query: str,
                                                    before: int) -> None:  # fmt: skip
    with tiny_budgets():
        idx = build(pool, len(pool))
        assert idx.nearest(query, before=before) == brute_nearest(pool[:before], query)


@HYP
@given(POOLS, QUERIES, st.integers(0, 26), THRESHOLDS, st.booleans())
def test_nearest_through_the_decision_index_is_exact(
    pool: list[str], queries: list[str], before: int, t: float, via_decide: bool
) -> None:
    # After first_above() or decide(), nearest() (and nearest(before=)) use the decision index.
    with tiny_budgets():
        idx = build(pool, len(pool) // 2)
        if via_decide:
            idx.decide(queries[0], t)
        else:
            idx.first_above(queries[0], t)
        for q in queries:
            assert idx.nearest(q) == brute_nearest(pool, q)
            assert idx.nearest(q, before=before) == brute_nearest(pool[:before], q)


def test_decision_index_stays_aligned_when_a_small_extend_crosses_a_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # extend() through the tails indexes every text before it may rebuild the decision index.
    rng = random.Random(8)
    pool = zipf_pool(rng, 60)
    with tiny_budgets():
        monkeypatch.setattr(similarity, "_RESNAPSHOT", 1.05)  # re-snapshot at 63 texts
        idx = build(pool, 40)
        idx.first_above("w1 w2", 0.7)  # builds the decision index at 60 texts
        more = zipf_pool(rng, 7)  # < 1/8 of the postings: the tails path, crossing 63
        idx.extend(more)
        pool += more
        # White-box: one per-text entry each (a rebuild in mid-batch once appended extras).
        assert idx._ncommon.n == len(idx) == 67
        for _ in range(30):
            q = edited(rng, rng.choice(pool), rng.randint(0, 4))
            check_decision(idx, pool, q, 0.7)
            if not brute_decision(pool, q, 0.7)[0]:
                idx.add(q)
                pool.append(q)


def test_decision_ties_at_the_threshold_are_not_above() -> None:
    # l=7 of m=n=10 gives p = r = 0.7 and the float 2*0.7*0.7/1.4; l=2, m+n=6 gives 2/3.
    a = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    b = "w0 w1 w2 w3 w4 w5 w6 x7 x8 x9"
    f = ref_score(a, b)
    idx = RougeLIndex()
    idx.add(a)
    assert idx.first_above(b, f) is None
    assert idx.decide(b, f) == (False, f, 0)
    below = float(__import__("numpy").nextafter(f, 0.0))
    assert idx.first_above(b, below) == (f, 0)
    assert idx.decide(b, below) == (True, f, 0)
    idx.add("p q r")
    t = ref_score("p q r", "p q")
    assert t == 0.8 and idx.first_above("p q", 0.8) is None and idx.first_above("p q", 0.79)


def test_decision_edge_cases() -> None:
    idx = RougeLIndex()
    assert idx.decide("anything", 0.7) == (False, 0.0, None)  # empty pool
    assert idx.first_above("anything", 0.0) is None
    idx.extend(["", "!!!", "the cat sat", "a a a a", "中文"])
    for q in ["", "?? --", "中文", "dog"]:  # no tokens, or none the pool knows
        assert idx.decide(q, 0.0) == (False, 0.0, None)
        assert idx.first_above(q, 0.0) is None
    assert idx.decide("cat", 0.0) == (True, ref_score("the cat sat", "cat"), 2)
    assert idx.decide("the cat sat", 1.0) == (False, 1.0, 2)  # nothing is above 1.0
    assert idx.decide("a a", 0.6) == (True, ref_score("a a a a", "a a"), 3)  # repeated tokens
    assert idx.first_above("a a a a a a a a", 0.6) == (ref_score("a a a a", "a " * 8), 3)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError):
            idx.decide("cat", bad)
        with pytest.raises(ValueError):
            idx.first_above("cat", bad)


@pytest.mark.parametrize("tiny", [False, True], ids=["default", "tiny-budgets"])
def test_large_pool_decisions_are_exact(tiny: bool) -> None:
    # Zipf vocabulary (>256 keys, so rare and common keys both occur), near-duplicates,
    # and the generation loop: decide, add when accepted, with a growing decision index.
    rng = random.Random(21 + tiny)
    pool = zipf_pool(rng, 1500)
    pool += [edited(rng, rng.choice(pool), rng.randint(0, 4)) for _ in range(150)]
    with tiny_budgets() if tiny else contextlib.nullcontext():
        idx = build(pool, 1200)
        kept = list(pool)
        for _ in range(40):
            q = edited(rng, rng.choice(kept), rng.randint(0, 6)) if rng.random() < 0.7 else (
                zipf_pool(rng, 1)[0])  # fmt: skip
            t = rng.choice([0.5, 0.7, 0.8])
            dup, best, i = brute_decision(kept, q, t)
            assert idx.decide(q, t) == (dup, best, i)
            assert (idx.first_above(q, t) is not None) == dup
            if not dup:
                assert idx.add(q) == len(kept)
                kept.append(q)


@HYP
@given(POOLS, POOLS, st.sampled_from([0.0, 0.45, 0.6, 0.9]), THRESHOLDS, st.booleans())
def test_the_judge_loop_records_the_exact_nearest(
    first: list[str], later: list[str], floor: float, t: float, exhaustive: bool
) -> None:
    # As the judge does it: the decision, add() when nothing is above t, then the exact nearest
    # among the texts before it (nearest(before=) starts from what the decision verified). The
    # floor decides which nearest path runs after the decision.
    with tiny_budgets(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(similarity, "_NEAREST_FLOOR", floor)
        idx = build(first, len(first) // 2)
        pool = list(first)
        for q in later:
            hit = idx.max_above(q, t) if exhaustive else idx.first_above(q, t)
            dup, best, i = brute_decision(pool, q, t)
            assert (hit is not None) == dup
            if dup:
                continue
            pos = idx.add(q)
            assert pos == len(pool)
            assert idx.nearest(q, before=pos) == (best, i) == brute_nearest(pool, q)
            pool.append(q)


def test_nearest_ignores_a_decision_about_another_text_or_pool() -> None:
    # The bar kept from the last decision is used only for the same text and the same pool.
    idx = RougeLIndex()
    idx.extend(["w1 w2 w3 w4 w5", "w1 w2 w3 x4 x5", "y1 y2 y3 y4 y5"])
    assert idx.first_above("w1 w2 w3 z4 z5 z6", 0.7) is None
    assert idx.nearest("y1 y2 y3 z4 z5", before=3) == brute_nearest(idx_texts(idx), "y1 y2 y3 z4 z5")
    assert idx.nearest("w1 w2 w3 z4 z5 z6", before=1) == (ref_score("w1 w2 w3 w4 w5", "w1 w2 w3 z4 z5 z6"), 0)
    idx.add("w1 w2 w3 z4 z5 z6 z7")
    assert idx.nearest("w1 w2 w3 z4 z5 z6") == (ref_score("w1 w2 w3 z4 z5 z6 z7", "w1 w2 w3 z4 z5 z6"), 3)


def idx_texts(idx: RougeLIndex) -> list[str]:
    return [idx.text(i) for i in range(len(idx))]


@pytest.mark.parametrize(("odds", "min_postings"), [(0.0, 0), (2.0, 0), (0.0, None)],
                         ids=["always-ladder", "never-ladder", "small-pool-no-ladder"])  # fmt: skip
def test_the_nearest_of_an_accepted_text_is_exact_with_and_without_the_ladder(odds: float,
                                                                              min_postings: int | None) -> None:
    # Near but not above 0.7: the nearests of accepted instructions mostly land in (0.55, 0.7],
    # where the fork first probes at _NEAREST_LADDER while that usually succeeds.
    rng = random.Random(31)
    pool = zipf_pool(rng, 600)
    queries = [edited(rng, rng.choice(pool), rng.randint(4, 10)) for _ in range(60)]
    ladder_probes: list[float] = []
    deciding, filling = build(pool, 400), build(pool, 400)
    filling.prepare(0.7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(similarity, "_LADDER_ODDS", odds)  # the bar the share of recent nearests must reach
        if min_postings is not None:  # else this pool is too small for the ladder to pay
            mp.setattr(similarity, "_LADDER_MIN_POSTINGS", min_postings)
        probe = RougeLIndex._probe

        def counted(self: RougeLIndex, q: object, t: float, *args: object, **kwargs: object) -> tuple[float, int]:
            found = probe(self, q, t, *args, **kwargs)  # type: ignore[arg-type]
            if t == similarity._NEAREST_LADDER and kwargs.get("runners_up"):  # (not step 2's probe at a bar)
                ladder_probes.append(found[0])
            return found

        mp.setattr(RougeLIndex, "_probe", counted)
        accepted = 0
        for q in queries:
            if deciding.max_above(q, 0.7) is None:
                accepted += 1
                assert filling.nearest(q, runner_up=deciding.runner_up(q)) == brute_nearest(pool, q)
    assert accepted >= 20
    if odds > 1 or min_postings is None:
        assert ladder_probes == []
    else:  # taken, and both ways: found the nearest above it, or only raised the bar
        assert any(f > similarity._NEAREST_LADDER for f in ladder_probes)
        assert any(f <= similarity._NEAREST_LADDER for f in ladder_probes)


def test_the_ladder_is_left_while_it_seldom_pays_and_taken_again_when_it_does() -> None:
    rng = random.Random(32)
    pool = zipf_pool(rng, 400)
    idx, picker = build(pool, 400), build(pool, 400)  # (the picker's nearests are checked below)
    idx.prepare(0.7)
    ladder = similarity._NEAREST_LADDER
    far = [q for q in zipf_pool(rng, 60) if picker.nearest(q)[0] <= ladder]
    near: list[str] = []
    while len(near) < 40:
        q = edited(rng, rng.choice(pool), rng.randint(1, 4))
        if ladder < picker.nearest(q)[0] <= 0.7:
            near.append(q)
    assert len(far) >= 30
    ladder_probes: list[float] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(similarity, "_LADDER_MIN_POSTINGS", 0)  # as if the pool were large
        probe = RougeLIndex._probe

        def counted(self: RougeLIndex, q: object, t: float, *args: object, **kwargs: object) -> tuple[float, int]:
            found = probe(self, q, t, *args, **kwargs)  # type: ignore[arg-type]
            if t == ladder and kwargs.get("runners_up"):
                ladder_probes.append(found[0])
            return found

        mp.setattr(RougeLIndex, "_probe", counted)
        for q in far:  # unrelated texts: their nearest is below the ladder
            assert idx.nearest(q, runner_up=(-1.0, -1)) == brute_nearest(pool, q)
        assert len(ladder_probes) <= 2
        before = len(ladder_probes)
        for q in near:
            assert idx.nearest(q, runner_up=(-1.0, -1)) == brute_nearest(pool, q)
        assert len(ladder_probes) - before >= 10  # the share of nearests above it recovered
