"""Exact ROUGE-L near-duplicate search over a growing pool of instructions.

Self-Instruct keeps a new instruction only if its ROUGE-L F-measure against every instruction
already in the pool stays below a threshold (0.7). Scoring the candidate against the whole pool
with ``rouge_score`` costs tens of microseconds per pair in pure Python, i.e. seconds per
candidate at 50k instructions. :class:`RougeLIndex` returns the *same* maximum, bit for bit, in
well under a millisecond by proving that almost all of the pool cannot beat the best match found
so far, and computing the longest common subsequence (LCS) only for the rest.

Score
    Texts are tokenized (``"rouge"``: exactly ``rouge_score``'s tokenizer; ``"unicode"``: see
    below). For token counts ``m`` (pool text) and ``n`` (query) and LCS length ``l``::

        p = l / n;  r = l / m;  f = 2 * p * r / (p + r)      (0.0 when l == 0)

    in this operation order, so the float is the one ``rouge_score`` produces. ``f`` is symmetric
    bit for bit (``2 * x`` is exact, so ``(2p)r == (2r)p``), so which text is the "target" does
    not matter. Mathematically ``f == 2l / (m + n)``, which is increasing in ``l``.

Bound
    An LCS can only use tokens both texts contain, so ``l <= ov <= min(m, n)`` where ``ov`` is the
    size of the multiset intersection of the two token lists, hence ``f <= 2 ov / (m + n)``. To
    count ``ov`` with plain postings, each token occurrence is turned into a *key*
    ``(token, k)`` -- "the k-th occurrence of this token" -- so ``"a b a"`` has the keys
    ``(a,1) (b,1) (a,2)`` and ``ov`` is simply the number of shared keys. Every key has a posting
    array of the ids of the texts holding it (amortised O(1) append, capacity doubling, so
    ``add`` never rebuilds anything).

Pruning order (``nearest``)
    1. The query's keys are sorted from rarest to most common (posting length); ``K`` of them
       occur in the pool, ``n`` is the query's token count.
    2. Prefix rule: with best-so-far ``b``, a text sharing none of the rarest ``K - s`` keys
       shares at most the ``s`` most common ones, so ``f <= 2s / (s + n)``. With the largest
       ``s`` for which that is below ``b``, only the postings of the rarest ``K - s`` keys can
       lead to a better text; those of the ``s`` common keys (``the``, ``a``, ``of`` ...), the
       longest ones, are never scanned.
    3. Deepening rounds, while that prefix is still long: count the postings of the rarest keys
       within a budget (x8 per round), score the few texts sharing the most of them, raise ``b``,
       and recompute ``s``. Near-duplicates share rare words, so ``b`` is usually final here.
    4. Final round: count the prefix postings per text (``acc``; ``np.unique`` or a dense
       ``np.bincount``) and keep the texts with ``2 min(acc + s, m) / (m + n) >= b``. While many
       survive: score the best-bounded few (raising ``b``), then look the survivors up in the
       next common key's postings (binary search; postings are sorted because ids only grow),
       which makes their overlap count one key more exact, and filter again.
    5. The survivors are scored in descending bound order, in growing chunks, with the LCS from
       rapidfuzz's C++ bit-parallel ``LCSseq`` (each token id is one Unicode character, so a text
       is a short str); after each chunk ``b`` rises and the tail is cut again.

Why exact
    A text is discarded only when a *valid upper bound* on its F is below ``b - 1e-9`` while
    some text really scores ``b``. The bound ``2 ov / (m + n)`` is the real-number value of the
    F formula at ``l = ov``; the floats involved are off by a few ulps (~1e-16), which the 1e-9
    slack covers many times over (the slack only keeps a few extra texts). ``b`` never falls, so
    a discarded text cannot even tie the final best: every text that could is scored with the
    exact formula, and among equal floats the smallest id wins.

Unicode tokenizer
    ``rouge_score`` deletes everything outside ``a-z0-9``, so Chinese, Russian or accented text
    has no (or mangled) tokens. ``tokenizer="unicode"`` applies NFKC and case folding, makes
    every CJK ideograph, kana and Hangul syllable its own token, and otherwise takes runs of
    letters, digits and combining marks of any script as words (so ``_`` and punctuation split,
    as in ``rouge_score``). Scripts written without spaces other than CJK (Thai, Khmer ...) come
    out as long words and would need a real segmenter.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Iterable
from functools import cache

import numpy as np
from rapidfuzz.distance import LCSseq
from rapidfuzz.process import cdist

from .errors import ConfigError

__all__ = ["TOKENIZERS", "RougeLIndex", "rouge_l", "tokenize"]

TOKENIZERS: tuple[str, ...] = ("rouge", "unicode")

# Bound slack; see "Why exact" above.
_EPS = 1e-9
# Postings the first deepening round may read (at least the rarest key's); x8 per round.
_SEED_POSTINGS = 2048
# Texts scored exactly per deepening round.
_SEED_TOP = 128
# Below this many survivors, score them rather than tighten their bounds further.
_SCORE_DIRECTLY = 512
# Texts scored before each postings lookup of the final round (must be < _SCORE_DIRECTLY).
_PEEK = 64
# First exact-scoring chunk; later chunks grow 4x.
_FIRST_CHUNK = 64
# extend() groups postings in batches of this many texts to bound temporary memory.
_EXTEND_BATCH = 20_000

_ROUGE_WORD = re.compile(r"[a-z0-9]+")

# CJK ideographs (URO, Ext A, compatibility, Ext B..H), kana and Hangul syllables.
_CJK = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f\U00031350-\U000323af"
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9d\uac00-\ud7af"
)


def _rouge_tokens(text: str) -> list[str]:
    # rouge_score: lower(), [^a-z0-9]+ -> " ", split, keep [a-z0-9]+ tokens. After lower() the
    # tokens are exactly the maximal runs of [a-z0-9] (lower() may turn e.g. U+212A KELVIN SIGN
    # into "k", which rouge_score then keeps too).
    return _ROUGE_WORD.findall(text.lower())


@cache
def _unicode_pattern() -> re.Pattern[str]:
    # Python's \w does not match combining marks (Mn/Mc/Me), which sit inside words in Indic,
    # Arabic, Hebrew ... scripts; collect them once (~0.1 s, only if this tokenizer is used).
    ranges: list[str] = []
    start = prev = -1
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp))[0] == "M":
            if start < 0:
                start = cp
            prev = cp
        elif start >= 0:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
            start = -1
    marks = "".join(ranges)
    return re.compile(f"[{_CJK}]|(?:[^\\W_{_CJK}]|[{marks}])+")


def _unicode_tokens(text: str) -> list[str]:
    return _unicode_pattern().findall(unicodedata.normalize("NFKC", text.casefold()))


def _get_tokenizer(name: str) -> Callable[[str], list[str]]:
    if name == "rouge":
        return _rouge_tokens
    if name == "unicode":
        return _unicode_tokens
    raise ConfigError(
        f"unknown similarity tokenizer {name!r}: use one of {', '.join(map(repr, TOKENIZERS))}"
    )


def tokenize(text: str, tokenizer: str = "rouge") -> list[str]:
    """Tokens of ``text`` as the given tokenizer sees them (``"rouge"`` or ``"unicode"``)."""
    return _get_tokenizer(tokenizer)(text)


def _fmeasure(lcs: int, n_pred: int, n_target: int) -> float:
    # rouge_score's _score_lcs + scoring.fmeasure, same operations in the same order.
    if lcs == 0:
        return 0.0
    precision = lcs / n_pred
    recall = lcs / n_target
    return 2 * precision * recall / (precision + recall)


# Token ids become code points, skipping the surrogate block (rapidfuzz hashes a one-character
# str as its code point and an int as itself, so an id beyond the last code point can still be
# compared exactly by storing that text as a tuple of ints).
_SURROGATES = 0xD800
_CHAR_LIMIT = sys.maxunicode + 1 - 0x800


def _code(tid: int, char_limit: int) -> int:
    if tid >= char_limit:
        return sys.maxunicode + 1 + tid
    return tid if tid < _SURROGATES else tid + 0x800


def rouge_l(a: str, b: str, tokenizer: str = "rouge") -> float:
    """Exact ROUGE-L F-measure of two texts: the float ``rouge_score`` gives (no stemming)."""
    tok = _get_tokenizer(tokenizer)
    ta, tb = tok(a), tok(b)
    if not ta or not tb:
        return 0.0
    ids: dict[str, int] = {}
    ca = [ids.setdefault(t, len(ids)) for t in ta]
    cb = [ids.setdefault(t, len(ids)) for t in tb]
    # Lists of small ints are compared by value: exact, unlike hashing the token strings.
    lcs = int(LCSseq.similarity(ca, cb))
    return _fmeasure(lcs, len(tb), len(ta))


class RougeLIndex:
    """Pool of texts answering "which added text has the highest ROUGE-L F with this one?".

    Ids are insertion order from 0. :meth:`nearest` is exact (the float ``rouge_score`` computes,
    smallest id on ties); see the module docstring for how it avoids scoring the whole pool.
    Not thread-safe.
    """

    # Class attribute so tests can force the tuple-of-ints path without a million tokens.
    _char_limit: int = _CHAR_LIMIT

    def __init__(self, tokenizer: str = "rouge") -> None:
        self._tokenize = _get_tokenizer(tokenizer)
        self._tokenizer_name = tokenizer
        self._texts: list[str] = []
        self._seqs: list[str | tuple[int, ...]] = []  # one char per token, for rapidfuzz
        self._lens = np.zeros(16, dtype=np.int32)  # token count per text (capacity-doubled)
        self._max_len = 0
        self._vocab: dict[str, int] = {}
        self._chars: list[str | int] = []  # token id -> char (or int past the char limit)
        self._occ_keys: list[list[int]] = []  # token id -> key ids of its 1st, 2nd ... occurrence
        # key id -> ids of the texts holding it, ascending (ids only grow), capacity-doubled
        self._post: list[np.ndarray] = []
        self._post_n: list[int] = []  # key id -> used length of _post[key]

    @property
    def tokenizer(self) -> str:
        """Name of the tokenizer this index uses."""
        return self._tokenizer_name

    def __len__(self) -> int:
        return len(self._texts)

    def text(self, i: int) -> str:
        """The original text that was added with id ``i``."""
        if not 0 <= i < len(self._texts):
            raise IndexError(f"no text with id {i} (the index holds {len(self._texts)})")
        return self._texts[i]

    # -- building -------------------------------------------------------------------------

    def _token_id(self, tok: str) -> int:
        tid = self._vocab.get(tok)
        if tid is None:
            tid = len(self._chars)
            self._vocab[tok] = tid
            code = _code(tid, self._char_limit)
            self._chars.append(chr(code) if code <= sys.maxunicode else code)
            self._occ_keys.append([])
        return tid

    def _new_key(self) -> int:
        self._post.append(np.empty(4, dtype=np.int32))
        self._post_n.append(0)
        return len(self._post) - 1

    def _seq(self, tids: list[int]) -> str | tuple[int, ...]:
        chars = [self._chars[t] for t in tids]
        if all(type(c) is str for c in chars):
            return "".join(chars)  # type: ignore[arg-type]
        return tuple(ord(c) if isinstance(c, str) else c for c in chars)

    def _store_text(self, text: str) -> tuple[int, list[int]]:
        """Record ``text``; return its id and its keys (postings not yet updated)."""
        doc = len(self._texts)
        tids = [self._token_id(t) for t in self._tokenize(text)]
        seen: dict[int, int] = {}
        keys: list[int] = []
        occ_keys = self._occ_keys
        for tid in tids:
            k = seen.get(tid, 0)
            seen[tid] = k + 1
            occ = occ_keys[tid]
            if k == len(occ):
                occ.append(self._new_key())
            keys.append(occ[k])
        self._texts.append(text)
        self._seqs.append(self._seq(tids))
        if doc == len(self._lens):
            self._lens = np.concatenate([self._lens, np.zeros_like(self._lens)])
        self._lens[doc] = len(tids)
        self._max_len = max(self._max_len, len(tids))
        return doc, keys

    def _append_postings(self, key: int, docs: np.ndarray) -> None:
        used = self._post_n[key]
        buf = self._post[key]
        end = used + len(docs)
        if end > len(buf):
            new = np.empty(max(end, 2 * len(buf)), dtype=np.int32)
            new[:used] = buf[:used]
            self._post[key] = buf = new
        buf[used:end] = docs
        self._post_n[key] = end

    def add(self, text: str) -> int:
        """Add ``text`` to the pool and return its id (0, 1, 2 ... in insertion order)."""
        doc, keys = self._store_text(text)
        post, post_n = self._post, self._post_n
        for key in keys:
            used = post_n[key]
            buf = post[key]
            if used == len(buf):
                self._append_postings(key, np.array([doc], dtype=np.int32))
            else:
                buf[used] = doc
                post_n[key] = used + 1
        return doc

    def extend(self, texts: Iterable[str]) -> list[int]:
        """Add many texts (same result as calling :meth:`add` on each); return their ids."""
        ids: list[int] = []
        batch_keys: list[int] = []
        batch_docs: list[int] = []

        def flush() -> None:
            if not batch_keys:
                return
            keys = np.array(batch_keys, dtype=np.int64)
            docs = np.array(batch_docs, dtype=np.int32)
            order = np.argsort(keys, kind="stable")  # stable keeps text ids ascending per key
            keys, docs = keys[order], docs[order]
            cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
            starts = np.concatenate(([0], cuts)).tolist()
            ends = np.concatenate((cuts, [len(keys)])).tolist()
            for key, a, b in zip(keys[starts].tolist(), starts, ends, strict=True):
                self._append_postings(key, docs[a:b])
            batch_keys.clear()
            batch_docs.clear()

        try:
            for text in texts:
                doc, keys = self._store_text(text)
                ids.append(doc)
                batch_keys.extend(keys)
                batch_docs.extend([doc] * len(keys))
                if len(ids) % _EXTEND_BATCH == 0:
                    flush()
        finally:  # a bad item must not leave stored texts missing from the postings
            flush()
        return ids

    # -- querying -------------------------------------------------------------------------

    def _score(self, qseq: str | tuple[int, ...], n: int, ids: np.ndarray) -> tuple[float, int]:
        """Best exact F among ``ids`` (non-empty) and the smallest id reaching it."""
        seqs = self._seqs
        if len(ids) <= 4:
            best, best_id = -1.0, -1
            for i in ids.tolist():
                lcs = int(LCSseq.similarity(qseq, seqs[i]))
                f = _fmeasure(lcs, n, int(self._lens[i]))
                if f > best or (f == best and i < best_id):
                    best, best_id = f, i
            return best, best_id
        lcs = cdist([qseq], [seqs[i] for i in ids.tolist()], scorer=LCSseq.similarity,
                    dtype=np.int32, workers=1)[0]  # fmt: skip
        m = self._lens[ids]
        # Same operations and order as _fmeasure; float64 division of small ints is correctly
        # rounded in numpy just as in Python, so the floats are identical.
        with np.errstate(invalid="ignore", divide="ignore"):
            p = lcs / n
            r = lcs / m
            f = 2 * p * r / (p + r)
        f[lcs == 0] = 0.0
        best = f.max()
        return float(best), int(ids[f == best].min())

    def nearest(self, text: str) -> tuple[float, int | None]:
        """Highest ROUGE-L F-measure of ``text`` against the pool, and the id achieving it.

        Exact (equal to ``rouge_score``'s float for that pair); the smallest id wins ties.
        Returns ``(0.0, None)`` when no text in the pool shares a token with ``text``.
        """
        toks = self._tokenize(text)
        n = len(toks)
        if n == 0 or not self._texts:
            return 0.0, None
        vocab, occ_keys, chars = self._vocab, self._occ_keys, self._chars
        seen: dict[int, int] = {}
        qkeys: list[int] = []
        qchars: list[str | int] = []
        for tok in toks:
            tid = vocab.get(tok)
            if tid is None:
                continue  # matches nothing: counts in n, but cannot be in any LCS
            k = seen.get(tid, 0)
            seen[tid] = k + 1
            occ = occ_keys[tid]
            if k < len(occ):
                qkeys.append(occ[k])
            qchars.append(chars[tid])
        if not qkeys:
            return 0.0, None
        qseq: str | tuple[int, ...]
        if all(type(c) is str for c in qchars):
            qseq = "".join(qchars)  # type: ignore[arg-type]
        else:
            qseq = tuple(ord(c) if isinstance(c, str) else c for c in qchars)

        post, post_n = self._post, self._post_n
        qkeys.sort(key=post_n.__getitem__)  # rarest first
        n_keys = len(qkeys)
        cum: list[int] = []  # cum[j]: postings in the j+1 rarest keys
        total = 0
        for k in qkeys:
            total += post_n[k]
            cum.append(total)

        best, best_id = -1.0, -1
        budget, top = _SEED_POSTINGS, _SEED_TOP
        while True:
            # A text sharing none of the rarest n_keys - s keys has F <= 2s/(s+n) < best.
            s = 0
            while s < n_keys and 2 * (s + 1) / (s + 1 + n) < best - _EPS:
                s += 1
            n_prefix = n_keys - s
            if n_prefix == 0:  # defensive: best <= 2K/(K+n) keeps s below K
                return best, best_id
            if n_prefix == 1 or cum[n_prefix - 1] <= 2 * budget:
                break
            # Deepening round: read the rarest keys within budget and score the texts sharing
            # the most of them; a higher best shortens the prefix the final round must read.
            j = 1
            while cum[j] <= budget:
                j += 1
            cand, acc = self._count(qkeys[:j])
            if len(cand) > top:
                m = self._lens[cand]
                rank = acc * 4096 - np.abs(m - n)  # most shared keys, then closest length
                cand = cand[np.argpartition(-rank, top - 1)[:top]]
            f, i = self._score(qseq, n, cand)
            if f > best or (f == best and i < best_id):
                best, best_id = f, i
            budget *= 8

        # Final round: count the prefix keys per text; ov <= acc + rest bounds F from above,
        # rest being the common keys not looked at yet. While many texts survive, look the
        # survivors up in the next common key's (sorted) postings: each lookup lowers rest by
        # one and usually drops most of them, far cheaper than scoring them all.
        n_docs = len(self._texts)
        if cum[n_prefix - 1] * 4 >= n_docs:
            # Most texts are hit: filter the dense counts before gathering anything.
            acc = np.bincount(self._hits(qkeys[:n_prefix]), minlength=n_docs)
            lens = self._lens[:n_docs]
            cand = np.flatnonzero(acc >= self._min_shared(best, n, s)[lens])
            acc, m = acc[cand], lens[cand]
        else:
            cand, acc = self._count(qkeys[:n_prefix])
            m = self._lens[cand]
        rest = s
        while True:
            keep = acc >= self._min_shared(best, n, rest)[m]
            cand, acc, m = cand[keep], acc[keep], m[keep]
            if rest == 0 or len(cand) <= _SCORE_DIRECTLY:
                break
            # Score the texts with the highest bounds first: a higher best makes every later
            # step cheaper (the rounds above often end with a weak best for far-off queries).
            ub = 2 * np.minimum(acc + rest, m) / (m + n)
            f, i = self._score(qseq, n, cand[np.argpartition(-ub, _PEEK - 1)[:_PEEK]])
            if f > best or (f == best and i < best_id):
                best, best_id = f, i
                keep = acc >= self._min_shared(best, n, rest)[m]
                cand, acc, m = cand[keep], acc[keep], m[keep]
            k = qkeys[n_keys - rest]
            p = post[k][: post_n[k]]
            pos = np.minimum(np.searchsorted(p, cand), len(p) - 1)
            acc = acc + (p[pos] == cand)
            rest -= 1
        if not len(cand):  # defensive: the text scoring best always passes its own bound
            return best, best_id
        ub = 2 * np.minimum(acc + rest, m) / (m + n)
        order = np.argsort(-ub, kind="stable")  # stable: ascending ids within equal bounds
        cand, neg_ub = cand[order], -ub[order]

        start, chunk = 0, _FIRST_CHUNK
        while start < len(cand):
            stop = min(start + chunk, len(cand))
            f, i = self._score(qseq, n, cand[start:stop])
            if f > best or (f == best and i < best_id):
                best, best_id = f, i
            # neg_ub ascends: keep what is <= -(best - eps), i.e. bound >= best - eps.
            end = int(np.searchsorted(neg_ub, -(best - _EPS), side="right"))
            start, chunk = stop, chunk * 4
            if end <= start:
                break
            cand, neg_ub = cand[:end], neg_ub[:end]
        return best, best_id

    def _hits(self, keys: list[int]) -> np.ndarray:
        post, post_n = self._post, self._post_n
        return np.concatenate([post[k][: post_n[k]] for k in keys])

    def _count(self, keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Texts holding any of ``keys`` (ascending) and how many of the keys each holds."""
        if len(keys) == 1:
            k = keys[0]
            hits = self._post[k][: self._post_n[k]]
            return hits, np.ones(len(hits), dtype=np.int64)
        hits = self._hits(keys)
        n_docs = len(self._texts)
        if len(hits) * 2 < n_docs:  # measured crossover: sorting wins below ~N/2 hits
            return np.unique(hits, return_counts=True)
        acc = np.bincount(hits, minlength=n_docs)
        cand = np.flatnonzero(acc)
        return cand, acc[cand]

    def _min_shared(self, best: float, n: int, s: int) -> np.ndarray:
        """Per text length m: fewest prefix keys a text must share to possibly reach ``best``.

        Needs min(acc + s, m) >= (best - eps) * (m + n) / 2; impossible lengths get a huge
        value. The slack eps dwarfs the rounding here, so no text that can tie is dropped.
        """
        ms = np.arange(self._max_len + 1)
        need = np.ceil((best - _EPS) * (ms + n) / 2)
        return np.where(ms >= need, np.maximum(need - s, 1), 1 << 30).astype(np.int64)
