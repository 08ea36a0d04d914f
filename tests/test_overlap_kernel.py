"""The native kernel's own contract (selfinstruct/_overlap.c): survivors and exact overlaps
against a direct count, and bad arguments refused with an exception instead of memory errors.
Its exactness inside the search is tested in test_similarity.py, with and without it."""

from __future__ import annotations

import random
from array import array
from typing import Any

import numpy as np
import pytest

from selfinstruct import similarity

kernel = similarity._native_overlap
pytestmark = pytest.mark.skipif(kernel is None, reason="the native kernel is not built (no C compiler)")


def _call(keys: list[int], indptr: np.ndarray, data: np.ndarray, tails: list[Any], n_scan: int, lens: np.ndarray,
          need: np.ndarray, limit: int, runners: int = 0) -> tuple[dict[int, int], list[int]]:
    counts = np.zeros(limit + 3, dtype=np.uint16)
    out = np.empty(limit + 3, dtype=np.int32)
    ov = np.empty(limit + 3, dtype=np.int32)
    room = np.empty(runners, dtype=np.int32)
    k, r = kernel.survivors(np.asarray(keys, dtype=np.int64), indptr, data, tails, n_scan, lens, need, limit,
                            counts, out, ov, room)  # fmt: skip
    assert not counts.any(), "the scratch counts must be left all zero"
    return dict(zip(out[:k].tolist(), ov[:k].tolist(), strict=True)), room[:r].tolist()


@pytest.mark.parametrize("seed", range(40))
def test_survivors_are_the_texts_whose_overlap_reaches_need(seed: int) -> None:
    rng = random.Random(seed)
    n_texts, n_keys = rng.randint(1, 60), rng.randint(1, 12)
    holds = [set(rng.sample(range(n_keys), rng.randint(0, n_keys))) for _ in range(n_texts)]
    lens = np.array([len(h) + rng.randint(0, 3) for h in holds], dtype=np.int32)
    # Postings: CSR for the first texts, tails for the rest (ids in a tail follow the CSR ones).
    split = rng.randint(0, n_texts)
    csr = [[d for d in range(split) if k in holds[d]] for k in range(n_keys)]
    indptr = np.concatenate(([0], np.cumsum([len(c) for c in csr]))).astype(np.int64)
    data = np.array([d for c in csr for d in c], dtype=np.int32)
    if rng.random() < 0.3:  # keys past the CSR arrays have only tails
        indptr = indptr[: rng.randint(1, len(indptr))]
        data = data[: indptr[-1]]
        csr = [c if k + 1 < len(indptr) else [] for k, c in enumerate(csr)]
    tails_by_key = {k: [d for d in range(n_texts) if k in holds[d] and d not in csr[k]] for k in range(n_keys)}
    query = rng.sample(range(n_keys), rng.randint(1, n_keys))
    need = np.array([rng.randint(1, 6) for _ in range(int(lens.max()) + 1)], dtype=np.int32)
    limit = rng.randint(0, n_texts)
    # The caller's guarantee: a text holding none of the first n_scan keys cannot reach need.
    n_scan = len(query) - min(int(need.min()) - 1, len(query))
    tails = [array("i", tails_by_key[k]) if tails_by_key[k] else None for k in query]
    got, runners = _call(query, indptr, data, tails, n_scan, lens, need, limit, runners=3)
    want = {}
    for d in range(limit):
        overlap = len(holds[d] & set(query))
        if overlap and overlap >= need[lens[d]]:
            want[d] = overlap
    assert got == want
    assert len(runners) == len(set(runners)) <= 3
    assert all(d < limit and d not in got and holds[d] & set(query[:n_scan]) for d in runners)


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
