"""Exact ROUGE-L near-duplicate search over a growing pool of instructions.

Self-Instruct keeps a new instruction only if its ROUGE-L F-measure against every instruction
already in the pool stays at or below a threshold (0.7). Scoring the candidate against the whole
pool with ``rouge_score`` costs tens of microseconds per pair in pure Python, i.e. seconds per
candidate at 50k instructions. :class:`RougeLIndex` gives the *same* answers, bit for bit, by
proving that almost all of the pool cannot matter and computing the longest common subsequence
(LCS) only for the rest. Two questions are answered:

* :meth:`RougeLIndex.first_above` / :meth:`RougeLIndex.max_above` /
  :meth:`RougeLIndex.decide` -- "does any text score above ``t``?" (the accept/reject decision;
  ``max_above`` also returns the exact nearest of a near-duplicate, ``decide`` that of any text);
* :meth:`RougeLIndex.nearest` -- "which text scores highest?" (recorded with accepted tasks).

Score
    Texts are tokenized (``"rouge"``: exactly ``rouge_score``'s tokenizer; ``"unicode"``: see
    below). For token counts ``m`` (pool text) and ``n`` (query) and LCS length ``l``::

        p = l / n;  r = l / m;  f = 2 * p * r / (p + r)      (0.0 when l == 0)

    in this operation order, so the float is the one ``rouge_score`` produces. ``f`` is symmetric
    bit for bit (``2 * x`` is exact, so ``(2p)r == (2r)p``), so which text is the "target" does
    not matter. Mathematically ``f == 2l / (m + n)``, which is increasing in ``l``.

Keys and overlap
    An LCS can only use tokens both texts contain, so ``l <= ov <= min(m, n)`` where ``ov`` is the
    size of the multiset intersection of the two token lists. Each token occurrence is turned
    into a *key* ``(token, k)`` -- "the k-th occurrence of this token" -- so ``"a b a"`` has the
    keys ``(a,1) (b,1) (a,2)``, every text is a *set* of keys and ``ov`` is the number of shared
    keys. The first occurrence's key id is the token id.

The decision (``first_above``): prefix filtering, exact thresholds, early exit
    1. *Exact minimal LCS per length.* For the query's ``n`` and each pool length ``m``,
       ``need[m]`` is the smallest ``l <= min(m, n)`` whose float ``f`` is ``> t`` (found by
       evaluating the float formula itself around ``t (m + n) / 2``; the float ``f`` is strictly
       increasing in ``l`` because consecutive values differ by ``2 / (m + n)``, far above
       rounding). Lengths with no such ``l`` are impossible (the length bound: ``m`` must lie
       within about ``[0.54 n, 1.86 n]`` at ``t = 0.7``). No epsilon is involved: ties at
       exactly ``t`` are decided by the same float comparison ``rouge_score`` users make, and
       every later filter compares an upper bound on ``ov`` with ``need[m]`` (integers).
    2. *Prefix filtering* (AllPairs / PPJoin). Keys are put in one global order, rarest first.
       If two key sets share ``>= a`` keys, the first ``|x| - a + 1`` keys of ``x`` and the first
       ``|y| - a + 1`` keys of ``y`` share a key (the shared key with ``a - 1`` shared keys after
       it lies in both). A pool text of length ``m`` can exceed ``t`` with *some* query only if
       ``ov >= alpha[m]``, the smallest ``l`` with float ``f(l, n=l, m) > t`` (``n = l`` is the
       best case: ``f`` falls as ``n`` grows). So each text indexes only its ``m - alpha[m] + 1``
       rarest keys, and a query probes only its ``K - min(need) + 1`` rarest known keys.
    3. *Positional filter, inside the index.* If a text's first shared prefix key is the
       query's ``i``-th and the text's ``j``-th, all shared keys come at or after both, so
       ``ov <= min(K - i, m - j)``. Index entries are sorted by ``(key, m, j)``, so the entries
       passing this for ``need[m]`` are contiguous ranges found by binary search: only those
       are read.
    4. *Bounds from common-key masks.* The 256 most frequent keys (last in the order) get a bit
       in a per-text mask (the 64 most frequent also in every index entry). Shared common keys
       are counted exactly by AND + popcount; shared rare keys are bounded by the hits and the
       positions (rare keys come first in both orders). A first bound uses the entries alone
       (no per-text memory is touched), a second the per-text masks, a third (only when many
       candidates remain) the exact multiset overlap.
    5. *Verification* with the exact LCS (rapidfuzz's C++ bit-parallel ``LCSseq``; each token is
       one character of a short str) and the float formula, best bound first, stopping at the
       first ``f > t``. A dense cluster of hits is seeded: a few texts hit through the rarest
       key are verified first.
    The global order is a snapshot of key frequencies; keys first seen later rank as rarest.
    Any fixed order is correct; the snapshot (and the decision index) is rebuilt when the pool
    has grown 4x, up to 64k texts, so the order stays close to the real frequencies.

``decide`` and the exact nearest through the decision index
    For a duplicate, the exact nearest is the best of the verified candidates: every text
    scoring ``> t`` is among them, so the search goes on past the first hit (cutting
    candidates bounded below the best so far) and returns the maximum, smallest id on ties.
    For an accepted text, a few best-bounded texts that could not exceed ``t`` are scored
    (their best ``b`` is usually the nearest or close), then one exhaustive probe for
    "``f >= b``" (``f`` above the float just below ``b``): if the maximum is ``>= b``, every text
    reaching it is a candidate, so the best found is exact. The index is built (on the first
    ``first_above``/``decide``) for ``min(t, 0.45)``; that probe runs only when ``b >= 0.45``
    (below it, as for most plain prose, it seldom succeeds and costs more than it saves) and
    otherwise the full-postings search below takes over, seeded with ``b``.
    :meth:`RougeLIndex.nearest` goes the same way once the index exists; right after a
    ``first_above``/``max_above`` of the same text on the same pool that found nothing above
    ``t`` (the judge's order: decide, add, then ``nearest(text, before=id)``), it starts from
    that probe's runners-up instead of probing again.

``nearest``: pruning order
    1. The query's keys are sorted from rarest to most common (posting length); ``K`` of them
       occur in the pool, ``n`` is the query's token count.
    2. Prefix rule: with best-so-far ``b``, a text sharing none of the rarest ``K - s`` keys
       shares at most the ``s`` most common ones, so ``f <= 2s / (s + n)``. With the largest
       ``s`` for which that is below ``b``, only the postings of the rarest ``K - s`` keys can
       lead to a better text; those of the ``s`` common keys are never scanned.
    3. Deepening rounds, while that prefix is still long: count the postings of the rarest keys
       within a budget (x8 per round), score the few texts sharing the most of them, raise ``b``,
       and recompute ``s``.
    4. Final round: count the prefix postings per text (``acc``) and keep the texts with
       ``2 min(acc + s, m) / (m + n) >= b``. While many survive: score the best-bounded few,
       then look the survivors up in the next common key's postings (binary search; postings
       are sorted because ids only grow) and filter again. The native kernel looks a key held
       by more than 1/32 of the texts up in its bitset instead (:class:`_Bitsets`); when the
       query's keys are mostly that common, it counts all of them 64 texts at a time from the
       bitsets instead of reading postings (the dense count, see _overlap.c).
    5. The survivors are scored in descending bound order, in growing chunks; after each chunk
       ``b`` rises and the tail is cut again.
    A text is discarded only when a valid upper bound on its F is below ``b - 1e-9`` while some
    text really scores ``b``; the floats in the bound are off by a few ulps (~1e-16), which the
    slack covers many times over. ``b`` never falls, and among equal floats the smallest id wins.

The native kernel (``selfinstruct/_overlap.c``)
    Built at install time when a C compiler is there; otherwise everything above runs on numpy
    alone, with the same answers. The LCS is always rapidfuzz's. Four passes:

    * ``survivors``: from the postings of a query's keys (rarest first), the texts whose count
      of the rarest ones plus the keys not read yet can reach a bar (``need[m]`` per length),
      with their exact overlaps after a lookup in the common keys' postings. It serves the
      decision while the prefix scan reads at most ``_NATIVE_SCAN_MAX`` postings (small pools
      of varied words), or up to ``_NATIVE_FLAT_SCAN_MAX`` when the keys it reads are all about
      equally common (no rare key for the index to prune with), the nearest search of an
      accepted text while its final round reads at most ``_NATIVE_NEAREST_MAX``, and every
      postings count of ``nearest``.
    * ``prefix_hits`` and ``second_bound``: the decision index's probe -- the range lookup with
      the first bound, then the per-text second bound and the runners-up -- in place of numpy's
      dozen passes over the entries, with the same results in the same order.
    * ``verify``: the verification loops (best bound first, the early exit, the cut below the
      best) over the candidates, calling rapidfuzz's ``LCSseq.similarity`` through the scorer
      interface rapidfuzz publishes for native callers (a capsule on the function, version 3,
      the one ``rapidfuzz.process.cdist`` uses): about 60 ns per LCS of a short instruction,
      against 250 ns for a call from Python. With another version of that interface, or texts
      stored as tuples of ints, the Python loops verify.

Memory
    The texts are one UTF-8 ``bytearray`` with offsets, the token keys one int32 array, full
    postings CSR arrays (``indptr``/``data``) plus a tail (a bytearray of int32) per key for the
    texts added since the last merge (merged with ``np.insert`` once it holds 1/64 of the
    postings; 1/256 without the kernel, where every lookup of a key copies its tail), the
    decision index three sorted numpy runs plus a small unsorted one, the masks one uint64 row
    per text. One Python object per text remains: its tokens as a short str, one character each, which rapidfuzz compares
    directly (about 180 MB at 1M instructions; rebuilding them from the key array for each
    verification made every LCS 2-3x slower, and nearest() on plain prose slower than before
    the decision index existed).

Unicode tokenizer
    ``rouge_score`` deletes everything outside ``a-z0-9``, so Chinese, Russian or accented text
    has no (or mangled) tokens. ``tokenizer="unicode"`` applies NFKC and case folding, makes
    every CJK ideograph, kana and Hangul syllable its own token, and otherwise takes runs of
    letters, digits and combining marks of any script as words (so ``_`` and punctuation split,
    as in ``rouge_score``). Scripts written without spaces other than CJK (Thai, Khmer ...) come
    out as long words and would need a real segmenter.
"""

from __future__ import annotations

import codecs
import re
import struct
import sys
import unicodedata
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from itertools import accumulate
from typing import Any, NamedTuple, cast

import numpy as np
from rapidfuzz.distance import LCSseq
from rapidfuzz.process import cdist

from .errors import ConfigError

try:  # built at install time when a C compiler is there (setup.py); numpy does the same otherwise
    from . import _overlap as _native_overlap
except ImportError:  # pragma: no cover - depends on the install
    _native_overlap = None


def _bind_native_lcs() -> bool:
    """Whether the native kernel can call rapidfuzz's LCS itself (its scorer interface, version 3)."""
    if _native_overlap is None:
        return False
    try:
        return bool(_native_overlap.bind_lcs(LCSseq.similarity))
    except Exception:  # noqa: BLE001 - another rapidfuzz: the Python loop verifies instead
        return False


_NATIVE_LCS = _bind_native_lcs()
_INF = float("inf")

__all__ = ["TOKENIZERS", "Decision", "RougeLIndex", "rouge_l", "tokenize"]

TOKENIZERS: tuple[str, ...] = ("rouge", "unicode")

# Bound slack where a float bound on F is compared with a best F (nearest(), and cutting the
# candidates of a duplicate once its best is known); the decision itself compares integers.
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
# Up to this many texts, _score computes F in Python: numpy's per-call overhead exceeds the work.
_SCORE_IN_PYTHON = 64
# extend() stores texts in batches of this many before indexing them (bounds temporaries).
_EXTEND_BATCH = 20_000
# A postings tail is merged into the CSR arrays once it holds max(_TAIL_MIN, 1/_TAIL_SHARE of them).
# Without the kernel each lookup of a key concatenates its tail, which cost more than merging often
# (1/256, measured end to end). The kernel reads tails in place: there 1/64 took 4-6 % off judging
# random words at 100k, and made no difference for instruction text at 52k and 1M.
_TAIL_MIN = 1 << 12
_TAIL_SHARE = 64 if _native_overlap is not None else 256
# A key gets a bitset of the texts holding it once it holds more than 1/_BITSET_SHARE of them
# (from there the bitset is smaller than its postings) and loses it below 1/(2 * _BITSET_SHARE).
# The nearest's last step asks "does text i hold this common key?" of a few survivors: a bit
# test in a few kilobytes instead of a pass over the key's long postings.
_BITSET_SHARE = 32
# Length classes (first length of each) of the texts the bitsets cover: the kernel's dense count
# asks a text of a class for what the shortest length of its class needs. The kernel's own numbers
# (only it keeps bitsets), so that the rows and its classes cannot disagree.
_LENGTH_CLASSES = np.array(_native_overlap.LENGTH_CLASSES if _native_overlap is not None else [0], dtype=np.int64)
# The key order (and with it the decision index) is re-snapshotted when the pool has grown this
# many times since the last snapshot, once it holds at least _SNAPSHOT_MIN texts, and only up
# to _SNAPSHOT_MAX texts: a rebuild stalls add() (about 1 s at 64k texts, 20 s at 1M here), and
# the order of 64k instructions is close enough to that of a million (any order is exact).
_RESNAPSHOT = 4
_SNAPSHOT_MIN = 1024
_SNAPSHOT_MAX = 1 << 16
# Decision path: candidates verified in the first LCS chunk (then x4), and the count above
# which the exact-overlap filter runs first (below it the LCS is as cheap).
_VERIFY_CHUNK = 16
_OVERLAP_MIN = 32
# Unsorted prefix entries kept before they are sorted into the index (scanned per query).
_SMALL_RUN = 2048
# Composite prefix entries: key << 28 | min(m, _M_CAP) << 18 | min(j, 255) << 10 | rest.
_M_CAP = 1023
# decide() finds the nearest of an accepted text through the decision index when it scores at
# least this much (the index is then built for this threshold: longer prefixes, more memory).
_NEAREST_FLOOR = 0.45
# With no verified bar that high, the exact nearest first probes the decision index for "F > this":
# most accepted instructions have a nearest above it (two thirds at 52k), and that probe is
# cheaper than the postings search it then skips; when it finds nothing, its runners-up raise
# the bar of what follows...
_NEAREST_LADDER = 0.55
# ...as long as that share stays above half, over the last ~32 nearests (a moving average):
# for prose or unrelated texts the probe seldom succeeds and tripled the cost of the nearest.
_LADDER_ODDS = 0.5
_LADDER_MEMORY = 32
# ...and only when the postings search from the bar in hand would read at least this many
# postings: below that (small pools) the search is cheaper than the probe. The ladder's cost per
# nearest, instruction text, without this condition / with it: 3k tasks +26 % / +2 %, 15k +9 % /
# +3 %, 52k -8 % / -7 %.
_LADDER_MIN_POSTINGS = 30_000
# Texts that cannot exceed the threshold but have the best bounds, scored by decide() to start
# the nearest search of an accepted text from a good bar.
_RUNNERS_UP = 8
# Above this many prefix hits, verify up to _SEED_SAMPLE of them before bounding them all.
_SEED_HITS = 4096
_SEED_SAMPLE = 32
# The decision goes through the native kernel's postings scan while it reads at most this many
# postings, else through the index (also native: prefix_hits, second_bound). Measured per judged
# task: small pools of varied words favour the scan (0.108 ms at 5,000 against 0.146 through the
# index alone), 52k instructions the index (0.186 against 0.196 at 20,000).
_NATIVE_SCAN_MAX = 5_000
# Past that, the scan still decides while it reads at most this many postings and the keys it
# reads are all about equally common (the rarest has at least _FLAT_SHARE of their mean count):
# the index prunes through rare keys, and there are none (vocabularies of a few hundred words).
# Per decision, each query both ways in turn: random words 0.117 -> 0.089 ms at 52k, 0.215 ->
# 0.184 at 150k; instruction text (0.089 / 0.061 at 52k) and sentences unchanged: the keys they
# scan include rare ones.
_NATIVE_FLAT_SCAN_MAX = 100_000
_FLAT_SHARE = 0.5
# The nearest of an accepted text goes through the native postings search rather than a probe
# of the index when its final round reads at most this many postings.
_NATIVE_NEAREST_MAX = 100_000
# With the native kernel, counting postings is several times cheaper than scoring texts: fewer
# texts scored per deepening round, and the final round starts with a prefix this many times
# longer (measured: the nearest of accepted instructions 0.51 -> 0.39 ms at 52k, 1.7 -> 1.5 ms
# at 1M with 8). Since the dense count (_overlap.c) reads common keys' bitsets, a long prefix
# costs little more: deepening rounds only for very long ones (8 -> 64: random words at 100k
# 131 -> 86 us, instructions at 52k 109 -> 95 us, at 300k 352 -> 313 us). Not without a bar at
# all (best <= 0): then the final round would keep every text sharing a key (257 -> 761 us).
_NATIVE_SEED_TOP = 32
_NATIVE_PREFIX_X = 64
# The room for a native probe's entries is kept between queries up to this many (20 bytes each).
_HITS_KEPT = 1 << 20
# Entries per chunk when building CSR postings (bounds temporaries at 1M texts).
_BUILD_CHUNK = 1 << 21
# 64-bit words of the per-text bitmask of the most frequent keys, and how many keys get a bit.
_COMMON_WORDS = 4
_N_COMMON = 64 * _COMMON_WORDS
# "Impossible" in the minimal-LCS tables.
_BIG = 1 << 30

_EMPTY = np.empty(0, dtype=np.int32)
_EMPTY_COMP = np.empty(0, dtype=np.int64)
_EMPTY_TOP = np.empty(0, dtype=np.uint64)
_ONES = np.ones(_COMMON_WORDS, dtype=np.int64)
# Building one text's masks and prefix entries in Python (add()): each common key's bit, and
# each prefix position's bits in an entry (positions past 255 share 255's).
_BITS = [1 << b for b in range(_N_COMMON)]
_WORD = (1 << 64) - 1
_J_BITS = [j << 10 for j in range(256)]
# Token codes as UTF-32 in native byte order: one str character per token (codes of keys are
# below 2**31, and past the last code point only when the tuple path is on).
_U4 = np.dtype("=u4")
_UTF32 = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
# The same from an array of 4-byte unsigned ints (one text in add(): cheaper than numpy).
_U4_ARRAY = "I" if array("I").itemsize == 4 else "L"
_decode_utf32 = codecs.utf_32_le_decode if sys.byteorder == "little" else codecs.utf_32_be_decode

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




class Decision(NamedTuple):
    """Verdict of :meth:`RougeLIndex.decide` with the exact nearest text of the pool."""

    duplicate: bool  # some text scores strictly above the threshold
    score: float  # exact ROUGE-L F of the nearest text (the float rouge_score computes)
    id: int | None  # nearest text (smallest id on ties); None when no text shares a token


class _Vec:
    """Append-only numpy array with capacity doubling (amortised O(1) appends, no objects)."""

    __slots__ = ("a", "n")

    def __init__(self, dtype: type, first: int | None = None) -> None:
        self.a: np.ndarray = np.zeros(16, dtype=dtype)
        self.n = 0
        if first is not None:
            self.append(first)

    def reserve(self, size: int) -> None:
        if size > len(self.a):
            # x1.25: amortised O(1) still, and at most a quarter of a big array unused.
            new = np.zeros(max(size, len(self.a) + (len(self.a) >> 2) + 16), dtype=self.a.dtype)
            new[: self.n] = self.a[: self.n]
            self.a = new

    def append(self, x: int) -> None:
        n = self.n
        if n == len(self.a):
            self.reserve(n + 1)
        self.a[n] = x
        self.n = n + 1

    def extend(self, xs: np.ndarray | list[int]) -> None:
        end = self.n + len(xs)
        self.reserve(end)
        self.a[self.n : end] = xs
        self.n = end


class _Postings:
    """Key -> ascending text ids: CSR arrays plus a tail of the texts added since the last merge.

    Ids only grow, so a key's tail ids all follow its CSR ids and ``get`` is always sorted.
    The tail is one bytearray of native int32 per key (the native kernel appends to it in place;
    ``np.frombuffer`` reads it without a copy); :meth:`merge` moves it into the CSR arrays with
    one ``np.insert``.
    With ``bitsets``, the most common keys also keep a bitset of the texts holding them
    (:class:`_Bitsets`), for the texts the CSR arrays held at the last merge (updated by merge).
    """

    __slots__ = ("indptr", "data", "tail", "tail_n", "bitsets")

    def __init__(self, bitsets: bool = False) -> None:
        self.indptr = np.zeros(1, dtype=np.int64)  # covers keys < len(indptr) - 1
        self.data = _EMPTY
        self.tail: dict[int, bytearray] = {}
        self.tail_n = 0
        self.bitsets = _Bitsets() if bitsets else None

    @classmethod
    def build(cls, keys: np.ndarray, docs: np.ndarray, n_keys: int, n_docs: int, lens: np.ndarray,
              bitsets: bool = False) -> _Postings:  # fmt: skip
        """From (key, doc) pairs in non-decreasing doc order, doc < n_docs; chunked to bound temporaries.
        ``lens``: the texts' lengths (for the bitsets' length classes)."""
        self = cls(bitsets)
        counts = np.bincount(keys, minlength=n_keys)
        indptr = np.zeros(n_keys + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        data = np.empty(len(keys), dtype=np.int32)
        cursor = indptr[:-1].copy()
        for a in range(0, len(keys), _BUILD_CHUNK):
            k = keys[a : a + _BUILD_CHUNK]
            order = np.argsort(k, kind="stable")  # stable: docs stay ascending per key
            ks = k[order]
            cut = np.flatnonzero(ks[1:] != ks[:-1]) + 1
            first = np.concatenate(([0], cut))
            sizes = np.diff(np.concatenate((first, [len(ks)])))
            dest = cursor[ks] + (np.arange(len(ks)) - np.repeat(first, sizes))
            data[dest] = docs[a : a + _BUILD_CHUNK][order]
            cursor[ks[first]] += sizes
        self.indptr, self.data = indptr, data
        if self.bitsets is not None:
            self.bitsets.update(indptr, data, n_docs, lens)
        return self

    def get(self, key: int) -> np.ndarray:
        """Ascending ids of the texts holding ``key`` (may be a view: do not modify)."""
        ip = self.indptr
        base = self.data[ip[key] : ip[key + 1]] if key + 1 < len(ip) else _EMPTY
        t = self.tail.get(key)
        if t is None:
            return base
        return np.concatenate((base, np.frombuffer(t, dtype=np.int32)))  # copies: no export kept

    def append(self, keys: list[int], doc: int) -> None:
        """Add text ``doc`` (above every id so far) to the tails of its distinct ``keys``."""
        tail = self.tail
        one = struct.pack("i", doc)
        for key in keys:
            t = tail.get(key)
            if t is None:
                tail[key] = bytearray(one)
            else:
                t += one
        self.tail_n += len(keys)

    def wants_merge(self) -> bool:
        return self.tail_n > max(_TAIL_MIN, len(self.data) // _TAIL_SHARE)

    def merge(self, n_keys: int, n_docs: int, lens: np.ndarray) -> None:
        """Move the tails into the CSR arrays; ``n_docs``: the texts added so far, ``lens`` their lengths."""
        ip = self.indptr
        if len(ip) < n_keys + 1:
            ip = np.concatenate((ip, np.full(n_keys + 1 - len(ip), ip[-1], dtype=np.int64)))
        added = None
        if self.tail:
            keys = np.array(sorted(self.tail), dtype=np.int64)
            klist = keys.tolist()
            counts = np.array([len(self.tail[k]) >> 2 for k in klist], dtype=np.int64)
            values = np.frombuffer(b"".join(self.tail[k] for k in klist), np.int32)
            # Inserting at the end of each key's block keeps every key's ids ascending.
            self.data = np.insert(self.data, np.repeat(ip[keys + 1], counts), values)
            grow = np.zeros(n_keys + 1, dtype=np.int64)
            grow[keys + 1] = counts
            ip = ip + np.cumsum(grow)
            added = keys, counts, values
        self.indptr = ip
        self.tail = {}
        self.tail_n = 0
        if self.bitsets is not None:
            self.bitsets.update(ip, self.data, n_docs, lens, added)


class _Bitsets:
    """A row of bits per common key (see _BITSET_SHARE): bit i & 7 of byte i >> 3 is set when
    text i holds the key, for every text below ``cover``. One matrix, so that a merge sets the
    bits of all its new postings with one scatter, whatever the number of keys. ``lengths``: a
    row per length class (_LENGTH_CLASSES) marking the texts below ``cover`` of that class."""

    __slots__ = ("rows", "lengths", "slot", "row_of", "free", "cover")

    def __init__(self) -> None:
        self.rows = np.zeros((0, 0), dtype=np.uint8)
        self.lengths = np.zeros((len(_LENGTH_CLASSES), 0), dtype=np.uint8)
        self.slot = np.zeros(0, dtype=np.int64)  # key -> its row, or -1
        self.row_of: dict[int, np.ndarray] = {}  # key -> its row (a view of rows)
        self.free: list[int] = []
        self.cover = 0

    def update(self, indptr: np.ndarray, data: np.ndarray, n_docs: int, lens: np.ndarray,
               added: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:  # fmt: skip
        """Cover the texts below ``n_docs``, all in the CSR arrays ``indptr``/``data`` now, of
        lengths ``lens``.
        ``added``: (keys, counts, ids) of the postings merged since the last cover, ids grouped
        by key. Keys held by more than 1/_BITSET_SHARE of the texts get a row, and lose it below
        half that."""
        n_keys = len(indptr) - 1
        if len(self.slot) < n_keys:
            self.slot = np.concatenate((self.slot, np.full(n_keys - len(self.slot), -1, dtype=np.int64)))
        width = (n_docs + 7) >> 3
        if self.rows.shape[1] < width:  # x1.25 and a little: a copy every few merges
            self._resize(len(self.rows), width + (width >> 2) + 64)
        if n_docs > self.cover:
            new = np.arange(self.cover, n_docs, dtype=np.int64)
            cls = np.searchsorted(_LENGTH_CLASSES, lens[self.cover : n_docs], side="right") - 1
            np.bitwise_or.at(self.lengths.reshape(-1), cls * self.lengths.shape[1] + (new >> 3),
                             (1 << (new & 7)).astype(np.uint8))  # fmt: skip
        if added is not None and self.row_of:
            keys, counts, ids = added
            rows = np.repeat(self.slot[keys], counts)
            mine = rows >= 0
            if mine.any():
                at = ids[mine].astype(np.int64)
                flat = rows[mine] * self.rows.shape[1] + (at >> 3)
                # Each (row, text) is new, so the bits OR-ed into one byte are distinct.
                np.bitwise_or.at(self.rows.reshape(-1), flat, (1 << (at & 7)).astype(np.uint8))
        df = np.diff(indptr)
        for key in [k for k in self.row_of if df[k] * 2 * _BITSET_SHARE < n_docs]:
            self.free.append(int(self.slot[key]))  # its next key overwrites the whole row
            self.slot[key] = -1
            del self.row_of[key]
        for key in np.flatnonzero((df * _BITSET_SHARE > n_docs) & (self.slot[:n_keys] < 0)).tolist():
            if not self.free:
                self._resize(len(self.rows) + max(8, len(self.rows) >> 2), self.rows.shape[1])
            row = self.free.pop()
            marks = np.zeros(self.rows.shape[1] * 8, dtype=bool)
            marks[data[indptr[key] : indptr[key + 1]]] = True
            self.rows[row] = np.packbits(marks, bitorder="little")
            self.slot[key] = row
            self.row_of[key] = self.rows[row]
        self.cover = n_docs

    def _resize(self, n_rows: int, width: int) -> None:
        old = self.rows
        self.rows = np.zeros((n_rows, width), dtype=np.uint8)
        self.rows[: len(old), : old.shape[1]] = old
        if self.lengths.shape[1] != width:
            lengths, self.lengths = self.lengths, np.zeros((len(_LENGTH_CLASSES), width), dtype=np.uint8)
            self.lengths[:, : lengths.shape[1]] = lengths
        self.free.extend(range(n_rows - 1, len(old) - 1, -1))
        self.row_of = {k: self.rows[int(self.slot[k])] for k in self.row_of}


class _PrefixIndex:
    """The prefix keys of every text, sorted by ``key << 28 | m << 18 | j << 10 | rest``.

    ``m`` is the text's token count (capped at _M_CAP), ``j`` the key's position in the text's
    prefix (capped at 255) and ``rest`` how many of the text's keys are common but not among
    the 64 most frequent. Sorting by that value groups each key's entries by text length and
    then by position, so the entries a query can use -- for its key at position ``i``, the
    lengths ``m`` with ``need[m] <= K - i`` and positions ``j <= m - need[m]`` -- are
    contiguous ranges found by binary search: nothing the positional filter would drop is
    read. Each entry also carries the text's id and its bitmask of the 64 most frequent keys,
    so a first bound is computed from the entries alone, without touching per-text arrays.

    Three runs keep appends cheap: ``main`` (sorted), ``mid`` (sorted, merged into ``main``
    when it reaches 1/16 of it) and ``small`` (unsorted appends, up to _SMALL_RUN entries,
    scanned; then sorted and inserted into ``mid``). ``small`` is three bytearrays of native
    int64, uint64 and int32 (the native kernel appends to them in place).
    """

    __slots__ = ("runs", "small")

    def __init__(self, comp: np.ndarray, doc: np.ndarray, top_of_doc: np.ndarray) -> None:
        # One array at a time, so that a 1M-text build peaks at a few hundred MB.
        order = np.argsort(comp, kind="stable")
        comp = comp[order]
        doc = doc[order]
        del order
        self.runs = [(comp, top_of_doc[doc], doc), (_EMPTY_COMP, _EMPTY_TOP, _EMPTY)]
        self.small = (bytearray(), bytearray(), bytearray())

    def add(self, comps: list[int], top: int, doc: int) -> None:
        sc, st, sd = self.small
        n = len(comps)
        sc += struct.pack(f"{n}q", *comps)
        st += struct.pack("Q", top) * n
        sd += struct.pack("i", doc) * n
        self.after_add()

    def after_add(self) -> None:
        """Moves the small run into the sorted ones once it holds _SMALL_RUN entries."""
        sc, st, sd = self.small
        if len(sc) < 8 * _SMALL_RUN:
            return
        comp = np.frombuffer(sc, np.int64).copy()
        top_a, doc_a = np.frombuffer(st, np.uint64).copy(), np.frombuffer(sd, np.int32).copy()
        self.small = (bytearray(), bytearray(), bytearray())
        (main, mid) = self.runs
        for run in (mid, main):  # into mid; then mid into main once it is 1/16 of it
            order = np.argsort(comp, kind="stable")
            comp, top_a, doc_a = comp[order], top_a[order], doc_a[order]
            at = np.searchsorted(run[0], comp, side="right")
            comp = np.insert(run[0], at, comp)
            top_a = np.insert(run[1], at, top_a)
            doc_a = np.insert(run[2], at, doc_a)
            if run is mid and len(comp) * 16 < len(main[0]):
                self.runs = [main, (comp, top_a, doc_a)]
                return
        self.runs = [(comp, top_a, doc_a), (_EMPTY_COMP, _EMPTY_TOP, _EMPTY)]

    def lookup(self, lows: np.ndarray, highs: np.ndarray, tags: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """Entries in the sorted, disjoint ranges [lows[r], highs[r]]: comp, top, doc, tags[r]."""
        parts = []
        for comp, top, doc in self.runs:
            if not len(comp):
                continue
            a = np.searchsorted(comp, lows, side="left")
            cnt = np.searchsorted(comp, highs, side="right") - a
            ends = np.cumsum(cnt)
            total = int(ends[-1])
            if total:
                idx = np.arange(total) + np.repeat(a - ends + cnt, cnt)
                parts.append((comp[idx], top[idx], doc[idx], np.repeat(tags, cnt)))
        sc, st, sd = self.small
        if len(sc):
            c = np.frombuffer(sc, dtype=np.int64)
            r = np.searchsorted(lows, c, side="right") - 1
            ok = (r >= 0) & (c <= highs[r])  # the ranges are disjoint and sorted
            if ok.any():
                parts.append((c[ok], np.frombuffer(st, dtype=np.uint64)[ok],
                              np.frombuffer(sd, dtype=np.int32)[ok], tags[r[ok]]))  # fmt: skip
            del c  # release the buffer export before the next append
        if not parts:
            return _EMPTY_COMP, _EMPTY_TOP, _EMPTY, _EMPTY_COMP
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(x) for x in zip(*parts))  # type: ignore[return-value]


class _Query:
    """A tokenized query: token count, known keys (token order), known token ids (token order)."""

    __slots__ = ("n", "keys", "tids", "by_ord", "ords", "by_df", "cum", "_seq")

    def __init__(self, n: int, keys: list[int], tids: list[int]) -> None:
        self.n = n
        self.keys = keys
        self.tids = tids  # tokens the pool knows; the others cannot be in any LCS
        self.by_ord: np.ndarray | None = None  # keys, rarest first
        self.ords: np.ndarray | None = None  # their places in the order
        # keys from fewest to most postings, and those counts (the pool does not grow during a query)
        self.by_df: tuple[list[int], list[int]] | None = None
        self.cum: list[int] | None = None  # cum[j]: postings of the j + 1 rarest keys
        self._seq: str | tuple[int, ...] | None = None


def _common_allowed(n: int, best: float, n_keys: int) -> int:
    """The largest s <= n_keys for which a text sharing only s keys with a query of n tokens
    has F <= 2s/(s+n) < best: the query's s most common keys cannot lead to a better text."""
    s = 0
    while s < n_keys and 2 * (s + 1) / (s + 1 + n) < best - _EPS:
        s += 1
    return s


def _f_vec(lcs: np.ndarray, n: int, m: np.ndarray) -> np.ndarray:
    # _fmeasure's operations in its order; float64 division of small ints is correctly rounded
    # in numpy as in Python, so every element is the float rouge_score computes.
    lf = lcs.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = lf / n
        r = lf / m
        f = 2 * p * r / (p + r)
    f[lcs == 0] = 0.0
    return f


def _min_lcs_above(t: float, n: int | None, m: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per length ``m``: the smallest ``l <= min(n, m)`` whose float F(l, n, m) is ``> t``, else _BIG.

    ``n=None`` means ``n = l`` (the best case over all query lengths, for the index prefixes).
    ``x`` is the real-number solution of ``F = t`` (the exact answer is ``floor(x) + 1``); the
    float formula is evaluated on ``floor(x) - 1 ... floor(x) + 2`` and the smallest passing value
    kept. F rises by at least ``1 / (2 max(m, n) + 1)`` per step of ``l``, far above rounding, so
    the passing values are exactly the ones from the true threshold on, and that threshold lies
    inside this window whatever the rounding of ``x``.
    """
    base = np.floor(x).astype(np.int64) - 1
    out = np.full(len(m), _BIG, dtype=np.int64)
    for d in (3, 2, 1, 0):
        ls = base + d
        nn = ls if n is None else n
        ok = (ls >= 1) & (ls <= np.minimum(nn, m))
        with np.errstate(invalid="ignore", divide="ignore"):
            lf = ls.astype(np.float64)
            p = lf / nn
            r = lf / m
            f = 2 * p * r / (p + r)
        ok &= f > t
        out[ok] = ls[ok]
    return out


class _NeedTable:
    """need[m] for one (query length, threshold), with the query's range templates per K."""

    __slots__ = ("need", "need32", "amin", "_nm", "_mj", "_jmax", "capped", "_by_k", "span_need", "span_jmax")

    def __init__(self, need: np.ndarray) -> None:
        self.need = need
        self.need32 = need.astype(np.int32)  # for the native kernel (_BIG fits)
        self.amin = int(need.min())
        ms = np.flatnonzero(need < _BIG)
        nm = need[ms]
        jmax = np.minimum(ms - nm, 255)
        self.capped = bool(len(ms)) and ms[-1] >= _M_CAP
        if self.capped:
            # One bucket holds every text of _M_CAP tokens or more: read it whole (any j) for
            # the weakest requirement among those lengths; the exact filter follows.
            c = np.searchsorted(ms, _M_CAP)
            ms, nm, jmax = ms[: c + 1].copy(), nm[: c + 1].copy(), jmax[: c + 1].copy()
            ms[c], nm[c], jmax[c] = _M_CAP, need[_M_CAP:].min(), 255
        # Range bounds in the composite: m << 18 from j = 0; up to j = jmax, any rest.
        self._nm, self._mj, self._jmax = nm, ms << 18, (jmax << 10) | 1023
        self._by_k: dict[int, tuple[np.ndarray, ...]] = {}
        # Per length bucket of the index: what a probe key's range of that length asks (need at
        # most its K - i, j at most jmax); a length with no range asks the impossible, and so
        # does the last entry, which stands for every longer bucket.
        size = int(ms[-1]) + 2 if len(ms) else 1
        self.span_need = np.full(size, _BIG, dtype=np.int64)
        self.span_jmax = np.full(size, -1, dtype=np.int64)
        self.span_need[ms], self.span_jmax[ms] = nm, jmax

    def ranges(self, n_keys: int) -> tuple[np.ndarray, ...]:
        """(probe index i, first comp, last comp, K - i): one span per probe key that can pass,
        from its shortest to its longest length with a range (comps below the key's own bits).

        A key's range of each length (m from j = 0 to jmax, any rest) holds ~10 entries, so the
        lookups would cost more than the reading: one span per key is read instead, and an entry
        in it counts only when its length's range holds it (span_need, span_jmax; see
        _overlap.c's prefix_hits).
        """
        hit = self._by_k.get(n_keys)
        if hit is None:
            qb = np.arange(n_keys, self.amin - 1, -1)  # K - i for probe keys i = 0 .. K - amin
            passes = self._nm[None, :] <= qb[:, None]  # probe key x listed length
            pi = np.flatnonzero(passes.any(axis=1))
            first = passes[pi].argmax(axis=1)
            last = passes.shape[1] - 1 - passes[pi, ::-1].argmax(axis=1)
            hit = self._by_k[n_keys] = (pi, self._mj[first], self._mj[last] | self._jmax[last], qb[pi])
        return hit


class RougeLIndex:
    """Pool of texts answering "is any added text above ROUGE-L F ``t``?" and "which is nearest?".

    Ids are insertion order from 0. Every answer is exact: the float ``rouge_score`` computes,
    the smallest id on ties. See the module docstring for how it avoids scoring the whole pool.
    Not thread-safe.
    """

    # Class attribute so tests can force the tuple-of-ints path without a million tokens.
    _char_limit: int = _CHAR_LIMIT
    # The native kernel (selfinstruct/_overlap.c), or None: then the prefix index and numpy
    # answer the same questions. Class attribute so tests can run both.
    _native: Any = _native_overlap

    def __init__(self, tokenizer: str = "rouge") -> None:
        self._tokenize = _get_tokenizer(tokenizer)
        self._tokenizer_name = tokenizer
        self._last_tokens: tuple[str, list[str]] = ("", [])  # see tokens()
        self._n = 0
        self._buf = bytearray()  # every text, UTF-8 (surrogatepass), back to back
        self._text_off = _Vec(np.int64, 0)  # text i is _buf[_text_off[i]:_text_off[i + 1]]
        self._keys = _Vec(np.int32)  # the keys of every text in token order, back to back
        self._tok_off = _Vec(np.int64, 0)  # text i's tokens are [_tok_off[i], _tok_off[i + 1])
        self._lens = _Vec(np.int32)  # token count per text
        # Per text, its tokens as one character each (a tuple of ints past the last code point):
        # what rapidfuzz compares. Rebuilding these from _keys per query cost 2-3x the LCS itself.
        self._seqs: list[str | tuple[int, ...]] = []
        self._max_len = 0
        self._vocab: dict[str, int] = {}  # token -> key of its first occurrence (= token id)
        self._more: dict[tuple[int, int], int] = {}  # (token id, k >= 2) -> key
        self._n_keys = 0
        self._key_code = _Vec(np.int64)  # key -> code point of its token
        self._code_list: list[int] = []  # the same as Python ints, caught up by _seq_of (add())
        # Per key for add(), from _ord and the common range: see _order_lists.
        self._placed: list[int] = []
        self._key_bits: list[int] = []
        self._placed_stamp: tuple[int, int, int] | None = None
        self._df = _Vec(np.int32)  # key -> texts holding it (= full postings length)
        self._ord = _Vec(np.int64)  # key -> place in the global order (lower = rarer)
        self._big = False  # some code is past the last code point: LCS on tuples of ints
        self._full = _Postings(self._native is not None)  # every key of every text
        # Decision path, built on first use: prefix index for threshold _pre_t, the common-key
        # masks (keys with _ord >= _c0 are common; bit = _ord - _c0) and their counts.
        self._pre: _PrefixIndex | None = None
        self._pre_t = 1.0
        self._alpha = np.zeros(1, dtype=np.int64)  # per length: min overlap to exceed _pre_t
        self._c0 = self._c64 = 0
        self._cm = np.zeros((16, _COMMON_WORDS), dtype=np.uint64)  # text -> common-key mask
        self._ncommon = _Vec(np.int16)  # text -> how many of its keys are common
        self._snap_n = 0  # pool size when the key order was last snapshotted
        self._decision_t = 1.0  # threshold of the last first_above()/decide(), for nearest()
        # (text, pool size, t, best F, id) of the last first_above()/max_above() that found
        # nothing above t: the best runner-up it verified, a bar for nearest() to start from.
        self._hint: tuple[str, int, float, float, int] | None = None
        self._need_cache: dict[tuple[int, float], _NeedTable] = {}
        self._ladder_odds = _LADDER_ODDS  # share of recent nearests above _NEAREST_LADDER
        self._mark = np.zeros(16, dtype=np.uint8)  # scratch: 1 at the query's keys
        # Native kernel scratch: per-text counts (kept all zero between calls), ids, overlaps.
        self._counts = np.zeros(0, dtype=np.uint16)
        self._out = self._out_ov = np.zeros(0, dtype=np.int32)
        self._hit_doc = np.zeros(0, dtype=np.int32)  # and the decision index's entries kept
        self._hit_qi = self._hit_j = np.zeros(0, dtype=np.int64)

    @property
    def tokenizer(self) -> str:
        """Name of the tokenizer this index uses."""
        return self._tokenizer_name

    def __len__(self) -> int:
        return self._n

    def text(self, i: int) -> str:
        """The original text that was added with id ``i``."""
        if not 0 <= i < self._n:
            raise IndexError(f"no text with id {i} (the index holds {self._n})")
        off = self._text_off.a
        return self._buf[off[i] : off[i + 1]].decode("utf-8", "surrogatepass")

    # -- building -------------------------------------------------------------------------

    def _new_key(self, code: int) -> int:
        key = self._n_keys
        self._n_keys += 1
        self._key_code.append(code)
        self._df.append(0)
        self._ord.append(-1 - key)  # after a snapshot, new keys rank rarest (any order is exact)
        if code > sys.maxunicode:
            self._big = True
        return key

    def tokens(self, text: str) -> list[str]:
        """``text``'s tokens as this pool's tokenizer sees them (do not modify the list). The last
        text's are kept: a decision, then the add of the same text, tokenize it once."""
        last_text, last = self._last_tokens
        if text == last_text:
            return last
        toks = self._tokenize(text)
        self._last_tokens = (text, toks)
        return toks

    def _keys_for(self, toks: list[str]) -> list[int]:
        """Keys of a text being added (creating unseen tokens and occurrence keys)."""
        vocab = self._vocab
        found = list(map(vocab.get, toks))
        if None in found:
            for j, tok in enumerate(toks):
                if found[j] is None:
                    tid = vocab.get(tok)  # an earlier position may have created it
                    if tid is None:
                        tid = vocab[tok] = self._new_key(_code(self._n_keys, self._char_limit))
                    found[j] = tid
        tids = cast("list[int]", found)
        if len(set(tids)) == len(tids):
            return tids
        more = self._more
        seen: set[int] = set()
        counts: dict[int, int] = {}  # occurrences so far of the tokens seen more than once
        keys = tids  # a fresh list: a repeated token's place gets its occurrence key
        for j, tid in enumerate(tids):
            if tid not in seen:
                seen.add(tid)
                continue
            k = counts[tid] = counts.get(tid, 1) + 1
            key = more.get((tid, k))
            if key is None:
                key = more[(tid, k)] = self._new_key(int(self._key_code.a[tid]))
            keys[j] = key
        return keys

    def _store(self, texts: list[str], key_lists: list[list[int]]) -> None:
        """Append texts and their keys to the flat arrays (not yet to the postings)."""
        if not texts:
            return
        lens = [len(k) for k in key_lists]
        flat = [k for ks in key_lists for k in ks]
        blobs = [t.encode("utf-8", "surrogatepass") for t in texts]
        self._buf += b"".join(blobs)
        self._text_off.extend(self._text_off.a[self._n] + np.cumsum([len(b) for b in blobs]))
        self._tok_off.extend(self._tok_off.a[self._n] + np.cumsum(lens))
        self._lens.extend(lens)
        self._keys.extend(flat)
        self._seqs.extend(self._seqs_of(np.array(flat, dtype=np.int64), lens))
        counts = np.bincount(np.array(flat, dtype=np.int64), minlength=self._n_keys)
        self._df.a[: self._n_keys] += counts.astype(np.int32)
        self._n += len(texts)
        if max(lens) > self._max_len:
            self._max_len = max(lens)
            self._need_cache.clear()
            if self._pre is not None:
                self._alpha = self._alpha_table(self._pre_t)

    def _store_one(self, text: str, keys: list[int]) -> None:
        """_store for one text, without the batch machinery (add() is on the judge's path)."""
        m = len(keys)
        buf = self._buf
        buf += text.encode("utf-8", "surrogatepass")
        # The texts and the keys are back to back: the offsets are the lengths so far.
        self._text_off.append(len(buf))
        flat = self._keys
        self._tok_off.append(flat.n + m)
        self._lens.append(m)
        if self._native is not None:  # the keys stored and counted in the same call (distinct keys)
            flat.reserve(flat.n + m)
            seq = self._native.seq_of(keys, self._key_code.a, flat.a, flat.n, self._df.a)
            flat.n += m
            self._seqs.append(seq if seq is not None else self._seq_of(keys))
        else:
            self._seqs.append(self._seq_of(keys))
            if m:
                ka = np.array(keys, dtype=np.int64)
                flat.extend(ka)
                self._df.a[ka] += 1  # a text's keys are distinct
        self._n += 1
        if m > self._max_len:
            self._max_len = m
            self._need_cache.clear()
            if self._pre is not None:
                self._alpha = self._alpha_table(self._pre_t)

    def _seqs_of(self, flat_keys: np.ndarray, lens: list[int]) -> list[str | tuple[int, ...]]:
        """The LCS sequences of texts whose keys are ``flat_keys`` back to back, ``lens`` each."""
        codes = self._key_code.a[flat_keys]
        ends = np.cumsum(lens).tolist()
        starts = [0, *ends[:-1]]
        if len(codes) and int(codes.max()) > sys.maxunicode:
            flat = codes.tolist()
            return [tuple(flat[a:b]) for a, b in zip(starts, ends, strict=True)]
        # One decode for all texts: every code is a valid scalar value (no surrogates).
        s = codes.astype(_U4).tobytes().decode(_UTF32)
        return [s[a:b] for a, b in zip(starts, ends, strict=True)]

    def _seq_of(self, keys: list[int]) -> str | tuple[int, ...]:
        """``_seqs_of`` for one text, from Python ints (numpy costs more than the work for ~20 keys)."""
        if self._native is not None:
            seq = self._native.seq_of(keys, self._key_code.a)
            if seq is not None:
                return seq
        codes = self._code_list
        if len(codes) < self._n_keys:  # the keys made since the last call (codes never change)
            codes.extend(self._key_code.a[len(codes) : self._n_keys].tolist())
        cs = [codes[k] for k in keys]
        if self._big and cs and max(cs) > sys.maxunicode:
            return tuple(cs)
        return _decode_utf32(array(_U4_ARRAY, cs))[0]  # no code is a surrogate

    def _index(self, doc: int, keys: list[int]) -> None:
        """Add one stored text to the postings (tails) and, once built, the decision index."""
        pre, native = self._pre, self._native
        if pre is not None and doc >= len(self._cm):
            grow = np.zeros((len(self._cm) // 4 + 16, _COMMON_WORDS), dtype=np.uint64)
            self._cm = np.concatenate((self._cm, grow))
        if native is not None:  # the lines below in one call
            if pre is None:
                native.index_text(keys, doc, self._full.tail)
            else:
                self._ncommon.append(native.index_text(keys, doc, self._full.tail, self._ord.a, self._c0, self._c64,
                                                       self._alpha, self._cm, pre.small, _M_CAP))  # fmt: skip
                pre.after_add()
            self._full.tail_n += len(keys)
            return
        self._full.append(keys, doc)
        if pre is None:
            return
        cm = self._cm
        m = len(keys)
        if not m:
            self._ncommon.append(0)
            return
        placed, bits = self._placed, self._key_bits
        if len(placed) < self._n_keys or self._placed_stamp != (self._snap_n, self._c0, self._c64):
            placed, bits = self._order_lists()
        packed = sorted(map(placed.__getitem__, keys))  # rarest first
        cm[doc], n_common, top, rest = self._split_mask(sum(map(bits.__getitem__, keys)), self._c64 - self._c0)
        self._ncommon.append(n_common)
        plen = m - int(self._alpha[m]) + 1
        if plen > 0:
            low = (min(m, _M_CAP) << 18) | min(rest, 1023)
            js = _J_BITS if plen <= 256 else _J_BITS + [255 << 10] * (plen - 256)
            pre.add([((p & 0xFFFFFFFF) << 28) | j | low for p, j in zip(packed[:plen], js)], top, doc)

    def _order_lists(self) -> tuple[list[int], list[int]]:
        """Per key, as Python ints for add(): ``place << 32 | key`` (places are distinct, negative
        for keys made since the snapshot, and keys are below 2**31: sorting these ints sorts the
        keys rarest first) and its bit in the common-key mask (0 when not common).

        Places change only when _build_prefix snapshots the order, and a snapshot is a function
        of the pool, so of its size: the lists are rebuilt when ``_snap_n`` (or the common range)
        has changed, and extended with the keys made since they were last read.
        """
        placed, bits = self._placed, self._key_bits
        stamp = (self._snap_n, self._c0, self._c64)
        start = len(placed) if stamp == self._placed_stamp else 0
        nk = self._n_keys
        if start < nk:
            ords = self._ord.a[start:nk]
            new_placed = ((ords << 32) | np.arange(start, nk, dtype=np.int64)).tolist()
            new_bits = [_BITS[b] if b >= 0 else 0 for b in (ords - self._c0).tolist()]
            if start:
                placed += new_placed
                bits += new_bits
            else:
                self._placed, self._key_bits, self._placed_stamp = new_placed, new_bits, stamp
                return new_placed, new_bits
        return placed, bits

    def _after_growth(self) -> None:
        full = self._full
        if full.tail_n > _TAIL_MIN and full.wants_merge():  # the first test: no call per add
            full.merge(self._n_keys, self._n, self._lens.a)
        n = self._n
        if self._pre is not None and max(_SNAPSHOT_MIN, _RESNAPSHOT * self._snap_n) <= n <= _SNAPSHOT_MAX:
            self._build_prefix(self._pre_t)

    def add(self, text: str) -> int:
        """Add ``text`` to the pool and return its id (0, 1, 2 ... in insertion order)."""
        keys = self._keys_for(self.tokens(text))
        doc = self._n
        self._store_one(text, keys)
        self._index(doc, keys)
        self._after_growth()
        return doc

    def extend(self, texts: Iterable[str]) -> list[int]:
        """Add many texts (same result as calling :meth:`add` on each); return their ids."""
        first = self._n
        batch: list[str] = []
        key_lists: list[list[int]] = []
        tokenize = self._tokenize
        try:
            for text in texts:
                key_lists.append(self._keys_for(tokenize(text)))
                batch.append(text)
                if len(batch) == _EXTEND_BATCH:
                    self._store(batch, key_lists)
                    batch, key_lists = [], []
        finally:  # a bad item must not leave stored texts missing from the postings
            self._store(batch, key_lists)
            self._index_since(first)
        return list(range(first, self._n))

    def _index_since(self, first: int) -> None:
        added = int(self._tok_off.a[self._n] - self._tok_off.a[first])
        if added * 8 < len(self._full.data) + self._full.tail_n:
            # Small batch: through the tails, like add().
            keys, off = self._keys.a, self._tok_off.a
            for doc in range(first, self._n):
                self._index(doc, keys[off[doc] : off[doc + 1]].tolist())
            self._after_growth()  # not before every text is indexed: it may rebuild
            return
        # Large batch (or the first load): rebuild the CSR arrays in bulk.
        n = self._n
        docs = np.repeat(np.arange(n, dtype=np.int32), self._lens.a[:n])
        self._full = _Postings.build(self._keys.a[: self._keys.n], docs, self._n_keys, n, self._lens.a,
                                     self._native is not None)  # fmt: skip
        del docs
        if self._pre is not None:
            self._build_prefix(self._pre_t)

    # -- decision index -------------------------------------------------------------------

    def _alpha_table(self, t: float) -> np.ndarray:
        """Per length m: the fewest shared keys with which a text of m tokens can exceed t."""
        ms = np.arange(self._max_len + 1, dtype=np.int64)
        # F(l, n=l, m) = 2l / (l + m) > t  <=>  l > m t / (2 - t)
        return self._min_lcs_by_length(t, None, ms * (t / (2 - t)))

    def _min_lcs_by_length(self, t: float, n: int | None, x: np.ndarray) -> np.ndarray:
        """_min_lcs_above for the lengths 0 .. len(x) - 1, in the native kernel when there is one
        (numpy's two dozen passes over the lengths cost ~40 us a table, and tables are built per
        query length and bar)."""
        if self._native is None:
            return _min_lcs_above(t, n, np.arange(len(x), dtype=np.int64), x)
        out = np.empty(len(x), dtype=np.int64)
        self._native.min_lcs_above(t, -1 if n is None else n, x, _BIG, out)
        return out

    def _build_prefix(self, t: float) -> None:
        """Snapshot the key order and build the decision index for threshold t (chunked)."""
        n, nk = self._n, self._n_keys
        order = np.lexsort((-np.arange(nk), self._df.a[:nk]))  # rank -> key: rarest first
        rank = np.empty(nk, dtype=np.int64)
        rank[order] = np.arange(nk)
        self._ord.a[:nk] = rank
        # The most frequent keys -- the last in the order -- get one bit each in the masks:
        # the common-key mask per text (up to 256 keys) and, in every prefix entry, the mask
        # of the 64 most frequent.
        self._c0 = c0 = nk - min(nk, _N_COMMON, 64 * _COMMON_WORDS)
        self._c64 = c64 = nk - min(nk, _N_COMMON, 64)
        self._cm = cm = np.zeros((n + (n >> 3) + 16, _COMMON_WORDS), dtype=np.uint64)
        top = np.zeros(n, dtype=np.uint64)
        alpha = self._alpha_table(t)
        lens = self._lens.a[:n].astype(np.int64)
        plen = np.clip(lens - alpha[lens] + 1, 0, lens)
        keys, off = self._keys.a, self._tok_off.a
        out_c: list[np.ndarray] = []
        out_d: list[np.ndarray] = []
        step = max(1, _BUILD_CHUNK // max(1, self._max_len))
        for d0 in range(0, n, step):
            d1 = min(n, d0 + step)
            ls = lens[d0:d1]
            docs = np.repeat(np.arange(d0, d1, dtype=np.int64), ls)
            comb = (docs << 32) | rank[keys[off[d0] : off[d1]]]
            comb.sort()  # by text, then rarest key first
            # Masks: OR of the bits of each text's common keys (segments of non-empty texts).
            ords = comb & 0xFFFFFFFF
            nonempty = np.flatnonzero(ls)
            seg = (np.cumsum(ls) - ls)[nonempty]
            if len(seg):
                for w in range(_COMMON_WORDS + 1):  # the last one: the top-64 mask
                    bits = ords - (c64 if w == _COMMON_WORDS else c0 + 64 * w)
                    ok = (bits >= 0) & (bits < 64)
                    vals = np.where(ok, np.left_shift(1, np.where(ok, bits, 0)), 0).astype(np.uint64)
                    col = np.bitwise_or.reduceat(vals, seg)
                    if w == _COMMON_WORDS:
                        top[d0 + nonempty] = col
                    else:
                        cm[d0 + nonempty, w] = col
            pos = np.arange(len(comb)) - np.repeat(np.cumsum(ls) - ls, ls)
            keep = pos < np.repeat(plen[d0:d1], ls)
            sel = comb[keep]
            ncommon = np.bitwise_count(cm[d0:d1]).astype(np.int64) @ _ONES
            rest = ncommon - np.bitwise_count(top[d0:d1]).astype(np.int64)
            low = (np.minimum(ls, _M_CAP) << 18) | np.minimum(rest, 1023)
            out_c.append((order[sel & 0xFFFFFFFF].astype(np.int64) << 28)
                         | (np.minimum(pos[keep], 255) << 10) | np.repeat(low, ls)[keep])  # fmt: skip
            out_d.append((sel >> 32).astype(np.int32))
        comp = np.concatenate(out_c) if out_c else _EMPTY_COMP
        del out_c
        doc = np.concatenate(out_d) if out_d else _EMPTY
        del out_d
        self._pre = None  # the old index goes before the new one is sorted
        self._pre = _PrefixIndex(comp, doc, top)
        self._ncommon = _Vec(np.int16)
        self._ncommon.extend(np.bitwise_count(cm[:n]).astype(np.int64) @ _ONES)
        self._pre_t, self._alpha, self._snap_n = t, alpha, n

    def _need(self, n: int, t: float) -> _NeedTable:
        """Per pool length m: the smallest LCS giving F > t with a query of n tokens, and more."""
        hit = self._need_cache.get((n, t))
        if hit is None:
            if len(self._need_cache) > 4096:  # raised bars (seeds) vary: keep the cache bounded
                self._need_cache.clear()
            ms = np.arange(self._max_len + 1, dtype=np.int64)
            hit = self._need_cache[(n, t)] = _NeedTable(self._min_lcs_by_length(t, n, (ms + n) * (t / 2)))
        return hit

    def _masks(self, sorted_ords: np.ndarray) -> tuple[np.ndarray, int, int, int]:
        """Masks of keys given by their ascending places in the order: the common-key bitmask
        (words), the number of common keys, the bitmask of the 64 most frequent (an int) and
        the number of common keys outside those."""
        c0 = self._c0
        bits = (sorted_ords[np.searchsorted(sorted_ords, c0) :] - c0).tolist()
        words, n_common, top, rest = self._split_mask(sum(map(_BITS.__getitem__, bits)), self._c64 - c0)
        return np.array(words, dtype=np.uint64), n_common, top, rest

    @staticmethod
    def _split_mask(mask: int, top_bit: int) -> tuple[list[int], int, int, int]:
        """A text's common-key mask as one int (bit: place - _c0): its words, how many common
        keys, the mask of those among the 64 most frequent (bits >= top_bit, shifted down) and
        how many are not among those."""
        top = mask >> top_bit
        n_common = mask.bit_count()
        words = [(mask >> s) & _WORD for s in range(0, 64 * _COMMON_WORDS, 64)]
        return words, n_common, top, n_common - top.bit_count()

    # -- querying helpers -----------------------------------------------------------------

    def _query(self, text: str) -> _Query | None:
        """The query's known keys and token ids; None if it has no token the pool knows."""
        toks = self.tokens(text)
        if not toks or not self._n:
            return None
        if self._native is not None:
            found = self._native.query_keys(toks, self._vocab, self._more)
            return None if found is None else _Query(len(toks), *found)
        vocab = self._vocab
        tids = [t for t in map(vocab.get, toks) if t is not None]
        if not tids:
            return None
        if len(set(tids)) == len(tids):
            keys = tids
        else:  # the query's keys are a set: their order does not matter
            counts = Counter(tids)
            keys = list(counts)
            more = self._more
            for tid, c in [x for x in counts.items() if x[1] > 1]:
                for k in range(2, c + 1):
                    key = more.get((tid, k))
                    if key is None:  # no pool text has this token k times
                        break
                    keys.append(key)
        return _Query(len(toks), keys, tids)

    def _qseq(self, q: _Query) -> str | tuple[int, ...]:
        if q._seq is None:
            q._seq = self._seq_of(q.tids)  # token ids are the keys of first occurrences
        return q._seq

    def _positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat indexes of the tokens of texts ``ids`` (in order), and each text's segment."""
        starts = self._tok_off.a[ids]
        ls = self._lens.a[ids].astype(np.int64)
        ends = np.cumsum(ls)
        seg = ends - ls
        idx = np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - seg, ls)
        return idx, seg, ends

    def _lcs(self, q: _Query, ids: list[int]) -> list[int]:
        """Exact LCS lengths of the query with texts ``ids`` (rapidfuzz, bit-parallel C++).

        A str and a tuple of ints compare exactly (rapidfuzz hashes a character as its code
        point), so texts stored either way mix freely.
        """
        qs = self._qseq(q)
        seqs = self._seqs
        if len(ids) <= 8:
            sim = LCSseq.similarity
            return [int(sim(qs, seqs[i])) for i in ids]
        return cdist([qs], [seqs[i] for i in ids], scorer=LCSseq.similarity, dtype=np.int32,
                     workers=1)[0].tolist()  # fmt: skip

    def _verify(self, q: _Query, ids: list[int]) -> list[float]:
        """Exact F of the query with each of texts ``ids`` (Python floats)."""
        lens, n = self._lens.a, q.n
        return [_fmeasure(lcs, n, int(lens[i])) for i, lcs in zip(ids, self._lcs(q, ids), strict=True)]

    def _native_verifier(self) -> Any:
        """The native kernel when it can verify this pool's texts (str, not tuples), else None."""
        return self._native if self._native is not None and _NATIVE_LCS and not self._big else None

    def _score(self, q: _Query, ids: np.ndarray) -> tuple[float, int]:
        """Best exact F among ``ids`` (non-empty) and the smallest id reaching it."""
        native = self._native_verifier()
        if native is not None:
            f, i = native.verify(self._qseq(q), self._seqs, ids, None, self._lens.a, q.n, _INF, _INF, _EPS, -1.0, -1)
            return f, i
        if len(ids) <= _SCORE_IN_PYTHON:
            best, best_id = -1.0, -1
            ilist = ids.tolist()
            for i, f in zip(ilist, self._verify(q, ilist), strict=True):
                if f > best or (f == best and i < best_id):
                    best, best_id = f, i
            return best, best_id
        lcs = np.array(self._lcs(q, ids.tolist()), dtype=np.int64)
        scores = _f_vec(lcs, q.n, self._lens.a[ids])
        top = scores.max()
        return float(top), int(ids[scores == top].min())

    def _overlap(self, q: _Query, ids: np.ndarray) -> np.ndarray:
        """Exact shared-key count (multiset token overlap) of the query with each of ``ids``."""
        if len(self._mark) < self._n_keys:
            self._mark = np.zeros(2 * self._n_keys, dtype=np.uint8)
        mark = self._mark
        mark[q.keys] = 1
        try:
            idx, seg, _ = self._positions(ids)
            return np.add.reduceat(mark[self._keys.a[idx]], seg, dtype=np.int64)
        finally:
            mark[q.keys] = 0

    # -- the decision ---------------------------------------------------------------------

    def _probe(self, q: _Query, t: float, exhaustive: bool, limit: int,
               runners_up: int = 0) -> tuple[float, int]:  # fmt: skip
        """Best verified (F, id) among the texts ``< limit`` that could exceed ``t``.

        (-1.0, -1) if none. Not exhaustive: stops at the first F > t. Exhaustive: every text
        with F > t is verified or provably below the best, so a best above ``t`` is the exact
        nearest. ``runners_up``: when nothing exceeds t, also score that many of the texts with
        the best bounds among those that cannot (a good starting bar for the nearest).
        The decision index must exist, built for a threshold <= t.
        """
        pre = self._pre
        assert pre is not None and self._pre_t <= t
        if t >= 1.0:  # F <= 1.0 always
            return -1.0, -1
        n = q.n
        table = self._need(n, t)
        need = table.need
        n_keys = len(q.keys)
        if n_keys < table.amin:
            return -1.0, -1
        # Positional filter (PPJoin): if a text's first shared prefix key is the query's i-th
        # and its own j-th key, every shared key comes at or after both (same global order),
        # so ov <= 1 + min(K-1-i, m-1-j) = min(K-i, m-j). Later hits of a text give smaller
        # values, so the hits with min(K-i, m-j) >= need[m] are exactly the first hits of the
        # texts whose first hit passes: the index returns just those, as ranges of (key, m, j).
        # First bound, from the entries alone, for a text whose first hit this is (query
        # position i, text position j): every shared key lies at or after both. Common keys
        # (C: the most frequent, last in the order) shared: those among the 64 most frequent
        # exactly (AND of the masks), the others at most min(query's, text's). Rare keys
        # shared: at most min(query's rare keys from i on, text's rare keys from j on); none
        # when i is a common key (rare keys come first in both orders). Later hits of a text
        # give smaller values, so keeping the hits that pass keeps every text whose first hit
        # passes, with its first few hits.
        pi, lo, hi, qb = table.ranges(n_keys)
        if self._native is not None:  # the ranges and masks below in one call
            lows, highs, tags, qm = (np.empty(len(pi), dtype=np.int64), np.empty(len(pi), dtype=np.int64),
                                     np.empty(len(pi), dtype=np.int64), np.empty(_COMMON_WORDS, dtype=np.uint64))
            _, n_common, qtop, q_rest = self._native.probe_front(q.keys, self._ord.a, self._c0, self._c64, pi, lo,
                                                                 hi, qb, lows, highs, tags, qm)  # fmt: skip
        else:
            if q.by_ord is None:
                ka = np.array(q.keys, dtype=np.int64)
                ords = self._ord.a[ka]
                order = np.argsort(ords)
                q.by_ord, q.ords = ka[order], ords[order]
            key_bits = q.by_ord[pi] << 28
            order = np.argsort(key_bits)
            lows, highs, tags = (key_bits | lo)[order], (key_bits | hi)[order], qb[order]
            assert q.ords is not None
            qm, n_common, qtop, q_rest = self._masks(q.ords)
        n_rare = n_keys - n_common
        first = self._native_hits if self._native is not None else self._first_hits
        doc, qi, j = first(lows, highs, tags, n_keys, n_rare, qtop, q_rest, table, limit)
        if not len(doc):
            return -1.0, -1
        lens = self._lens.a
        best, best_id = -1.0, -1
        if len(doc) > _SEED_HITS:
            # Many hits (a dense cluster around the query): verify a few texts hit through the
            # rarest key first. A hit ends the decision at once; for the exhaustive search it
            # raises the bar to "F >= best" (F > the float just below best), which the hits
            # are filtered against again -- usually leaving a handful.
            ids = np.unique(doc[qi == 0][:_SEED_SAMPLE]).tolist()
            for i, f in zip(ids, self._verify(q, ids), strict=True):
                if f > t and not exhaustive:
                    return f, i
                if f > best or (f == best and i < best_id):
                    best, best_id = f, i
            if best > t:
                table = self._need(n, float(np.nextafter(best, -1.0)))
                need = table.need
                m = lens[doc]
                ok = np.minimum(m - j, n_keys - qi) >= need[m]
                doc, qi, j = doc[ok], qi[ok], j[ok]
                if not len(doc):
                    return best, best_id
        # Second bound, per text from its kept hits: with (i, j) its last kept rare hit and
        # h_rare its kept rare hits, every shared rare key is one of those or lies after i in
        # the query and after j in the text; shared common keys exactly from the full masks.
        second = self._native_second if self._native is not None else self._second_bound
        cand, ov, m, runners = second(doc, qi, j, n_rare, n, qm, need, runners_up)
        if len(cand) > _OVERLAP_MIN:
            # Exact overlap (multiset intersection) for the survivors: a tighter bound.
            ov = self._overlap(q, cand)
            keep = ov >= need[m]
            cand, ov, m = cand[keep], ov[keep], m[keep]
        return self._verify_ranked(q, cand, ov, m, t, exhaustive, best, best_id, runners)

    def _second_bound(
        self, doc: np.ndarray, qi: np.ndarray, j: np.ndarray, n_rare: int, n: int, qm: np.ndarray, need: np.ndarray,
        runners_up: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """The texts of the kept hits whose second bound reaches ``need[m]``: ids (ascending),
        bounds and lengths; and up to ``runners_up`` of the others, best bound first."""
        lens = self._lens.a
        # One sort of (text, i, j) packed in an int64 (i < 2**20 unless the query has a million
        # tokens; then i is stored as 2**20 - 1, which only loosens the bound).
        packed = np.sort((doc.astype(np.int64) << 28) | (np.minimum(qi, 0xFFFFF) << 8) | j)
        docs = packed >> 28
        ends = np.flatnonzero(np.concatenate((docs[1:] != docs[:-1], [True])))
        starts = np.concatenate(([0], ends[:-1] + 1))
        qi = (packed >> 8) & 0xFFFFF
        cum_rare = np.cumsum(qi < n_rare)
        h_rare = cum_rare[ends] - cum_rare[starts] + (qi[starts] < n_rare)
        cand = docs[ends]
        last = starts + np.maximum(h_rare - 1, 0)
        m = lens[cand]
        after = np.minimum(n_rare - 1 - qi[last],
                           m - self._ncommon.a[cand] - 1 - (packed[last] & 255))  # fmt: skip
        shared_common = np.bitwise_count(self._cm.take(cand, axis=0) & qm).astype(np.int64) @ _ONES
        ov = shared_common + h_rare + np.where(h_rare > 0, np.maximum(after, 0), 0)
        keep = ov >= need[m]
        runners: list[int] = []
        if runners_up and not keep.all():
            out = np.flatnonzero(~keep)  # for the runners-up, scored only if nothing exceeds t
            runners = cand[out[np.argsort(-ov[out] / (m[out] + n), kind="stable")[:runners_up]]].tolist()
        return cand[keep], ov[keep], m[keep], runners

    def _native_second(
        self, doc: np.ndarray, qi: np.ndarray, j: np.ndarray, n_rare: int, n: int, qm: np.ndarray, need: np.ndarray,
        runners_up: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """:meth:`_second_bound` in one native pass (same texts, same runners-up)."""
        size = len(doc)
        cand, ov, m = np.empty(size, dtype=np.int32), np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)
        room = np.empty(min(runners_up, 64), dtype=np.int32)
        k, r = self._native.second_bound(doc, qi, j, n_rare, n, self._lens.a, self._ncommon.a, self._cm, qm, need,
                                         cand, ov, m, room)  # fmt: skip
        return cand[:k], ov[:k], m[:k], room[:r].tolist()

    def _first_hits(
        self, lows: np.ndarray, highs: np.ndarray, tags: np.ndarray, n_keys: int, n_rare: int, qtop: int, q_rest: int,
        table: _NeedTable, limit: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The decision index's entries in the spans [lows, highs] (tags: the query's K - i of
        each; see _NeedTable.ranges) that one of the key's ranges holds, whose texts are < limit
        and pass the first bound: text, query and text positions."""
        assert self._pre is not None
        comp, top, doc, qb = self._pre.lookup(lows, highs, tags)
        bucket = np.minimum((comp >> 18) & 1023, len(table.span_need) - 1)
        keep = (table.span_need[bucket] <= qb) & (((comp >> 10) & 255) <= table.span_jmax[bucket])
        if limit < self._n:
            keep &= doc < limit
        comp, top, doc, qb = comp[keep], top[keep], doc[keep], qb[keep]
        qi = n_keys - qb
        rest = comp & 1023
        if table.capped:  # the long-text bucket holds lengths >= _M_CAP: use the real ones
            m = self._lens.a[doc].astype(np.int64)
        else:
            m = (comp >> 18) & 1023
        j = (comp >> 10) & 255
        need = table.need
        rare_b = np.where(qi < n_rare, np.minimum(n_rare - qi, m - rest - np.bitwise_count(top) - j), 0)
        ok = np.bitwise_count(top & np.uint64(qtop)) + np.minimum(rest, q_rest) + rare_b >= need[m]
        if table.capped:  # and the positional filter the ranges could not apply there
            ok &= np.minimum(m - j, qb) >= need[m]
        return doc[ok], qi[ok], j[ok]

    def _native_hits(
        self, lows: np.ndarray, highs: np.ndarray, tags: np.ndarray, n_keys: int, n_rare: int, qtop: int, q_rest: int,
        table: _NeedTable, limit: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_first_hits` in one native pass (same entries, same order)."""
        pre = self._pre
        assert pre is not None
        while True:
            k = self._native.prefix_hits(pre.runs, pre.small, lows, highs, tags, n_keys, n_rare, qtop, q_rest,
                                         table.need, self._lens.a, table.capped, limit,
                                         self._hit_doc, self._hit_qi, self._hit_j, table.span_need,
                                         table.span_jmax)  # fmt: skip
            if k >= 0:
                hits = self._hit_doc[:k].copy(), self._hit_qi[:k].copy(), self._hit_j[:k].copy()
                if len(self._hit_doc) > _HITS_KEPT:  # one wide probe must not hold its room for good
                    self._hit_doc, self._hit_qi, self._hit_j = _EMPTY, _EMPTY_COMP, _EMPTY_COMP
                return hits
            size = -k - 1  # the entries in the ranges: room for all of them, and some
            size += size >> 2
            self._hit_doc = np.empty(size, dtype=np.int32)
            self._hit_qi, self._hit_j = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)

    def _verify_ranked(self, q: _Query, cand: np.ndarray, ov: np.ndarray, m: np.ndarray, t: float, exhaustive: bool,
                       best: float, best_id: int, runners: list[int]) -> tuple[float, int]:  # fmt: skip
        """Verify ``cand`` (overlaps at most ``ov``, lengths ``m``) most promising first, raising
        (best, best_id): stops at the first F > t unless exhaustive; when nothing exceeds t,
        the ``runners`` (texts that could not) are scored too, as a bar for the nearest."""
        ub = 2 * ov / (m + q.n) if len(cand) > 1 else None
        native = self._native_verifier()
        if native is not None:
            # The same loop in C: stop at the first F > t, or cut what is bounded below the best.
            # It takes the texts in the order below itself (a heap: no sort of a long list).
            qs = self._qseq(q)
            best, best_id = native.verify(qs, self._seqs, cand, ub, self._lens.a, q.n, _INF if exhaustive else t,
                                          t if exhaustive else _INF, _EPS, best, best_id, ub is not None)  # fmt: skip
            if runners and best <= t:
                best, best_id = native.verify(qs, self._seqs, np.array(runners, dtype=np.int64), None, self._lens.a,
                                              q.n, _INF, _INF, _EPS, best, best_id)  # fmt: skip
            return best, best_id
        if ub is not None:
            order = np.lexsort((cand, -ub))  # ascending ids among equal bounds
            cand, ub = cand[order], ub[order]
        ids_all = cand.tolist()
        ub_list = ub.tolist() if ub is not None else [1.0] * len(cand)
        start, chunk = 0, _VERIFY_CHUNK
        while start < len(ids_all):
            ids = ids_all[start : start + chunk]
            for i, f in zip(ids, self._verify(q, ids), strict=True):
                if f > t and not exhaustive:
                    return f, i
                if f > best or (f == best and i < best_id):
                    best, best_id = f, i
            start, chunk = start + chunk, chunk * 4
            if exhaustive and best > t:
                # ub_list descends: nothing bounded below best - eps can reach best.
                while len(ids_all) > start and ub_list[len(ids_all) - 1] < best - _EPS:
                    ids_all.pop()
        if runners and best <= t:
            for i, f in zip(runners, self._verify(q, runners), strict=True):
                if f > best or (f == best and i < best_id):
                    best, best_id = f, i
        return best, best_id

    def prepare(self, threshold: float) -> None:
        """Build the decision index for ``threshold`` now rather than on the first query (before a
        fork, say, so that both processes start with it)."""
        self._ensure_decision_index(self._check_threshold(threshold))

    def _ensure_decision_index(self, t: float) -> None:
        """Build the decision index if needed, for ``min(t, floor)`` so that the nearest of an
        accepted text can go through it too; remember ``t`` for :meth:`nearest`."""
        self._decision_t = t
        if self._pre is None or min(t, _NEAREST_FLOOR) < self._pre_t:
            self._build_prefix(min(t, _NEAREST_FLOOR))

    def _exact_nearest(self, q: _Query, t: float, limit: int,
                       below: tuple[float, int] | None = None) -> tuple[float, int | None]:  # fmt: skip
        """Exact nearest among texts ``< limit``, through the decision index (built <= floor).

        1. Exhaustive probe at ``t`` (the decision threshold; the native kernel's when its scan
           is small): a best above ``t`` is exact. Skipped when ``below`` is given: then nothing
           ``< limit`` exceeds ``t`` (an earlier probe showed it) and ``below`` is a verified
           (F, id) with id ``< limit`` (or -1).
        1b. If the best seen is below the ladder and recent nearests were mostly above it: an
           exhaustive probe at it, exact when the maximum is above it (usual for instructions);
           else its runners-up raise the best.
        2. If the best seen (runners-up included) is at least the floor: an exhaustive probe
           for "F >= x" (F above the float just below x), x that best: when the maximum is
           >= x, every text reaching it is a candidate, so the best is exact. Below the floor
           (plain prose, whose nearest is often far) that probe seldom succeeds and reads more
           than the postings search does, so it is skipped; so it is when the native kernel's
           postings search would read few postings.
        3. Else the maximum is below x: the full postings search, seeded with the best seen.
        """
        if below is None:
            found = self._native_probe(q, t, True, limit, _RUNNERS_UP)
            best, i = found if found is not None else self._probe(q, t, True, limit, runners_up=_RUNNERS_UP)
            if best > t:
                return best, i
        else:
            best, i = below
        result = self._nearest_not_above(q, t, limit, best, i)
        self._ladder_odds += (float(result[0] > _NEAREST_LADDER) - self._ladder_odds) / _LADDER_MEMORY
        return result

    def _nearest_not_above(self, q: _Query, t: float, limit: int, best: float, i: int) -> tuple[float, int | None]:
        """Steps 1b to 3 of :meth:`_exact_nearest`: nothing < limit exceeds ``t``; (best, i) verified."""
        if (best < _NEAREST_LADDER < t and self._pre_t < _NEAREST_LADDER and self._ladder_odds >= _LADDER_ODDS
                and self._postings_to_read(q, best) >= _LADDER_MIN_POSTINGS):
            f, j = self._probe(q, _NEAREST_LADDER, True, limit, runners_up=_RUNNERS_UP)
            if f > _NEAREST_LADDER:
                return f, j
            if f > best or (f == best and j < i):
                best, i = f, j
        if best >= _NEAREST_FLOOR and best > self._pre_t and not self._native_reads_little(q, best):
            # (the index answers "F > _pre_t")
            f, j = self._probe(q, float(np.nextafter(best, -1.0)), True, limit)
            if f >= best:
                return f, j
        return self._nearest(q, best, i, limit)

    @staticmethod
    def _check_threshold(threshold: float) -> float:
        t = float(threshold)
        if not t >= 0.0:  # also NaN
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
        return t

    def first_above(self, text: str, threshold: float) -> tuple[float, int] | None:
        """``(score, id)`` of a text whose ROUGE-L F with ``text`` is ``> threshold``, else None.

        The decision alone, with early exit: which of several such texts is returned is
        deterministic but not necessarily the nearest (use :meth:`decide` for that). ``None`` is
        exact: no text scores above ``threshold`` (the comparison is on the float
        ``rouge_score`` computes, so a score of exactly ``threshold`` is not above it).
        """
        return self._above(text, threshold, False)

    def max_above(self, text: str, threshold: float) -> tuple[float, int] | None:
        """:meth:`nearest` if it scores ``> threshold``, else None: the decision, and for a
        near-duplicate its exact nearest (smallest id on ties).

        Costs about what :meth:`first_above` does (no early exit: the other candidates above
        ``threshold`` are verified too, most of them cut by the bound of the best so far).
        """
        return self._above(text, threshold, True)

    def _above(self, text: str, threshold: float, exhaustive: bool) -> tuple[float, int] | None:
        t = self._check_threshold(threshold)
        self._hint = None
        q = self._query(text)
        if q is None or t >= 1.0:
            return None
        self._ensure_decision_index(t)
        found = self._native_probe(q, t, exhaustive, self._n, _RUNNERS_UP)
        best, i = found if found is not None else self._probe(q, t, exhaustive, self._n, runners_up=_RUNNERS_UP)
        if best > t:
            return best, i
        # For nearest(text, before=len(self)) right after add(): skips the probe just made.
        self._hint = (text, self._n, t, best, i)
        return None

    def decide(self, text: str, threshold: float) -> Decision:
        """Whether ``text`` is a near-duplicate (some F ``> threshold``), with the exact nearest.

        ``score``/``id`` equal :meth:`nearest` exactly in both cases. For a duplicate they come
        from the prefix-filtered candidates (cheap); for an accepted text from a second,
        wider probe of the same index (the costlier half; :meth:`nearest` with ``before=`` can
        compute it later instead, off the critical path).
        """
        t = self._check_threshold(threshold)
        q = self._query(text)
        if q is None:
            return Decision(False, 0.0, None)
        self._ensure_decision_index(t)
        score, i = self._exact_nearest(q, t, self._n) if t < 1.0 else self._nearest(q, -1.0, -1, self._n)
        return Decision(score > t, score, i)

    # -- nearest --------------------------------------------------------------------------

    def runner_up(self, text: str) -> tuple[float, int] | None:
        """Right after :meth:`max_above`/:meth:`first_above` of ``text`` found nothing above the
        threshold: the best (F, id) its probe verified (id -1 if none), for ``nearest(text,
        runner_up=...)`` on a copy of this pool (another process) to skip that probe."""
        hint = self._hint
        if hint is None or hint[0] != text or hint[1] != self._n:
            return None
        return hint[3], hint[4]

    def nearest(
        self, text: str, *, before: int | None = None, runner_up: tuple[float, int] | None = None
    ) -> tuple[float, int | None]:
        """Highest ROUGE-L F-measure of ``text`` against the pool, and the id achieving it.

        Exact (equal to ``rouge_score``'s float for that pair); the smallest id wins ties.
        Returns ``(0.0, None)`` when no text in the pool shares a token with ``text``.
        ``before=i`` searches only the texts with ids ``< i`` -- the pool as it was when text
        ``i`` was judged -- so the nearest of an accepted text can be computed after it was added.
        Once :meth:`first_above` or :meth:`decide` has built the decision index, the search goes
        through it (faster). ``runner_up`` is what :meth:`runner_up` gave for ``text`` on the same
        pool (the ids below ``before``) with the same threshold: nothing there scores above it.
        """
        limit = self._n if before is None else max(0, min(int(before), self._n))
        q = self._query(text)
        if q is None or limit == 0:
            return 0.0, None
        if self._pre is not None and self._pre_t <= self._decision_t < 1.0:
            hint, below = self._hint, runner_up
            if hint is not None and hint[0] == text and hint[1] == limit and hint[2] == self._decision_t:
                below = hint[3], hint[4]  # first_above(text) found nothing above t in this pool
            return self._exact_nearest(q, self._decision_t, limit, below)
        return self._nearest(q, -1.0, -1, limit)

    def _get(self, key: int, limit: int) -> np.ndarray:
        p = self._full.get(key)
        if limit < self._n and len(p) and p[-1] >= limit:
            p = p[: np.searchsorted(p, limit)]
        return p

    def _nearest(self, q: _Query, best: float, best_id: int, limit: int) -> tuple[float, int | None]:
        n = q.n
        if not q.keys:
            return 0.0, None
        qkeys = self._rarest_first(q)[0]
        n_keys = len(qkeys)
        cum = self._cum_postings(q)  # cum[j]: postings in the j+1 rarest keys

        budget, top, prefix_x = _SEED_POSTINGS, _SEED_TOP, 1
        if self._native is not None:
            top, prefix_x = _NATIVE_SEED_TOP, _NATIVE_PREFIX_X
        while True:
            # A text sharing none of the rarest n_keys - s keys has F <= 2s/(s+n) < best.
            s = _common_allowed(n, best, n_keys)
            n_prefix = n_keys - s
            if n_prefix == 0:  # defensive: best <= 2K/(K+n) keeps s below K
                return best, best_id
            if n_prefix == 1 or cum[n_prefix - 1] <= 2 * budget * (prefix_x if best > 0 else 1):
                break
            # Deepening round: read the rarest keys within budget and score the texts sharing
            # the most of them; a higher best shortens the prefix the final round must read.
            j = 1
            while cum[j] <= budget:
                j += 1
            cand, acc = self._count(qkeys[:j], limit)
            if len(cand) > top:
                m = self._lens.a[cand]
                rank = acc * 4096 - np.abs(m - n)  # most shared keys, then closest length
                cand = cand[np.argpartition(-rank, top - 1)[:top]]
            if len(cand):
                f, i = self._score(q, cand)
                if f > best or (f == best and i < best_id):
                    best, best_id = f, i
            budget *= 8

        # Final round: count the prefix keys per text; ov <= acc + rest bounds F from above,
        # rest being the common keys not looked at yet. While many texts survive, look the
        # survivors up in the next common key's (sorted) postings: each lookup lowers rest by
        # one and usually drops most of them, far cheaper than scoring them all.
        lens_all = self._lens.a
        if self._native is not None:
            # One native pass: every text that can still reach best, with its exact overlap.
            need = self._native_min_shared(best, n)
            # Views of the kernel's scratch, read by _best_of_ranked before any other call.
            cand, acc, _ = self._survivors(qkeys, n_prefix, need, limit, copy=False)
        else:
            if cum[n_prefix - 1] * 4 >= limit:
                # Most texts are hit: filter the dense counts before gathering anything.
                acc = np.bincount(self._hits(qkeys[:n_prefix], limit), minlength=limit)
                lens = lens_all[:limit]
                cand = np.flatnonzero(acc >= self._min_shared(best, n, s)[lens])
                acc, m = acc[cand], lens[cand]
            else:
                cand, acc = self._count(qkeys[:n_prefix], limit)
                m = lens_all[cand]
            rest = s
            while True:
                keep = acc >= self._min_shared(best, n, rest)[m]
                cand, acc, m = cand[keep], acc[keep], m[keep]
                if rest == 0 or len(cand) <= _SCORE_DIRECTLY:
                    break
                # Score the texts with the highest bounds first: a higher best makes every later
                # step cheaper (the rounds above often end with a weak best for far-off queries).
                ub = 2 * np.minimum(acc + rest, m) / (m + n)
                f, i = self._score(q, cand[np.argpartition(-ub, _PEEK - 1)[:_PEEK]])
                if f > best or (f == best and i < best_id):
                    best, best_id = f, i
                    keep = acc >= self._min_shared(best, n, rest)[m]
                    cand, acc, m = cand[keep], acc[keep], m[keep]
                p = self._get(qkeys[n_keys - rest], limit)
                if len(p):
                    pos = np.minimum(np.searchsorted(p, cand), len(p) - 1)
                    acc = acc + (p[pos] == cand)
                rest -= 1
            acc = acc + rest  # at most this many shared keys
        if len(cand):
            best, best_id = self._best_of_ranked(q, cand, acc, best, best_id)
        if best_id < 0:  # only when before= hides every text sharing a token
            return 0.0, None
        return best, best_id

    def _best_of_ranked(self, q: _Query, cand: np.ndarray, shared: np.ndarray, best: float,
                        best_id: int) -> tuple[float, int]:  # fmt: skip
        """Raise (best, best_id) with the texts ``cand``, which share at most ``shared`` keys with
        the query, so F <= 2 min(shared, m) / (m + n): scored in descending bound order, in growing
        chunks, until no bound left reaches best."""
        native = self._native_verifier()
        if native is not None:  # the loop below in C, cutting after each text rather than each chunk,
            # taking the texts off a heap (most are cut: sorting them all cost more than scoring); it
            # makes the bounds too (the same floats)
            f, i = native.verify(self._qseq(q), self._seqs, cand, None, self._lens.a, q.n, _INF, -_INF, _EPS,
                                 best, best_id, True, np.asarray(shared, dtype=np.int32))  # fmt: skip
            return f, i
        m = self._lens.a[cand]
        ub = 2 * np.minimum(shared, m) / (m + q.n)
        order = np.argsort(-ub, kind="stable")
        cand, neg_ub = cand[order], -ub[order]
        start, chunk = 0, _FIRST_CHUNK
        while start < len(cand):
            stop = min(start + chunk, len(cand))
            f, i = self._score(q, cand[start:stop])
            if f > best or (f == best and i < best_id):
                best, best_id = f, i
            # neg_ub ascends: keep what is <= -(best - eps), i.e. bound >= best - eps.
            end = int(np.searchsorted(neg_ub, -(best - _EPS), side="right"))
            start, chunk = stop, chunk * 4
            if end <= start:
                break
            cand, neg_ub = cand[:end], neg_ub[:end]
        return best, best_id

    def _survivors(self, keys: list[int], n_scan: int, need: np.ndarray, limit: int,
                   runners: int = 0, copy: bool = True) -> tuple[np.ndarray, np.ndarray, list[int]]:  # fmt: skip
        """The native kernel: texts < limit holding any of ``keys`` (rarest first) whose overlap
        can reach ``need[m]``, and their exact overlaps (see _overlap.c); texts holding none of
        the first ``n_scan`` keys must be unable to. Also up to ``runners`` of the dropped texts
        that came closest. ``copy=False``: the ids and overlaps (int32) are views of scratch
        that the next call overwrites."""
        if len(self._out) <= limit:  # the kernel writes one past the texts it keeps
            size = limit + (limit >> 2) + 1024
            self._counts = np.zeros(size, dtype=np.uint16)
            self._out, self._out_ov = np.empty(size, dtype=np.int32), np.empty(size, dtype=np.int32)
        full, room = self._full, np.empty(runners, dtype=np.int32)
        tails = list(map(full.tail.get, keys)) if full.tail else [None] * len(keys)
        bits, cover, lengths = None, 0, None
        if full.bitsets is not None and full.bitsets.row_of:
            bits, cover, lengths = list(map(full.bitsets.row_of.get, keys)), full.bitsets.cover, full.bitsets.lengths
        k, r = self._native.survivors(np.array(keys, dtype=np.int64), full.indptr, full.data, tails, n_scan,
                                      self._lens.a, need, limit, self._counts, self._out, self._out_ov,
                                      room, bits, cover, -1, lengths)  # fmt: skip
        if not copy:
            return self._out[:k], self._out_ov[:k], room[:r].tolist()
        return self._out[:k].copy(), self._out_ov[:k].astype(np.int64), room[:r].tolist()

    def _rarest_first(self, q: _Query) -> tuple[list[int], list[int]]:
        """The query's keys from fewest to most postings (ties in query order), and those counts
        (and, in ``q.cum``, their running sums)."""
        if q.by_df is None:
            if self._native is not None:
                keys, df, q.cum = self._native.rank(q.keys, self._df.a)
            else:
                dfa = self._df.a[q.keys]
                order = np.argsort(dfa, kind="stable").tolist()
                keys, df = [q.keys[i] for i in order], dfa[order].tolist()
                q.cum = list(accumulate(df))
            q.by_df = keys, df
        return q.by_df

    def _cum_postings(self, q: _Query) -> list[int]:
        """Postings of the query's rarest keys: element j counts those of the j + 1 rarest."""
        self._rarest_first(q)
        assert q.cum is not None  # set with the order
        return q.cum

    def _postings_to_read(self, q: _Query, best: float) -> int:
        """How many postings the postings search for a text reaching ``best`` reads."""
        cum = self._cum_postings(q)
        n_read = len(cum) - _common_allowed(q.n, best, len(cum))
        return cum[n_read - 1] if n_read > 0 else 0

    def _native_reads_little(self, q: _Query, best: float) -> bool:
        """Whether the native postings search for a text reaching ``best`` reads few postings."""
        return self._native is not None and self._postings_to_read(q, best) <= _NATIVE_NEAREST_MAX

    def _native_probe(self, q: _Query, t: float, exhaustive: bool, limit: int,
                      runners_up: int = 0) -> tuple[float, int] | None:  # fmt: skip
        """:meth:`_probe` through the native kernel and the full postings, or None when that
        would read more postings than the decision index costs (or there is no native kernel).

        The best verified (F, id) among the texts < limit that can exceed ``t``, (-1.0, -1) if
        none. Not exhaustive: stops at the first F > t. When nothing exceeds t, every candidate
        was verified, and so are up to ``runners_up`` texts that came closest: the best is a bar
        for the nearest.
        """
        if self._native is None:
            return None
        if t >= 1.0:  # F <= 1.0 always
            return -1.0, -1
        table = self._need(q.n, t)
        if len(q.keys) < table.amin:
            return -1.0, -1
        # Prefix filter: a text holding none of the rarest K - amin + 1 keys shares at most
        # amin - 1 keys, below need[m] for every length.
        keys, df = self._rarest_first(q)
        n_scan = len(keys) - table.amin + 1  # >= 1: len(keys) >= amin
        to_read = self._cum_postings(q)[n_scan - 1]
        if to_read > _NATIVE_SCAN_MAX and not (
            to_read <= _NATIVE_FLAT_SCAN_MAX and int(df[0]) * n_scan >= _FLAT_SHARE * to_read
        ):
            return None
        cand, ov, runners = self._survivors(keys, n_scan, table.need32, limit, runners_up)
        return self._verify_ranked(q, cand, ov, self._lens.a[cand], t, exhaustive, -1.0, -1, runners)

    def _hits(self, keys: list[int], limit: int) -> np.ndarray:
        return np.concatenate([self._get(k, limit) for k in keys])

    def _count(self, keys: list[int], limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Texts holding any of ``keys`` (ascending without the native kernel) and how many of
        the keys each holds."""
        if self._native is not None:
            cand, acc, _ = self._survivors(keys, len(keys),
                                           np.ones(self._max_len + 1, dtype=np.int32), limit)  # fmt: skip
            return cand, acc
        if len(keys) == 1:
            hits = self._get(keys[0], limit)
            return hits, np.ones(len(hits), dtype=np.int64)
        hits = self._hits(keys, limit)
        if len(hits) * 2 < limit:  # measured crossover: sorting wins below ~N/2 hits
            return np.unique(hits, return_counts=True)
        acc = np.bincount(hits, minlength=limit)
        cand = np.flatnonzero(acc)
        return cand, acc[cand]

    def _native_min_shared(self, best: float, n: int) -> np.ndarray:
        """``_min_shared(best, n, 0)`` as int32, filled by the native kernel (numpy's half dozen
        passes over the lengths cost more than the loop)."""
        need = np.empty(self._max_len + 1, dtype=np.int32)
        self._native.min_shared(best, _EPS, n, need)
        return need

    def _min_shared(self, best: float, n: int, s: int) -> np.ndarray:
        """Per text length m: fewest prefix keys a text must share to possibly reach ``best``.

        Needs min(acc + s, m) >= (best - eps) * (m + n) / 2; impossible lengths get a huge
        value. The slack eps dwarfs the rounding here, so no text that can tie is dropped.
        """
        ms = np.arange(self._max_len + 1)
        need = np.ceil((best - _EPS) * (ms + n) / 2)
        return np.where(ms >= need, np.maximum(need - s, 1), 1 << 30).astype(np.int64)
