"""The native kernel's own contract (selfinstruct/_overlap.c): survivors and exact overlaps
against a direct count, and bad arguments refused with an exception instead of memory errors.
Its exactness inside the search is tested in test_similarity.py, with and without it."""

from __future__ import annotations

import math
import random
from array import array
from typing import Any

import numpy as np
import pytest

from selfinstruct import similarity
from selfinstruct.similarity import RougeLIndex
from test_similarity import WORDS, tiny_budgets

kernel = similarity._native_overlap
pytestmark = pytest.mark.skipif(kernel is None, reason="the native kernel is not built (no C compiler)")


def _call(keys: list[int], indptr: np.ndarray, data: np.ndarray, tails: list[Any], n_scan: int, lens: np.ndarray,
          need: np.ndarray, limit: int, runners: int = 0, bitsets: list[Any] | None = None,
          cover: int = 0, mode: int = 0, length_rows: np.ndarray | None = None
          ) -> tuple[dict[int, int], list[int]]:  # fmt: skip
    counts = np.zeros(limit + 3, dtype=np.uint16)
    out = np.empty(limit + 3, dtype=np.int32)
    ov = np.empty(limit + 3, dtype=np.int32)
    room = np.empty(runners, dtype=np.int32)
    k, r = kernel.survivors(np.asarray(keys, dtype=np.int64), indptr, data, tails, n_scan, lens, need, limit,
                            counts, out, ov, room, bitsets, cover, mode, length_rows)  # fmt: skip
    assert not counts.any(), "the scratch counts must be left all zero"
    return dict(zip(out[:k].tolist(), ov[:k].tolist(), strict=True)), room[:r].tolist()


def _length_rows(lens: np.ndarray, cover: int, spare: int) -> np.ndarray:
    """The length-class rows of the texts below cover (the kernel's classes), ``spare`` bytes longer."""
    classes = np.searchsorted(kernel.LENGTH_CLASSES, lens[:cover], side="right") - 1
    rows = np.zeros((len(kernel.LENGTH_CLASSES), cover // 8 + 1 + spare), dtype=np.uint8)
    for d, c in enumerate(classes.tolist()):
        rows[c, d >> 3] |= 1 << (d & 7)
    return rows


def _random_texts(rng: random.Random, most: int
                  ) -> tuple[list[set[int]], np.ndarray, int, list[list[int]], np.ndarray, np.ndarray]:  # fmt: skip
    """Texts as sets of keys and their lengths; postings: CSR (per key, then indptr and data) for
    the texts below ``split``, tails for the rest (ids in a tail follow the CSR ones)."""
    n_texts, n_keys = rng.randint(1, most), rng.randint(1, 12)
    holds = [set(rng.sample(range(n_keys), rng.randint(0, n_keys))) for _ in range(n_texts)]
    lens = np.array([len(h) + rng.randint(0, 3) for h in holds], dtype=np.int32)
    split = rng.randint(0, n_texts)
    csr = [[d for d in range(split) if k in holds[d]] for k in range(n_keys)]
    indptr = np.concatenate(([0], np.cumsum([len(c) for c in csr]))).astype(np.int64)
    return holds, lens, split, csr, indptr, np.array([d for c in csr for d in c], dtype=np.int32)


def _random_query(rng: random.Random, holds: list[set[int]], lens: np.ndarray, n_keys: int
                  ) -> tuple[list[int], np.ndarray, int, int]:  # fmt: skip
    """Query keys, need table, limit, and n_scan as the caller guarantees it: a text holding none
    of the first n_scan keys cannot reach need."""
    query = rng.sample(range(n_keys), rng.randint(1, n_keys))
    need = np.array([rng.randint(1, 6) for _ in range(int(lens.max()) + 1)], dtype=np.int32)
    limit = rng.randint(0, len(holds))
    return query, need, limit, len(query) - min(int(need.min()) - 1, len(query))


def _reaching(holds: list[set[int]], lens: np.ndarray, query: list[int], need: np.ndarray, limit: int
              ) -> dict[int, int]:  # fmt: skip
    """Text -> overlap, for the texts below limit whose overlap with the query reaches need."""
    overlaps = {d: len(holds[d] & set(query)) for d in range(limit)}
    return {d: ov for d, ov in overlaps.items() if ov and ov >= need[lens[d]]}


@pytest.mark.parametrize("seed", range(40))
def test_survivors_are_the_texts_whose_overlap_reaches_need(seed: int) -> None:
    rng = random.Random(seed)
    holds, lens, split, csr, indptr, data = _random_texts(rng, 60)
    n_texts, n_keys = len(holds), len(csr)
    if rng.random() < 0.3:  # keys past the CSR arrays have only tails
        indptr = indptr[: rng.randint(1, len(indptr))]
        data = data[: indptr[-1]]
        csr = [c if k + 1 < len(indptr) else [] for k, c in enumerate(csr)]
    tails_by_key = {k: [d for d in range(n_texts) if k in holds[d] and d not in csr[k]] for k in range(n_keys)}
    query, need, limit, n_scan = _random_query(rng, holds, lens, n_keys)
    tails = [array("i", tails_by_key[k]) if tails_by_key[k] else None for k in query]
    got, runners = _call(query, indptr, data, tails, n_scan, lens, need, limit, runners=3)
    assert got == _reaching(holds, lens, query, need, limit)
    assert len(runners) == len(set(runners)) <= 3
    assert all(d < limit and d not in got and holds[d] & set(query[:n_scan]) for d in runners)


@pytest.mark.parametrize("seed", range(60))
def test_bitsets_answer_the_common_keys_like_their_postings(seed: int) -> None:
    # The same search with some keys' membership as bitsets below a cover (ids at or past it
    # are searched in the postings), with and without runners-up (two loops in step 2); and the
    # dense count (mode 1: always when it can; -1: when the kernel thinks it cheaper): the same
    # survivors and overlaps, runners-up of its own (checked for what a caller relies on).
    rng = random.Random(seed)
    holds, lens, split, csr, indptr, data = _random_texts(rng, 300 if seed % 3 else 2000)
    n_texts, n_keys = len(holds), len(csr)
    tails = [array("i", [d for d in range(split, n_texts) if k in holds[d]]) for k in range(n_keys)]
    query, need, limit, n_scan = _random_query(rng, holds, lens, n_keys)
    cover = rng.randint(0, n_texts)
    bitsets: list[Any] = []
    for k in query:
        if rng.random() < 0.3:
            bitsets.append(None)
            continue
        row = np.zeros(cover // 8 + rng.randint(1, 3), dtype=np.uint8)
        for d in range(len(row) * 8):
            # Past the cover the bits are wrong on purpose: they must not be read.
            if (k in holds[d]) if d < cover else d % 2:
                row[d >> 3] |= 1 << (d & 7)
        bitsets.append(row)
    query_tails = [tails[k] for k in query]
    for runners in (0, 3):
        plain = _call(query, indptr, data, query_tails, n_scan, lens, need, limit, runners)
        assert _call(query, indptr, data, query_tails, n_scan, lens, need, limit, runners, bitsets, cover) == plain
        for mode in (1, -1):
            got, room = _call(query, indptr, data, query_tails, n_scan, lens, need, limit, runners, bitsets, cover, mode)
            assert got == plain[0]
            assert len(room) == len(set(room)) <= runners
            assert all(d < limit and d not in got and holds[d] & set(query) for d in room)
    assert plain[0] == _reaching(holds, lens, query, need, limit)
    with pytest.raises(ValueError, match="shorter than cover"):
        _call(query, indptr, data, query_tails, n_scan, lens, need, limit, 0, [np.zeros(0, np.uint8)] * len(query),
              cover + 9)  # fmt: skip
    with pytest.raises(ValueError, match="len\\(bitsets\\)"):
        _call(query, indptr, data, query_tails, n_scan, lens, need, limit, 0, bitsets + [None], cover)


@pytest.mark.parametrize("seed", range(30))
def test_the_dense_count_equals_a_direct_count_on_a_small_vocabulary(seed: int) -> None:
    # Every key common, as with a vocabulary of a few hundred words: the dense count's case. A few
    # keys lack a bitset (counted from their postings, scanned or not); the cover is where the
    # CSR arrays end, as in the pool, or anywhere; lengths and bars like a real need table's.
    rng = random.Random(seed)
    n_texts, n_keys = rng.randint(1, 900), rng.randint(3, 20)
    holds = [set(rng.sample(range(n_keys), rng.randint(0, min(n_keys, 9)))) for _ in range(n_texts)]
    lens = np.array([len(h) + rng.randint(0, 4) for h in holds], dtype=np.int32)
    split = rng.randint(0, n_texts)
    cover = split if rng.random() < 0.7 else rng.randint(0, n_texts)
    csr = [[d for d in range(split) if k in holds[d]] for k in range(n_keys)]
    indptr = np.concatenate(([0], np.cumsum([len(c) for c in csr]))).astype(np.int64)
    data = np.array([d for c in csr for d in c], dtype=np.int32)
    query = rng.sample(range(n_keys), rng.randint(1, n_keys))
    n, bar = len(query), rng.uniform(0.05, 0.95)
    need = np.array([math.ceil(bar * (m + n) / 2) for m in range(int(lens.max()) + 1)], dtype=np.int32)
    need = np.where(need <= np.arange(len(need)), need, len(need) + 1).astype(np.int32)
    n_scan = len(query) - min(int(need.min()) - 1, len(query))
    plain = set(rng.sample(query, min(len(query), rng.choice((0, 0, 1, 2)))))
    bitsets: list[Any] = []
    for k in query:
        row = np.zeros(cover // 8 + rng.randint(1, 9), dtype=np.uint8)
        for d in range(cover):
            if k in holds[d]:
                row[d >> 3] |= 1 << (d & 7)
        bitsets.append(None if k in plain else row)
    tails = [array("i", [d for d in range(split, n_texts) if k in holds[d]]) for k in query]
    limit = n_texts if rng.random() < 0.6 else rng.randint(0, n_texts)
    # Half the seeds with length classes (as the pool passes them), half with one class of all.
    classes = _length_rows(lens, cover, rng.randint(0, 8)) if seed % 2 else None
    expected = _reaching(holds, lens, query, need, limit)
    # Runners-up come from every dropped text holding a scanned key, at least (the dense count
    # looks lower and lower until it has enough).
    close = [d for d in range(limit) if d not in expected and holds[d] & set(query[:n_scan])]
    for runners in (0, 8):
        for mode in (0, 1, -1):
            got, room = _call(query, indptr, data, tails, n_scan, lens, need, limit, runners, bitsets, cover, mode,
                              classes)  # fmt: skip
            assert got == expected, (runners, mode)
            assert min(runners, len(close)) <= len(room) == len(set(room)) <= runners
            assert all(d < limit and d not in got and holds[d] & set(query) for d in room)


def test_the_dense_count_finds_runners_up_far_below_the_bar() -> None:
    # 300 texts, a third holding one query key each, the bar at five: no survivor, and every
    # runner-up holds one key, far below the floor the dense count looks at first.
    n_texts, query = 300, [0, 1, 2, 3]
    holds = [{d % 4} if d % 3 == 0 else set() for d in range(n_texts)]
    lens = np.full(n_texts, 5, dtype=np.int32)
    need = np.array([9, 9, 9, 9, 9, 5], dtype=np.int32)
    csr = [[d for d in range(n_texts) if k in holds[d]] for k in range(4)]
    indptr = np.concatenate(([0], np.cumsum([len(c) for c in csr]))).astype(np.int64)
    data = np.array([d for c in csr for d in c], dtype=np.int32)
    bitsets = []
    for k in query:
        row = np.zeros(n_texts // 8 + 1, dtype=np.uint8)
        for d in csr[k]:
            row[d >> 3] |= 1 << (d & 7)
        bitsets.append(row)
    # First, a bar past the number of query keys: nothing can reach it, the runners-up are still found.
    long, too_many = np.full(n_texts, 9, dtype=np.int32), np.array([99] * 9 + [9], dtype=np.int32)
    for mode in (1, 0):
        got, room = _call(query, indptr, data, [None] * 4, 4, long, too_many, n_texts, 8, bitsets, n_texts, mode)
        assert got == {} and len(room) == len(set(room)) == 8 and all(d % 3 == 0 for d in room), mode
    for mode in (0, 1):
        got, room = _call(query, indptr, data, [None] * 4, 4, lens, need, n_texts, 8, bitsets, n_texts, mode)
        assert got == {} and len(room) == len(set(room)) == 8 and all(d % 3 == 0 for d in room), mode


def test_bad_arguments_raise() -> None:
    lens = np.ones(4, dtype=np.int32)
    need = np.ones(4, dtype=np.int32)
    indptr = np.array([0, 2], dtype=np.int64)
    data = np.array([0, 1], dtype=np.int32)
    with pytest.raises(TypeError):  # int64 data
        _call([0], indptr, data.astype(np.int64), [None], 1, lens, need, 2)
    with pytest.raises(ValueError):  # n_scan past the keys
        _call([0], indptr, data, [None], 2, lens, need, 2)
    with pytest.raises(ValueError):  # a key list and tails of different lengths
        _call([0, 0], indptr, data, [None], 1, lens, need, 2)
    with pytest.raises(ValueError):  # indptr pointing past data
        _call([0], np.array([0, 9], dtype=np.int64), data, [None], 1, lens, need, 2)
    with pytest.raises(ValueError):  # a length outside the need table
        _call([0], indptr, data, [None], 1, np.full(4, 9, dtype=np.int32), need, 2)
    with pytest.raises(ValueError):  # no need table at all
        _call([0], indptr, data, [None], 1, lens, need[:0], 2)
    with pytest.raises(ValueError):  # scratch shorter than limit
        kernel.survivors(np.zeros(1, np.int64), indptr, data, [None], 1, lens, need, 3, np.zeros(1, np.uint16),
                         np.empty(3, np.int32), np.empty(3, np.int32), np.empty(0, np.int32))  # fmt: skip


def test_the_count_loop_has_room_for_its_one_extra_write() -> None:
    # Every text below limit touched, then one more posting: the loop writes out[limit] before
    # it knows the text is not new. An out array of exactly limit entries used to be accepted.
    indptr = np.array([0, 2, 4], dtype=np.int64)
    data = np.array([0, 1, 0, 1], dtype=np.int32)
    lens, need = np.full(2, 2, dtype=np.int32), np.ones(3, dtype=np.int32)

    def run(room: int) -> int:
        out = np.zeros(room + 1, dtype=np.int32)
        out[room] = -7  # a guard past the room given
        k, _ = kernel.survivors(np.array([0, 1], np.int64), indptr, data, [None, None], 2, lens, need, 2,
                                np.zeros(2, np.uint16), out[:room], np.empty(2, np.int32), np.empty(0, np.int32))
        assert out[room] == -7, "wrote past the out array it was given"
        return k

    with pytest.raises(ValueError, match="limit \\+ 1"):
        run(2)
    assert run(3) == 2


# -- the decision index's probe: prefix_hits and second_bound against their numpy versions -----


@pytest.mark.parametrize("seed", range(6))
def test_prefix_probe_kernels_equal_numpy(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe of a growing pool gets the same hits, in the same order, and the same texts,
    bounds and runners-up from the native passes as from numpy: with the small and middle runs
    in use, the long-text bucket (capped lengths), searches limited to earlier texts, raised bars
    (the nearest's probe at its best so far), and the room for entries dropped after each wide probe."""
    for name, value in {"_SMALL_RUN": 5, "_SNAPSHOT_MIN": 8, "_RESNAPSHOT": 2, "_N_COMMON": 6, "_M_CAP": 9,
                        "_SEED_HITS": 4, "_SEED_SAMPLE": 2, "_HITS_KEPT": 8 * (seed % 2)}.items():  # fmt: skip
        monkeypatch.setattr(similarity, name, value)
    monkeypatch.setattr(similarity, "_NATIVE_SCAN_MAX", -1)  # every decision through the index
    monkeypatch.setattr(similarity, "_NATIVE_FLAT_SCAN_MAX", -1)
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(rng.randint(6, 30))]

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.choice((rng.randint(1, 8), rng.randint(9, 14)))))

    index = similarity.RougeLIndex()
    index.extend([text() for _ in range(rng.randint(5, 40))])
    index.prepare(0.7)
    compared = {"hits": 0, "second": 0}
    native_hits, native_second = index._native_hits, index._native_second

    def both_hits(*args: Any) -> tuple[np.ndarray, ...]:
        got, want = native_hits(*args), index._first_hits(*args)
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        compared["hits"] += 1
        return got

    def both_second(*args: Any) -> tuple[Any, ...]:
        got, want = native_second(*args), index._second_bound(*args)
        assert all(np.array_equal(g, w) for g, w in zip(got[:3], want[:3], strict=True)) and got[3] == want[3]
        compared["second"] += 1
        return got

    monkeypatch.setattr(index, "_native_hits", both_hits)
    monkeypatch.setattr(index, "_native_second", both_second)
    for _ in range(150):
        query = text()
        index.max_above(query, rng.choice((0.5, 0.7, 0.9)))
        index.first_above(query, 0.7)
        index.nearest(query, before=rng.randint(1, len(index)))
        if rng.random() < 0.5:
            index.add(query)
    assert compared["hits"] > 100 and compared["second"] > 50


@pytest.mark.parametrize("seed", range(6))
def test_one_span_per_probe_key_reads_what_the_ranges_of_each_length_hold(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe reads one span per probe key (shortest to longest length) and keeps an entry only
    when that key's range of the entry's length holds it: the same hits, in the same order, as
    reading each (key, length) range, natively and in numpy, thresholds low and high, with the
    long-text bucket in use and the small and middle runs filled."""
    for name, value in {"_SMALL_RUN": 7, "_SNAPSHOT_MIN": 8, "_RESNAPSHOT": 2, "_M_CAP": 11}.items():
        monkeypatch.setattr(similarity, name, value)
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(rng.randint(8, 40))]

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.choice((rng.randint(1, 9), rng.randint(10, 16)))))

    index = similarity.RougeLIndex()
    index.extend([text() for _ in range(60)])
    index.prepare(0.4)
    compared = spans_fewer = 0
    for _ in range(300):
        query = text()
        index.add(text())
        t = rng.choice((0.4, 0.5, 0.55, 0.7, 0.9))
        q = index._query(query)
        if q is None:
            continue
        table, n_keys = index._need(q.n, t), len(q.keys)
        if n_keys < table.amin:
            continue
        all_qb = np.arange(n_keys, table.amin - 1, -1)
        pi, mi = np.nonzero(table._nm[None, :] <= all_qb[:, None])
        per_length = (np.ascontiguousarray(pi), table._mj[mi], table._mj[mi] | table._jmax[mi], all_qb[pi])
        found = []
        for templates in (table.ranges(n_keys), per_length):
            lows, highs, tags = (np.empty(len(templates[0]), dtype=np.int64) for _ in range(3))
            qm = np.empty(4, dtype=np.uint64)
            _, n_common, qtop, q_rest = kernel.probe_front(q.keys, index._ord.a, index._c0, index._c64, *templates,
                                                           lows, highs, tags, qm)  # fmt: skip
            found.append((lows, highs, tags, n_keys, n_keys - n_common, qtop, q_rest))
        spans, ranges = found
        # The reference: each (key, length) range read whole, without the span tables.
        room = len(index) * 16  # more than the entries of any probe here
        doc, qi, j = np.empty(room, np.int32), np.empty(room, np.int64), np.empty(room, np.int64)
        k = kernel.prefix_hits(index._pre.runs, index._pre.small, *ranges, table.need, index._lens.a, table.capped,
                               len(index), doc, qi, j)  # fmt: skip
        want = (doc[:k], qi[:k], j[:k])
        for got in (index._native_hits(*spans, table, len(index)), index._first_hits(*spans, table, len(index))):
            assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        compared += k > 0
        spans_fewer += len(spans[0]) < len(ranges[0])
    assert compared > 100 and spans_fewer > 100


def test_a_span_keeps_only_what_a_range_of_its_length_holds() -> None:
    """Inside one probe key's span, an entry counts only when its length's range asks no more
    than the key's K - i and its position is within that range's jmax; a span without its
    tables, or with tables of different lengths, is refused."""
    big = similarity._BIG
    comps = [(1 << 28) | (m << 18) | (j << 10) for m in (3, 4, 5) for j in (0, 2)]  # texts 0 .. 5
    run = (np.array(comps, np.int64), np.zeros(6, np.uint64), np.arange(6, dtype=np.int32))
    small = (array("q"), array("Q"), array("i"))
    first, last = (1 << 28) | (3 << 18), (1 << 28) | (5 << 18) | (255 << 10) | 1023  # key 1, lengths 3 to 5
    span = (np.array([first], np.int64), np.array([last], np.int64), np.array([4], np.int64))
    span_need = np.array([big, big, big, 2, 9, 2, big], np.int64)  # length 4 asks more than K - i = 4
    span_jmax = np.array([-1, -1, -1, 2, 2, 1, -1], np.int64)  # length 5 only up to j = 1
    doc, qi, j = np.empty(8, np.int32), np.empty(8, np.int64), np.empty(8, np.int64)

    def hits(*tables: Any) -> int:
        return kernel.prefix_hits([run], small, *span, 4, 4, 0, 0, np.zeros(8, np.int64), np.ones(6, np.int32), False,
                                  6, doc, qi, j, *tables)  # fmt: skip

    assert hits() == 6  # without the tables a span is a plain range
    k = hits(span_need, span_jmax)
    assert doc[:k].tolist() == [0, 1, 4] and j[:k].tolist() == [0, 2, 0] and qi[:k].tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        hits(span_need, span_jmax[:-1])
    with pytest.raises(ValueError):
        hits(span_need)


@pytest.mark.parametrize("seed", range(4))
def test_the_probe_front_equals_numpy(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index ranges a probe reads (sorted) and the query's common-key masks: the native
    kernel's equal numpy's (the lines of _probe it replaces, and _masks), probe after probe of a
    growing pool: queries hold common keys, among the 64 most frequent and past them."""
    monkeypatch.setattr(similarity, "_NATIVE_SCAN_MAX", -1)
    monkeypatch.setattr(similarity, "_NATIVE_FLAT_SCAN_MAX", -1)
    for name, value in {"_SNAPSHOT_MIN": 8, "_RESNAPSHOT": 2}.items():
        monkeypatch.setattr(similarity, name, value)
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(rng.randint(80, 160))]  # more than 64 common keys
    index = similarity.RougeLIndex()
    index.extend([" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(30)])
    index.prepare(0.6)
    native_front = kernel.probe_front
    compared = 0

    def both(keys: list[int], order: np.ndarray, c0: int, c64: int, pi: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             qb: np.ndarray, lows: np.ndarray, highs: np.ndarray, tags: np.ndarray, qm: np.ndarray) -> Any:
        nonlocal compared
        got = native_front(keys, order, c0, c64, pi, lo, hi, qb, lows, highs, tags, qm)
        ka = np.array(keys, dtype=np.int64)
        by_ord = ka[np.argsort(order[ka])]
        want_lows = (by_ord[pi] << 28) | lo
        sort = np.argsort(want_lows)
        assert np.array_equal(lows, want_lows[sort]) and np.array_equal(highs, ((by_ord[pi] << 28) | hi)[sort])
        assert np.array_equal(tags, qb[sort])
        want_qm, n_common, top, rest = index._masks(np.sort(order[ka]))
        assert np.array_equal(qm, want_qm) and got == (len(pi), n_common, top, rest)
        compared += 1
        return got

    monkeypatch.setattr(kernel, "probe_front", both)
    for _ in range(120):
        query = " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        index.max_above(query, rng.choice((0.6, 0.7, 0.9)))
        if rng.random() < 0.5:
            index.add(query)
    assert compared > 80


@pytest.mark.parametrize("seed", range(3))
def test_query_keys_equal_the_python_lookups(seed: int) -> None:
    """Known token ids and keys (occurrence keys of repeated tokens while the pool has them), as
    RougeLIndex._query computes them without the kernel: short queries and long ones (past the
    kernel's small-query path), with and without repeats and unknown words."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    index = similarity.RougeLIndex()
    index.extend([" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(60)])
    index.add(" ".join(["w1"] * 200))  # occurrence keys of w1 up to 200
    for _ in range(200):
        size = rng.choice((rng.randint(0, 12), rng.randint(100, 300)))
        text = " ".join(rng.choice(words + ["unknown", "w1"]) for _ in range(size))
        index._last_tokens = ("", [])
        native = index._query(text)
        index._native = None
        try:
            index._last_tokens = ("", [])
            python = index._query(text)
        finally:
            del index._native  # the class's kernel again
        if python is None:
            assert native is None
            continue
        assert native is not None and (native.n, native.keys, native.tids) == (python.n, python.keys, python.tids)


def test_seq_of_spells_the_codes_of_the_keys() -> None:
    codes = np.array([97, 0x10FFFF, 0xE9, 0x4E2D, 0x110000, 0xD800], dtype=np.int64)
    assert kernel.seq_of([0, 2, 3, 1, 0], codes) == "a\u00e9\u4e2d\U0010ffffa"
    assert kernel.seq_of([], codes) == ""
    assert kernel.seq_of([0] * 300, codes) == "a" * 300  # past the stack buffer
    assert kernel.seq_of([0, 4], codes) is None  # past the last code point: the caller makes a tuple
    assert kernel.seq_of([5], codes) is None  # a surrogate is no character either
    with pytest.raises(IndexError):
        kernel.seq_of([6], codes)
    with pytest.raises(TypeError):
        kernel.seq_of([0], codes.astype(np.int32))


def test_seq_of_stores_and_counts_the_keys_of_a_text() -> None:
    codes = np.array([97, 98, 0x110000, 99], dtype=np.int64)
    flat, df = np.full(6, -1, dtype=np.int32), np.array([5, 0, 0, 1], dtype=np.int32)
    assert kernel.seq_of([3, 0], codes, flat, 1, df) == "ca"
    assert flat.tolist() == [-1, 3, 0, -1, -1, -1] and df.tolist() == [6, 0, 0, 2]
    assert kernel.seq_of([2, 1], codes, flat, 3, df) is None  # stored all the same: the caller makes a tuple
    assert flat.tolist() == [-1, 3, 0, 2, 1, -1] and df.tolist() == [6, 1, 1, 2]
    for bad in ([0, 1], [0, 7]):  # no room at 5 for two keys; a key outside codes: nothing written
        with pytest.raises((ValueError, IndexError)):
            kernel.seq_of(bad, codes, flat, 5, df)
        with pytest.raises(IndexError):
            kernel.seq_of([1, 3, 4], codes, flat, 0, df)
        assert flat.tolist() == [-1, 3, 0, 2, 1, -1] and df.tolist() == [6, 1, 1, 2]
    with pytest.raises(TypeError):  # int64 keys where the pool holds int32
        kernel.seq_of([0], codes, flat.astype(np.int64), 0, df)


def test_rank_orders_keys_like_a_stable_sort() -> None:
    rng = np.random.default_rng(3)
    for dtype in (np.int32, np.int64):
        table = rng.integers(0, 9, 50).astype(dtype)  # many ties
        for size in (0, 1, 7, 40):
            keys = rng.choice(50, size, replace=False).tolist()
            got_keys, values, cum = kernel.rank(keys, table)
            order = np.argsort(table[keys], kind="stable")
            assert got_keys == [keys[i] for i in order] and values == table[keys][order].tolist()
            assert cum == np.cumsum(table[keys][order]).tolist()
    with pytest.raises(IndexError):
        kernel.rank([50], table)
    with pytest.raises(TypeError):
        kernel.rank([1], table.astype(np.float64))


def test_prefix_probe_kernels_refuse_bad_arguments() -> None:
    i64, i32 = np.zeros(4, np.int64), np.zeros(4, np.int32)
    run = (np.full(2, 1 << 18, np.int64), np.zeros(2, np.uint64), np.arange(2, dtype=np.int32))  # length 1, j 0
    small = (array("q"), array("Q"), array("i"))
    need, lens = np.ones(4, np.int64), np.ones(4, np.int32)
    ranges = np.array([0, 1 << 18], np.int64), np.array([10, (1 << 18) + 5], np.int64), np.array([2, 3], np.int64)

    def hits(runs: Any = (run,), small: Any = small, ranges: Any = ranges, need: Any = need, out: Any = i32) -> int:
        return kernel.prefix_hits(runs, small, *ranges, 3, 3, 0, 0, need, lens, False, 4, out, i64, i64)

    assert hits() == 2  # the test's own arguments are good
    with pytest.raises(TypeError):  # a run that is not a triple
        hits(runs=[run[:2]])
    with pytest.raises(ValueError):  # a run's arrays of different lengths
        hits(runs=[(run[0], run[1], np.zeros(3, np.int32))])
    with pytest.raises(ValueError):  # ranges out of order
        hits(ranges=(ranges[0][::-1].copy(), ranges[1][::-1].copy(), ranges[2]))
    with pytest.raises(TypeError):  # int64 output for text ids
        hits(out=i64)
    with pytest.raises(ValueError):  # an entry whose length is outside the need table
        hits(need=need[:1])
    assert hits(runs=[(np.arange(9, dtype=np.int64), np.zeros(9, np.uint64), np.zeros(9, np.int32))]) < 0  # no room

    def second(doc: Any = np.array([1], np.int32), lens: Any = lens, qm: Any = np.zeros(4, np.uint64)) -> Any:
        return kernel.second_bound(doc, np.array([0], np.int64), np.array([0], np.int64), 2, 3, lens,
                                   np.zeros(4, np.int16), np.zeros(16, np.uint64), qm, need, np.empty(1, np.int32),
                                   np.empty(1, np.int64), np.empty(1, np.int64), np.empty(2, np.int32))  # fmt: skip

    assert second() == (1, 0)

    def front(keys: Any = (0, 1), pi: Any = np.array([0, 1], np.int64), qm: Any = np.zeros(4, np.uint64),
              c0: int = 1) -> Any:
        out = np.zeros(2, np.int64)
        return kernel.probe_front(list(keys), np.array([0, 1], np.int64), c0, c0, pi, np.zeros(2, np.int64),
                                  np.zeros(2, np.int64), np.zeros(2, np.int64), out, out.copy(), out.copy(), qm)

    assert front() == (2, 1, 1, 0)
    with pytest.raises(IndexError):  # a key past the order
        front(keys=(0, 5))
    with pytest.raises(ValueError):  # ranges of a probe key the query does not have
        front(pi=np.array([0, 2], np.int64))
    with pytest.raises(ValueError):  # a mask of the wrong width
        front(qm=np.zeros(3, np.uint64))
    with pytest.raises(ValueError):  # a place past the common range
        front(c0=-300)
    with pytest.raises(ValueError):  # a hit on a text past the per-text arrays
        second(doc=np.array([7], np.int32))
    with pytest.raises(ValueError):  # a common-key mask of the wrong width
        second(qm=np.zeros(3, np.uint64))
    with pytest.raises(ValueError):  # a length outside the need table
        second(lens=np.full(4, 9, np.int32))


def test_the_native_kernel_refuses_a_scorer_it_cannot_call() -> None:
    """A function without rapidfuzz's scorer capsule (another rapidfuzz, say) is refused, and the
    Python loop verifies instead."""
    assert kernel.bind_lcs(len) is False
    assert kernel.bind_lcs(similarity.LCSseq.similarity) is True  # bound again for the other tests


def test_native_verify_stops_and_cuts_where_told() -> None:
    """verify() returns the first F above stop_above, and once the best is above cut_above it
    skips every text from the first bound below best - eps on (bounds descend)."""
    if not similarity._NATIVE_LCS:
        pytest.skip("the native kernel cannot call this rapidfuzz")
    index = similarity.RougeLIndex()
    index.extend(["a b c d", "a b x y", "a b c d e", "p q r s"])
    q = index._query("a b c d")
    assert q is not None
    seqs, lens, qs = index._seqs, index._lens.a, index._qseq(q)
    ids = np.array([1, 2, 0, 3], dtype=np.int32)
    inf = float("inf")
    # No bounds: the maximum (1.0, text 0) whatever the order.
    assert kernel.verify(qs, seqs, ids, None, lens, q.n, inf, inf, 1e-9, -1.0, -1) == (1.0, 0)
    # Stop at the first F above 0.6: text 1 scores 0.5, text 2 scores 8/9.
    assert kernel.verify(qs, seqs, ids, None, lens, q.n, 0.6, inf, 1e-9, -1.0, -1) == (similarity.rouge_l("a b c d", "a b c d e"), 2)
    # Bounds that put text 0 below the best of texts 1 and 2: it is cut, so it is not seen.
    ub = np.array([1.0, 0.95, 0.5, 0.1])
    assert kernel.verify(qs, seqs, ids, ub, lens, q.n, inf, 0.0, 1e-9, -1.0, -1) == (similarity.rouge_l("a b c d", "a b c d e"), 2)
    # The same bounds with the cut off until the best passes 0.9: text 0 is scored.
    assert kernel.verify(qs, seqs, ids, ub, lens, q.n, inf, 0.9, 1e-9, -1.0, -1) == (1.0, 0)


@pytest.mark.parametrize("seed", range(20))
def test_native_verify_equals_the_python_loop(seed: int) -> None:
    """verify() finds the (F, id) the Python formula finds over rapidfuzz's LCS, for texts of
    every str width (1, 2 and 4 bytes a character) and both id widths."""
    if not similarity._NATIVE_LCS:
        pytest.skip("the native kernel cannot call this rapidfuzz")
    rng = random.Random(seed)
    alphabets = ["abcdef", "ab\u0100\u0101", "a\U00010000\U00010001\u0100"]

    def text() -> str:
        return "".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(1, 90)))

    seqs = [text() for _ in range(200)]
    lens = np.array([len(x) for x in seqs], dtype=np.int32)
    for _ in range(20):
        q = text()
        ids = np.array(rng.sample(range(200), rng.randint(1, 60)), dtype=rng.choice([np.int32, np.int64]))
        scores = [(similarity._fmeasure(int(similarity.LCSseq.similarity(q, seqs[i])), len(q), len(seqs[i])), -i)
                  for i in ids.tolist()]  # fmt: skip
        f, neg_i = max(scores)
        inf = float("inf")
        assert kernel.verify(q, seqs, ids, None, lens, len(q), inf, inf, 1e-9, -1.0, -1) == (f, -neg_i)


@pytest.mark.parametrize("seed", range(20))
def test_ranked_verify_takes_the_texts_in_lexsort_order(seed: int) -> None:
    """ranked=True takes unsorted bounds and visits the texts as np.lexsort((ids, -ub)) orders them
    (highest bound first, lowest id among equal ones): the same (F, id) as the sorted call, for
    every way of stopping. The bounds here are arbitrary, with many ties, so that any other order
    stops elsewhere and shows. Given overlaps instead of bounds (the nearest's last step), the
    kernel makes numpy's bounds from them: the same floats, so the same (F, id)."""
    if not similarity._NATIVE_LCS:
        pytest.skip("the native kernel cannot call this rapidfuzz")
    rng = random.Random(seed)
    seqs = ["".join(rng.choice("abcde") for _ in range(rng.randint(1, 30))) for _ in range(300)]
    lens = np.array([len(x) for x in seqs], dtype=np.int32)
    inf = float("inf")
    for _ in range(30):
        q = "".join(rng.choice("abcde") for _ in range(rng.randint(1, 30)))
        ids = np.array(rng.sample(range(300), rng.randint(2, 250)), dtype=rng.choice([np.int32, np.int64]))
        ub = np.array([rng.choice([0.2, 0.4, 0.5, 0.6, 0.8, 1.0]) for _ in ids])
        order = np.lexsort((ids, -ub))
        for stop_above, cut_above, best, best_id in [(inf, -inf, -1.0, -1), (0.5, inf, -1.0, -1), (inf, 0.3, -1.0, -1),
                                                     (inf, -inf, 0.45, 299)]:  # fmt: skip
            args = (len(q), stop_above, cut_above, 1e-9, best, best_id)
            expected = kernel.verify(q, seqs, ids[order], ub[order], lens, *args)
            assert kernel.verify(q, seqs, ids, ub, lens, *args, True) == expected
        ov = np.array([rng.randint(0, 35) for _ in ids], dtype=np.int32)  # some above the length
        ov_ub = 2 * np.minimum(ov.astype(np.int64), lens[ids]) / (lens[ids] + len(q))
        for args in [(len(q), inf, -inf, 1e-9, -1.0, -1, True), (len(q), 0.5, inf, 1e-9, -1.0, -1, True)]:
            assert kernel.verify(q, seqs, ids, None, lens, *args, ov) == kernel.verify(q, seqs, ids, ov_ub, lens, *args)


def test_native_verify_refuses_bad_arguments() -> None:
    if not similarity._NATIVE_LCS:
        pytest.skip("the native kernel cannot call this rapidfuzz")
    seqs, lens, inf = ["ab", "abc"], np.array([2, 3], dtype=np.int32), float("inf")
    with pytest.raises(IndexError):
        kernel.verify("ab", seqs, np.array([2], dtype=np.int64), None, lens, 2, inf, inf, 1e-9, -1.0, -1)
    with pytest.raises(IndexError):
        kernel.verify("ab", seqs, np.array([-1], dtype=np.int64), None, lens, 2, inf, inf, 1e-9, -1.0, -1)
    with pytest.raises(TypeError):
        kernel.verify("ab", [(1, 2), "abc"], np.array([0], dtype=np.int64), None, lens, 2, inf, inf, 1e-9, -1.0, -1)
    with pytest.raises(TypeError):
        kernel.verify("ab", seqs, np.array([0], dtype=np.int16), None, lens, 2, inf, inf, 1e-9, -1.0, -1)
    with pytest.raises(TypeError):  # 8 bytes an item, but not integers
        kernel.verify("ab", seqs, np.array([0.0]), None, lens, 2, inf, inf, 1e-9, -1.0, -1)
    with pytest.raises(TypeError):  # unsigned
        kernel.verify("ab", seqs, np.array([0], dtype=np.uint32), None, lens, 2, inf, inf, 1e-9, -1.0, -1)
    with pytest.raises(TypeError):  # integers in the other byte order: id 1 would read as 2**56
        kernel.verify("ab", seqs, np.array([1], dtype=np.dtype(np.int64).newbyteorder()), None, lens, 2, inf, inf,
                      1e-9, -1.0, -1)  # fmt: skip
    with pytest.raises(ValueError):
        kernel.verify("ab", seqs, np.array([0, 1], dtype=np.int64), np.array([1.0]), lens, 2, inf, inf, 1e-9, -1.0, -1)
    with pytest.raises(ValueError):
        kernel.verify("", seqs, np.array([0], dtype=np.int64), None, lens, 0, inf, inf, 1e-9, -1.0, -1)
    with pytest.raises(ValueError):  # ranked: by the bounds, which must be there
        kernel.verify("ab", seqs, np.array([0, 1], dtype=np.int64), None, lens, 2, inf, inf, 1e-9, -1.0, -1, True)
    two, ov = np.array([0, 1], dtype=np.int64), np.array([1, 1], dtype=np.int32)
    with pytest.raises(ValueError):  # bounds and overlaps both
        kernel.verify("ab", seqs, two, np.array([1.0, 1.0]), lens, 2, inf, inf, 1e-9, -1.0, -1, True, ov)
    with pytest.raises(ValueError):  # fewer overlaps than ids
        kernel.verify("ab", seqs, two, None, lens, 2, inf, inf, 1e-9, -1.0, -1, True, ov[:1])
    with pytest.raises(IndexError):  # an id past the lengths, met while making the bounds
        kernel.verify("ab", seqs, np.array([0, 5], dtype=np.int64), None, lens, 2, inf, inf, 1e-9, -1.0, -1, True, ov)
    with pytest.raises(TypeError):  # overlaps of 8 bytes
        kernel.verify("ab", seqs, two, None, lens, 2, inf, inf, 1e-9, -1.0, -1, True, ov.astype(np.int64))


@pytest.mark.parametrize("seed", range(5))
def test_min_lcs_above_equals_numpy(seed: int) -> None:
    """The native smallest-LCS-above-t table equals _min_lcs_above's numpy one, for a given query
    length and for n = l, at thresholds on and next to exact fractions."""
    rng = random.Random(seed)
    for _ in range(1500):
        t = rng.choice([rng.random(), round(rng.random(), 2), 0.7, 0.55, 2 / 3, 0.5, 1e-9, 0.999999])
        t = rng.choice([t, float(np.nextafter(t, -1.0)), float(np.nextafter(t, 2.0))])
        ms = np.arange(rng.randint(1, 400), dtype=np.int64)
        for n in (None, rng.randint(1, 400)):
            x = ms * (t / (2 - t)) if n is None else (ms + n) * (t / 2)
            native = np.empty(len(ms), dtype=np.int64)
            kernel.min_lcs_above(t, -1 if n is None else n, x, similarity._BIG, native)
            assert np.array_equal(native, similarity._min_lcs_above(t, n, ms, x)), (t, n)
    with pytest.raises(ValueError):
        kernel.min_lcs_above(0.7, 5, np.zeros(3), similarity._BIG, np.empty(4, dtype=np.int64))


@pytest.mark.parametrize("seed", range(5))
def test_min_shared_equals_numpy(seed: int) -> None:
    """The native need-per-length table equals _min_shared's numpy one, bars at ties included."""
    index = similarity.RougeLIndex()
    index.extend(["w " * 300])
    rng = random.Random(seed)
    for _ in range(2000):
        best = rng.choice([rng.random(), round(rng.random(), 2), -1.0, 0.0, 1.0, 2 / 3, 0.7])
        n = rng.randint(1, 400)
        native = np.empty(index._max_len + 1, dtype=np.int32)
        kernel.min_shared(best, similarity._EPS, n, native)
        assert np.array_equal(native, index._min_shared(best, n, 0)), (best, n)


def test_a_decision_over_equally_common_keys_takes_the_postings_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past _NATIVE_SCAN_MAX, the decision still scans the postings when the keys it reads are all
    about equally common (the index has no rare key to prune with), and probes the index when one
    of them is rare; the answer is rouge_score's either way."""
    monkeypatch.setattr(similarity, "_NATIVE_SCAN_MAX", 10)
    rng = random.Random(5)
    flat = [" ".join(rng.choice("abcdefgh") for _ in range(8)) for _ in range(300)]
    index = similarity.RougeLIndex()
    index.extend(flat)
    index.prepare(0.7)
    probes: list[float] = []
    real_probe = similarity.RougeLIndex._probe

    def counting_probe(self: Any, q: Any, t: float, *args: Any, **kwargs: Any) -> Any:
        probes.append(t)
        return real_probe(self, q, t, *args, **kwargs)

    monkeypatch.setattr(similarity.RougeLIndex, "_probe", counting_probe)

    def brute(text: str) -> float:
        return max(similarity.rouge_l(text, other) for other in index_texts)

    index_texts = list(flat)
    query = "a b c d e f g h"
    found = index.max_above(query, 0.7)
    assert probes == []  # the scan decided
    assert (found[0] if found else 0.0) == (brute(query) if brute(query) > 0.7 else 0.0)
    # A rare key in the query's scanned keys: the index decides.
    index.add("a b c d zebra e f g")
    index_texts.append("a b c d zebra e f g")
    query = "zebra a b c d e f g"
    found = index.max_above(query, 0.7)
    assert probes  # the index decided
    assert found is not None and found[0] == brute(query)


def test_native_index_text_refuses_bad_arguments() -> None:
    ord_ = np.array([5, 4, 3, -4], dtype=np.int64)
    alpha = np.zeros(4, dtype=np.int64)
    cm = np.zeros((2, 4), dtype=np.uint64)
    small = (bytearray(), bytearray(), bytearray())
    tails: dict[int, Any] = {}
    # Key 0 is common (place 5 >= c0 = 3: bit 2, and among the top ones from c64 = 4: bit 1 there);
    # key 3 was made after the snapshot. Entries: key 3 first (a negative place: rarest).
    assert kernel.index_text([0, 3], 1, tails, ord_, 3, 4, alpha, cm, small, 1023) == 1
    assert {k: np.frombuffer(v, np.int32).tolist() for k, v in tails.items()} == {0: [1], 3: [1]}
    assert cm[1].tolist() == [0b100, 0, 0, 0]
    assert np.frombuffer(small[0], np.int64).tolist() == [3 << 28 | 2 << 18, 0 << 28 | 2 << 18 | 1 << 10]
    assert np.frombuffer(small[1], np.uint64).tolist() == [0b10, 0b10]
    assert np.frombuffer(small[2], np.int32).tolist() == [1, 1]
    with pytest.raises(TypeError):  # a tail that the kernel cannot append to in place
        kernel.index_text([0], 2, {0: array("i", [1])})
    # Each refused call leaves the tails, masks and small run as they were.
    before = ({k: bytes(v) for k, v in tails.items()}, cm.tolist(), [bytes(b) for b in small])
    with pytest.raises(IndexError):  # a key the order does not know
        kernel.index_text([0, 4], 1, tails, ord_, 3, 4, alpha, cm, small, 1023)
    with pytest.raises(ValueError):  # a text longer than the alpha table
        kernel.index_text([0, 1, 2, 3], 1, tails, ord_, 3, 4, alpha, cm, small, 1023)
    with pytest.raises(ValueError):  # a row past the masks
        kernel.index_text([0], 2, tails, ord_, 3, 4, alpha, cm, small, 1023)
    with pytest.raises(TypeError):
        kernel.index_text([0], 1, tails, ord_, 3, 4, alpha, cm, (array("q"), bytearray(), bytearray()), 1023)
    assert ({k: bytes(v) for k, v in tails.items()}, cm.tolist(), [bytes(b) for b in small]) == before
    with pytest.raises(ValueError):
        kernel.index_text([0], -1, {})


def _indexing_state(idx: RougeLIndex) -> tuple[object, ...]:
    """What _store_one and _index write: the keys, their counts and sequences, the postings'
    tails, the decision index's runs and masks."""
    pre = idx._pre
    runs = [] if pre is None else [tuple(np.asarray(a).tolist() for a in run) for run in pre.runs]
    small = [] if pre is None else [bytes(b) for b in pre.small]
    return (idx._keys.a[: idx._keys.n].tolist(), idx._df.a[: idx._n_keys].tolist(), idx._seqs,
            {k: bytes(v) for k, v in idx._full.tail.items()}, idx._full.data.tolist(), runs, small,
            idx._cm[: idx._n].tolist(), idx._ncommon.a[: idx._ncommon.n].tolist())  # fmt: skip


def test_the_native_kernel_stores_and_indexes_a_text_as_python_does() -> None:
    """seq_of() and index_text() write the keys, their counts, the tails, the prefix entries and
    the common-key masks that the Python lines write: both are run on the same texts, and the state compared after every add
    (tiny budgets: snapshots, merges and small-run flushes every few texts, 3 common keys, the
    length cap at 6; repeated tokens, empty texts and new keys after a snapshot)."""
    rng = random.Random(11)
    pool = [" ".join(rng.choice(WORDS) for _ in range(rng.choice((0, 1, 3, 7, 12, 40)))) for _ in range(400)]
    pool += [f"new{i} " * (i % 3 + 1) + "the cat" for i in range(60)]  # keys made after the last snapshot
    with tiny_budgets():
        native, plain = RougeLIndex(), RougeLIndex()
        plain._native = None
        for idx in (native, plain):
            idx.prepare(0.7)
            idx.extend(pool[:20])
        for i, text in enumerate(pool[20:], start=20):
            assert native.add(text) == plain.add(text) == i
            assert _indexing_state(native) == _indexing_state(plain), f"after text {i}"
