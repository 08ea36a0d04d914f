/* Optional native kernel of the near-duplicate search (selfinstruct/similarity.py).
 *
 * survivors(): from the postings of a query's keys, the texts whose multiset token overlap with
 * the query can still reach a bar, and that overlap exactly. prefix_hits(): the decision index's
 * entries that a query's probe reads and the first bound keeps; second_bound(): the texts of
 * those entries that a tighter bound keeps. verify(): the exact F of the candidates, best bound
 * first, with rapidfuzz's LCS called from here (bind_lcs() checks that it can be). Without this
 * module (no compiler at install time) similarity.py computes the same with numpy and Python,
 * more slowly. The loops of the first three run without the GIL; verify() keeps it (it reads
 * Python strings).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* A key's postings: its ids in the CSR arrays, then those in its tail (all larger). */
typedef struct {
    Py_buffer tail_view, bits_view;
    int has_tail, has_bits;
    const int32_t *ids[2];
    Py_ssize_t len[2];
    const uint8_t *bits; /* optional: bit id set when the key holds text id (ids < cover) */
} IdList;

/* A bytearray (index_text()'s tails and small run grow as bytearrays) is read as items of the
 * size asked for. */
static int take_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if ((view->itemsize != itemsize && !PyByteArray_Check(obj)) || (view->len % itemsize) != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous array of %zd-byte items", what, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* A buffer an argument must export: writable or not, its item size, its name for errors. */
typedef struct {
    PyObject *obj;
    int writable;
    Py_ssize_t itemsize;
    const char *name;
} Wanted;

/* Takes the buffers of wanted[0:n] into views; returns how many it took (fewer than n: an
 * exception is set, and the caller releases those taken). */
static int take_buffers(const Wanted *wanted, int n, Py_buffer *views)
{
    int have = 0;
    for (; have < n; have++)
        if (take_buffer(wanted[have].obj, &views[have], wanted[have].writable, wanted[have].itemsize,
                        wanted[have].name) < 0)
            break;
    return have;
}

/* A contiguous array of native int32 or int64 items (its format says so: a float64 or uint32
 * array of the same width is refused); -1 with an exception set otherwise. */
static int take_int_array(PyObject *obj, Py_buffer *view, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '=' || *f == '@' || *f == (PY_LITTLE_ENDIAN ? '<' : '>')) /* native order only */
        f++;
    if (!((view->itemsize == 4 || view->itemsize == 8) && (*f == 'i' || *f == 'l' || *f == 'q') && f[1] == 0)) {
        PyErr_Format(PyExc_TypeError, "%s: expected an int32 or int64 array", what);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Item k of an array take_int_array() accepted (int32 or int64 items). */
static inline int64_t int_item(const Py_buffer *view, Py_ssize_t k)
{
    return view->itemsize == 4 ? ((const int32_t *)view->buf)[k] : ((const int64_t *)view->buf)[k];
}

/* First index in ids[0:len] (ascending) holding a value >= x. */
static Py_ssize_t lower_bound(const int32_t *ids, Py_ssize_t len, int32_t x)
{
    Py_ssize_t lo = 0;
    while (len > 0) {
        Py_ssize_t half = len >> 1;
        if (ids[lo + half] < x) {
            lo += half + 1;
            len -= half + 1;
        } else {
            len = half;
        }
    }
    return lo;
}

/* A binary search's step costs about what LOOKUP_COST postings of a pass over a list do (a
 * cache miss each against a streamed read; measured at 52k and 1M texts). */
#define LOOKUP_COST 4

static int has_id(const IdList *list, int32_t id)
{
    for (int part = 0; part < 2; part++) {
        Py_ssize_t at = lower_bound(list->ids[part], list->len[part], id);
        if (at < list->len[part] && list->ids[part][at] == id)
            return 1;
    }
    return 0;
}

/* Text id's length, or 0 with *bad set when the need table has no entry for it. */
static inline int32_t length_of(const int32_t *lens, int32_t id, Py_ssize_t n_need, int *bad)
{
    int32_t m = lens[id];
    if (m < 0 || m >= n_need) {
        *bad = 1;
        return 0;
    }
    return m;
}

/* Offers a dropped text to the runners-up runners[:*r]: most keys held first, then shortest
 * (insertion into at most min(n_runners, 64)). */
static inline void offer_runner(int32_t id, uint16_t c, int32_t m, int32_t *runners, uint16_t *runner_count,
                                int32_t *runner_len, Py_ssize_t n_runners, Py_ssize_t *r)
{
    Py_ssize_t at = *r;
    while (at > 0 && (runner_count[at - 1] < c || (runner_count[at - 1] == c && runner_len[at - 1] > m)))
        at--;
    if (at < n_runners && at < 64) {
        Py_ssize_t last = *r < n_runners && *r < 64 ? *r : *r - 1;
        for (Py_ssize_t x = last; x > at; x--) {
            runners[x] = runners[x - 1];
            runner_count[x] = runner_count[x - 1];
            runner_len[x] = runner_len[x - 1];
        }
        runners[at] = id;
        runner_count[at] = c;
        runner_len[at] = m;
        if (last == *r)
            (*r)++;
    }
}

/* Word w (texts 64w .. 64w + 63) of a bitset, zero past bit `end` (the bytes there are not read). */
static inline uint64_t bit_word(const uint8_t *bits, Py_ssize_t w, Py_ssize_t end)
{
    uint64_t x = 0;
    Py_ssize_t first = w * 64;
    if (first + 64 <= end) {
        memcpy(&x, bits + 8 * w, 8);
        return x;
    }
    memcpy(&x, bits + 8 * w, (size_t)((end - first + 7) >> 3));
    return x & (((uint64_t)1 << (end - first)) - 1); /* end - first < 64 here */
}

/* The planes (a binary count, plane j holding bit j) of how many of the n_bits bitsets hold each
 * text of words w .. w + 3 (all below the end of the bitsets), four words a lane: the bitsets are
 * added four at a time through carry-save adders (a + b + c as two bits, five operations), the
 * carries of weight four rippled into the planes above. One function per number of planes, so
 * that they stay in registers. */
typedef uint64_t lanes4 __attribute__((vector_size(32)));
/* Adds carry (one bit per text) into planes p[from .. to - 1], as binary addition carries. */
#define RIPPLE(p, from, to, carry)                                                                           \
    for (int j_ = (from); j_ < (to); j_++) {                                                                 \
        __typeof__(carry) next_ = (p)[j_] & (carry);                                                         \
        (p)[j_] ^= (carry);                                                                                  \
        (carry) = next_;                                                                                     \
    }
#define CSA(h, l, a, b, c)                                                                                   \
    do {                                                                                                     \
        lanes4 u_ = (a) ^ (b);                                                                               \
        (h) = ((a) & (b)) | (u_ & (c));                                                                      \
        (l) = u_ ^ (c);                                                                                      \
    } while (0)
#define DEFINE_COUNT_CHUNK(P)                                                                                 \
    static void count_chunk_##P(const uint8_t *const *bits, Py_ssize_t n_bits, Py_ssize_t w,                 \
                                uint64_t plane[][4])                                                         \
    {                                                                                                        \
        lanes4 p[P];                                                                                         \
        for (int j = 0; j < P; j++)                                                                          \
            p[j] = (lanes4){0, 0, 0, 0};                                                                     \
        Py_ssize_t b = 0;                                                                                    \
        for (; b + 4 <= n_bits; b += 4) {                                                                    \
            lanes4 x0, x1, x2, x3, twos_a, twos_b, fours;                                                    \
            memcpy(&x0, bits[b] + 8 * w, 32);                                                                \
            memcpy(&x1, bits[b + 1] + 8 * w, 32);                                                            \
            memcpy(&x2, bits[b + 2] + 8 * w, 32);                                                            \
            memcpy(&x3, bits[b + 3] + 8 * w, 32);                                                            \
            CSA(twos_a, p[0], p[0], x0, x1);                                                                 \
            CSA(twos_b, p[0], p[0], x2, x3);                                                                 \
            CSA(fours, p[1], p[1], twos_a, twos_b);                                                          \
            RIPPLE(p, 2, P, fours)                                                                           \
        }                                                                                                    \
        for (; b < n_bits; b++) {                                                                            \
            lanes4 carry;                                                                                    \
            memcpy(&carry, bits[b] + 8 * w, 32);                                                             \
            RIPPLE(p, 0, P, carry)                                                                           \
        }                                                                                                    \
        for (int j = 0; j < P; j++)                                                                          \
            for (int lane = 0; lane < 4; lane++)                                                             \
                plane[j][lane] = p[j][lane];                                                                 \
    }
DEFINE_COUNT_CHUNK(2)
DEFINE_COUNT_CHUNK(3)
DEFINE_COUNT_CHUNK(4)
DEFINE_COUNT_CHUNK(5)
DEFINE_COUNT_CHUNK(16)

/* count_chunk for one word, any part of which may lie past `end` (read up to there only). */
static void count_word(const uint8_t *const *bits, Py_ssize_t n_bits, Py_ssize_t w, Py_ssize_t end, int n_planes,
                       uint64_t plane[][4], int lane)
{
    uint64_t p[16] = {0};
    for (Py_ssize_t b = 0; b < n_bits; b++) {
        uint64_t carry = bit_word(bits[b], w, end);
        RIPPLE(p, 0, n_planes, carry)
    }
    for (int j = 0; j < n_planes; j++)
        plane[j][lane] = p[j];
}

/* Of the texts in `among`, those whose count (in n_planes planes) is at least v: compared from the
 * top plane down. */
static inline uint64_t at_least(const uint64_t *plane, int n_planes, Py_ssize_t v, uint64_t among)
{
    if (v >= ((Py_ssize_t)1 << n_planes))
        return 0; /* more than the planes can count */
    uint64_t above = 0, equal = among; /* count > v, == v so far */
    for (int j = n_planes - 1; j >= 0 && equal != 0; j--) {
        if ((v >> j) & 1) {
            equal &= plane[j];
        } else {
            above |= equal & plane[j];
            equal &= ~plane[j];
        }
    }
    return above | equal;
}

/* The dense count's cost against the postings', in units of about a nanosecond: a word of 64 texts
 * costs DENSE_WORD plus DENSE_KEY per bitset added to it; a posting of a scanned key about
 * SPARSE_POSTING (its count, and the length check of the texts it is the first of); a text the dense
 * count looks at one by one DENSE_HIT. */
#define DENSE_WORD 4
#define DENSE_KEY 1.5
#define DENSE_GROUP 1
#define SPARSE_POSTING 4
#define DENSE_HIT 4
/* Length classes of the dense count: class b holds the texts of BUCKET_START[b] .. BUCKET_START[b + 1]
 * - 1 tokens. The module's LENGTH_CLASSES gives similarity.py the first eight (the rows it keeps). */
#define N_BUCKETS 8
static const int32_t BUCKET_START[N_BUCKETS + 1] = {0, 4, 8, 12, 16, 20, 28, 40, INT32_MAX};
/* Runners-up are looked for among texts holding at least this many keys fewer than a survivor must. */
#define DENSE_RUNNER_SLACK 2

/* survivors(keys, indptr, data, tails, n_scan, lens, need, limit, counts, out, out_ov, runners
 *           [, bitsets, cover[, mode[, length_rows]]]) -> (k, r)
 *
 * keys:   int64, the query's keys, rarest first. Key k's postings (the ascending ids of the texts
 *         holding it) are data[indptr[k]:indptr[k + 1]] (int64 indptr, int32 data; none when
 *         k + 1 >= len(indptr)) followed by tails[i], None or an int32 array of larger ids.
 * n_scan: the postings of the first n_scan keys are read in full; the other K - n_scan (the most common keys)
 *         are only looked up for texts still in the running. The caller picks n_scan so that a
 *         text found in none of the first n_scan cannot reach the bar.
 * lens:   int32, token count per text. need: int32 per length m, the overlap a text of that
 *         length needs to reach the bar (more than m when it cannot).
 * limit:  only ids < limit count. counts: uint16 scratch of at least limit entries, all zero
 *         (left all zero). out, out_ov: int32 of at least limit + 1 and limit entries (the count
 *         loop writes one past the texts it keeps).
 * runners: int32, room for the R texts dropped first (after the scanned lists) that held the
 *         most of them, shortest first among equals: a bar for a nearest search to start from.
 * bitsets, cover: optional, like tails: None or key i's postings below id cover as a bitset
 *         (uint8, bit id & 7 of byte id >> 3). Step 3 then asks "does text id hold the key?" of a
 *         few kilobytes instead of a pass over the key's long postings (ids >= cover: a search).
 * mode:   -1 (default): the kernel picks the dense count below when it costs less; 0: never; 1: whenever
 *         it can.
 * length_rows: optional, for the dense count: N_BUCKETS rows of bits (uint8, rows of equal width, each
 *         at least cover bits) marking the texts below cover by length class (see BUCKET_START).
 * The dense count, for the texts below d = min(cover, limit): 64 texts at a time, the bitsets of all
 * query keys (a key without one gets one for the call, from its postings) are added bit-sliced
 * (planes of a binary count, in registers), and only the texts whose count can reach need are
 * looked at one by one (a text must count at least what the shortest length of its class needs).
 * For keys held by a few percent of the texts each (a small vocabulary, no rare words) this
 * replaces tens of thousands of postings and length checks with a few bit operations per key and
 * word. Same survivors and overlaps; the runners-up are then taken among the texts holding nearly
 * enough keys, lower and lower until there are enough (all keys counted).
 * Returns (k, r): out[:k] the surviving ids (no order), out_ov[:k] their exact overlaps, and
 * runners[:r] (best first).
 */
static PyObject *survivors(PyObject *self, PyObject *args)
{
    PyObject *keys_obj, *indptr_obj, *data_obj, *tails_obj, *lens_obj, *need_obj, *counts_obj, *out_obj, *ov_obj,
        *runners_obj, *bitsets_obj = Py_None, *length_obj = Py_None;
    Py_ssize_t n_scan, limit, cover = 0, mode = -1;
    if (!PyArg_ParseTuple(args, "OOOOnOOnOOOO|OnnO", &keys_obj, &indptr_obj, &data_obj, &tails_obj, &n_scan,
                          &lens_obj, &need_obj, &limit, &counts_obj, &out_obj, &ov_obj, &runners_obj, &bitsets_obj, &cover,
                          &mode, &length_obj))
        return NULL;
    PyObject *seq = PySequence_Fast(tails_obj, "tails must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n_lists = PySequence_Fast_GET_SIZE(seq);
    PyObject *bit_seq = NULL;
    if (bitsets_obj != Py_None) {
        bit_seq = PySequence_Fast(bitsets_obj, "bitsets must be a sequence or None");
        if (bit_seq == NULL) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    enum { KEYS, INDPTR, DATA, LENS, NEED, COUNTS, OUT, OV, RUNNERS, N_VIEWS };
    const Wanted wanted[N_VIEWS] = {
        {keys_obj, 0, 8, "keys"},     {indptr_obj, 0, 8, "indptr"}, {data_obj, 0, 4, "data"},
        {lens_obj, 0, 4, "lens"},     {need_obj, 0, 4, "need"},     {counts_obj, 1, 2, "counts"},
        {out_obj, 1, 4, "out"},       {ov_obj, 1, 4, "out_ov"},     {runners_obj, 1, 4, "runners"},
    };
    Py_buffer views[N_VIEWS];
    int have = 0; /* views taken so far */
    Py_ssize_t k = -1, r = 0;
    IdList *lists = NULL;
    const uint8_t **dense_bits = NULL;
    uint8_t *made_bits = NULL;
    uint64_t *kept_planes = NULL;
    Py_buffer length_view;
    int has_length = 0;
    if ((have = take_buffers(wanted, N_VIEWS, views)) < N_VIEWS)
        goto done;
    if (length_obj != Py_None) {
        if (take_buffer(length_obj, &length_view, 0, 1, "length_rows") < 0)
            goto done;
        has_length = 1;
        if (length_view.len % N_BUCKETS != 0 || length_view.len / N_BUCKETS < (cover + 7) / 8) {
            PyErr_SetString(PyExc_ValueError, "length_rows: need 8 rows of at least cover bits");
            goto done;
        }
    }
    const Py_ssize_t n_need = views[NEED].len / 4;
    if (bit_seq != NULL && (PySequence_Fast_GET_SIZE(bit_seq) != n_lists || cover < 0)) {
        PyErr_SetString(PyExc_ValueError, "need len(bitsets) == len(keys) and cover >= 0");
        goto done;
    }
    if (views[KEYS].len / 8 != n_lists || n_scan < 0 || n_scan > n_lists || n_lists > 65535 || limit < 0 || n_need < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "need len(keys) == len(tails) <= 65535, 0 <= n_scan <= len(keys), limit >= 0, a need table");
        goto done;
    }
    if (views[LENS].len / 4 < limit || views[COUNTS].len / 2 < limit || views[OUT].len / 4 <= limit ||
        views[OV].len / 4 < limit) {
        PyErr_SetString(PyExc_ValueError, "lens, counts and out_ov need at least limit entries, out limit + 1");
        goto done;
    }
    lists = PyMem_Calloc(n_lists ? (size_t)n_lists : 1, sizeof(IdList));
    if (lists == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *keys = (const int64_t *)views[KEYS].buf;
    const int64_t *indptr = (const int64_t *)views[INDPTR].buf;
    const int32_t *data = (const int32_t *)views[DATA].buf;
    const Py_ssize_t n_indptr = views[INDPTR].len / 8, n_data = views[DATA].len / 4;
    for (Py_ssize_t i = 0; i < n_lists; i++) {
        int64_t key = keys[i];
        if (key < 0) {
            PyErr_SetString(PyExc_ValueError, "negative key");
            goto done;
        }
        if (key + 1 < n_indptr) {
            int64_t a = indptr[key], b = indptr[key + 1];
            if (a < 0 || b < a || b > n_data) {
                PyErr_SetString(PyExc_ValueError, "indptr out of range of data");
                goto done;
            }
            lists[i].ids[0] = data + a;
            lists[i].len[0] = (Py_ssize_t)(b - a);
        }
        PyObject *tail = PySequence_Fast_GET_ITEM(seq, i);
        if (tail != Py_None) {
            if (take_buffer(tail, &lists[i].tail_view, 0, 4, "tails") < 0)
                goto done;
            lists[i].has_tail = 1;
            lists[i].ids[1] = (const int32_t *)lists[i].tail_view.buf;
            lists[i].len[1] = lists[i].tail_view.len / 4;
        }
        PyObject *bits = bit_seq != NULL ? PySequence_Fast_GET_ITEM(bit_seq, i) : Py_None;
        if (bits != Py_None) {
            if (take_buffer(bits, &lists[i].bits_view, 0, 1, "bitsets") < 0)
                goto done;
            lists[i].has_bits = 1;
            if (lists[i].bits_view.len < (cover + 7) / 8) {
                PyErr_SetString(PyExc_ValueError, "a bitset is shorter than cover bits");
                goto done;
            }
            lists[i].bits = (const uint8_t *)lists[i].bits_view.buf;
        }
    }

    const int32_t *lens = (const int32_t *)views[LENS].buf;
    const int32_t *need = (const int32_t *)views[NEED].buf;
    uint16_t *counts = (uint16_t *)views[COUNTS].buf;
    int32_t *out = (int32_t *)views[OUT].buf;
    int32_t *out_ov = (int32_t *)views[OV].buf;
    int32_t *runners = (int32_t *)views[RUNNERS].buf;
    const Py_ssize_t n_runners = views[RUNNERS].len / 4;
    uint16_t runner_count[64];
    int32_t runner_len[64];
    int bad_length = 0;

    /* The dense count: whether it can be used and costs less than reading the postings of the
     * scanned bitset keys. The keys without a bitset get one for the call (made from their postings
     * below dense_end), so that every key is counted in the planes. */
    Py_ssize_t dense_end = 0, n_bits = 0, n_made = 0, made_width = 0, made_postings = 0;
    Py_ssize_t group_floor[N_BUCKETS];
    unsigned group_classes[N_BUCKETS];
    int n_groups = 0;
    if (bit_seq != NULL && mode != 0) {
        dense_end = cover < limit ? cover : limit;
        if (dense_end > INT32_MAX)
            dense_end = INT32_MAX;
        double sparse_cost = 0, held = 0;
        for (Py_ssize_t i = 0; i < n_lists; i++) {
            for (int part = 0; part < 2; part++) {
                Py_ssize_t below = lower_bound(lists[i].ids[part], lists[i].len[part], (int32_t)dense_end);
                held += (double)below;
                if (lists[i].bits == NULL)
                    made_postings += below;
                else if (i < n_scan)
                    sparse_cost += (double)below;
            }
            n_bits += lists[i].bits != NULL;
        }
        n_made = n_lists - n_bits;
        /* Per length class, the fewest keys a text of that class must hold (the need of its shortest
         * length that can reach need); classes with equal values form a group. Without
         * length_rows, one class of all lengths. */
        int n_classes = has_length ? N_BUCKETS : 1;
        Py_ssize_t lowest = -1;
        for (int b = 0; b < n_classes; b++) {
            Py_ssize_t lo = has_length ? BUCKET_START[b] : 0, hi = has_length ? BUCKET_START[b + 1] : n_need;
            int32_t fewest = -1;
            for (Py_ssize_t m = lo; m < hi && m < n_need; m++)
                if (need[m] <= m && (fewest < 0 || need[m] < fewest))
                    fewest = need[m];
            if (fewest < 0)
                continue; /* no text of the class can reach need */
            if (lowest < 0 || fewest < lowest)
                lowest = fewest;
            int g = 0;
            while (g < n_groups && group_floor[g] != fewest)
                g++;
            if (g == n_groups) {
                group_floor[g] = fewest;
                group_classes[g] = 0;
                n_groups++;
            }
            group_classes[g] |= 1u << b;
        }
        double n_words = (double)((dense_end + 63) / 64);
        /* The texts it looks at one by one: those holding at least the lowest floor (less the
         * runners-up's slack), as if keys were held independently (a Poisson tail). */
        Py_ssize_t floor_low = lowest - (n_runners > 0 ? DENSE_RUNNER_SLACK : 0);
        double mean = dense_end > 0 ? held / (double)dense_end : 0, term = exp(-mean), below = 0;
        for (Py_ssize_t k = 0; k < floor_low; k++) {
            below += term;
            term *= mean / (double)(k + 1);
        }
        double hits = (double)dense_end * (below < 1 ? 1 - below : 0);
        double dense_cost = n_words * (DENSE_WORD + DENSE_KEY * (double)n_lists + DENSE_GROUP * (double)n_groups) +
                            (double)made_postings + DENSE_HIT * hits;
        /* At floor 1 every text holding a key is looked at, as the postings' length check does. */
        if (dense_end <= 0 || n_bits == 0 || n_groups == 0 || lowest < 1 ||
            (mode < 0 && (floor_low < 2 || dense_cost >= sparse_cost * SPARSE_POSTING)))
            dense_end = 0;
    }
    if (dense_end > 0) {
        made_width = (dense_end + 255) / 256 * 32; /* whole chunks of four words */
        dense_bits = PyMem_Malloc((size_t)n_lists * sizeof(*dense_bits));
        made_bits = n_made ? PyMem_Calloc((size_t)n_made, (size_t)made_width) : NULL;
        /* With runners-up: the planes are kept, to look lower for them if too few came close. */
        if (n_runners > 0)
            kept_planes = PyMem_Malloc((size_t)((dense_end + 63) / 64) * 16 * sizeof(uint64_t));
        if (dense_bits == NULL || (n_made && made_bits == NULL) || (n_runners > 0 && kept_planes == NULL)) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0, b = 0; i < n_lists; i++)
            dense_bits[i] = lists[i].bits != NULL ? lists[i].bits : made_bits + made_width * b++;
    }

    Py_BEGIN_ALLOW_THREADS
    /* 0. Dense count: bitsets for the keys without one. */
    for (Py_ssize_t i = 0; i < n_lists && dense_end > 0; i++) {
        uint8_t *row = (uint8_t *)dense_bits[i];
        for (int part = 0; part < 2 && lists[i].bits == NULL; part++) {
            const int32_t *ids = lists[i].ids[part];
            for (Py_ssize_t j = 0, len = lists[i].len[part]; j < len && ids[j] < dense_end; j++)
                if (ids[j] >= 0)
                    row[ids[j] >> 3] |= (uint8_t)(1u << (ids[j] & 7));
        }
    }
    /* 1. Count the scanned lists per text; out collects each text once (written always, kept
     *    when new: most postings are a text's first, and a branch on it mispredicts). With the
     *    dense count, only the texts from dense_end on. */
    Py_ssize_t touched = 0;
    for (Py_ssize_t i = 0; i < n_scan; i++) {
        for (int part = 0; part < 2; part++) {
            const int32_t *ids = lists[i].ids[part];
            Py_ssize_t len = lists[i].len[part];
            for (Py_ssize_t j = dense_end > 0 ? lower_bound(ids, len, (int32_t)dense_end) : 0; j < len; j++) {
                int32_t id = ids[j];
                if (id >= limit || id < 0)
                    break; /* ascending: the rest is past the limit */
                out[touched] = id;
                touched += counts[id]++ == 0;
            }
        }
    }
    /* 2. Keep the texts that could reach the bar if they held every key not read yet. */
    Py_ssize_t alive = 0, rest = n_lists - n_scan;
    for (Py_ssize_t t = 0; t < touched && n_runners == 0; t++) {
        /* Without runners-up, branch-free: which texts survive is unpredictable. The reads are
         * random (ids in order of first sight): ask for them a few texts ahead. */
        if (t + 16 < touched) {
            __builtin_prefetch(&lens[out[t + 16]]);
            __builtin_prefetch(&counts[out[t + 16]]);
        }
        int32_t id = out[t], m = length_of(lens, id, n_need, &bad_length);
        uint16_t c = counts[id];
        int keep = (Py_ssize_t)c + rest >= need[m];
        counts[id] = keep ? c : 0;
        out_ov[alive] = m; /* out_ov holds the lengths until step 4: no second read of lens */
        out[alive] = id;
        alive += keep;
    }
    for (Py_ssize_t t = 0; t < touched && n_runners > 0; t++) {
        int32_t id = out[t], m = length_of(lens, id, n_need, &bad_length);
        uint16_t c = counts[id];
        if ((Py_ssize_t)c + rest >= need[m]) {
            out_ov[alive] = m; /* out_ov holds the lengths until step 4: no second read of lens */
            out[alive++] = id;
            continue;
        }
        counts[id] = 0;
        offer_runner(id, c, m, runners, runner_count, runner_len, n_runners, &r); /* keep the best dropped ones */
    }
    /* 2b. Dense count: the planes of each word of 64 texts, then one by one the texts counting at
     *     least their group's floor (a little less to find runners-up); a survivor's count (every
     *     key) goes into counts for steps 3 and 4. */
    int n_planes = 1;
    while (((Py_ssize_t)1 << n_planes) <= n_lists)
        n_planes++;
    for (int g = 0; g < n_groups; g++) {
        group_floor[g] -= n_runners > 0 ? DENSE_RUNNER_SLACK : 0;
        if (group_floor[g] < 1)
            group_floor[g] = 1;
    }
    /* The lowest floor first: a word with no text reaching it needs nothing more. */
    const uint8_t *group_rows[N_BUCKETS][N_BUCKETS];
    int group_n_rows[N_BUCKETS];
    Py_ssize_t lowest_floor = n_groups > 0 ? group_floor[0] : 0;
    for (int g = 0; g < n_groups; g++) {
        group_n_rows[g] = 0;
        for (int b = 0; b < N_BUCKETS && has_length; b++)
            if (group_classes[g] >> b & 1)
                group_rows[g][group_n_rows[g]++] = (const uint8_t *)length_view.buf + b * (length_view.len / N_BUCKETS);
        if (group_floor[g] < lowest_floor)
            lowest_floor = group_floor[g];
    }
    const Py_ssize_t n_words = (dense_end + 63) / 64;
    void (*count_chunk)(const uint8_t *const *, Py_ssize_t, Py_ssize_t, uint64_t[][4]) =
        n_planes <= 2 ? count_chunk_2 : n_planes == 3 ? count_chunk_3 : n_planes == 4 ? count_chunk_4
        : n_planes == 5 ? count_chunk_5 : count_chunk_16;
    uint64_t chunk[16][4];
    for (Py_ssize_t w = 0; w < n_words; w++) { /* every word, even when none can reach: runners-up */
        if (w % 4 == 0) {
            if ((w + 4) * 64 <= dense_end) {
                count_chunk(dense_bits, n_lists, w, chunk);
            } else {
                for (int lane = 0; lane < 4 && w + lane < n_words; lane++)
                    count_word(dense_bits, n_lists, w + lane, dense_end, n_planes, chunk, lane);
            }
        }
        uint64_t plane[16];
        for (int j = 0; j < n_planes; j++)
            plane[j] = chunk[j][w % 4];
        if (kept_planes != NULL)
            memcpy(kept_planes + w * n_planes, plane, (size_t)n_planes * sizeof(uint64_t));
        uint64_t reach = at_least(plane, n_planes, lowest_floor, ~(uint64_t)0), hits = 0;
        for (int g = 0; g < n_groups && reach != 0; g++) {
            if (group_floor[g] > n_lists)
                continue;
            uint64_t in_group = has_length ? 0 : ~(uint64_t)0;
            for (int k = 0; k < group_n_rows[g]; k++)
                in_group |= bit_word(group_rows[g][k], w, dense_end);
            in_group &= reach;
            hits |= group_floor[g] == lowest_floor ? in_group : at_least(plane, n_planes, group_floor[g], in_group);
        }
        for (; hits != 0; hits &= hits - 1) {
            int bit = __builtin_ctzll(hits);
            int32_t id = (int32_t)(w * 64 + bit), m = length_of(lens, id, n_need, &bad_length);
            uint32_t c = 0;
            for (int j = 0; j < n_planes; j++)
                c += (uint32_t)((plane[j] >> bit) & 1) << j;
            if ((Py_ssize_t)c >= need[m]) {
                counts[id] = (uint16_t)c;
                out_ov[alive] = m;
                out[alive++] = id;
            } else if (n_runners > 0) {
                offer_runner(id, (uint16_t)c, m, runners, runner_count, runner_len, n_runners, &r);
            }
        }
    }
    /* Too few runners-up: the texts holding one key fewer, and so on down, until there are enough. */
    for (Py_ssize_t f = (lowest_floor <= n_lists ? lowest_floor : n_lists + 1) - 1; kept_planes != NULL && f >= 1 && r < n_runners;
         f--) {
        for (Py_ssize_t w = 0; w < n_words && r < n_runners; w++) {
            const uint64_t *plane = kept_planes + w * n_planes;
            uint64_t level = at_least(plane, n_planes, f, ~(uint64_t)0) & ~at_least(plane, n_planes, f + 1, ~(uint64_t)0);
            for (; level != 0 && r < n_runners; level &= level - 1) {
                int32_t id = (int32_t)(w * 64 + __builtin_ctzll(level));
                offer_runner(id, (uint16_t)f, length_of(lens, id, n_need, &bad_length), runners, runner_count,
                             runner_len, n_runners, &r);
            }
        }
    }
    /* 3. The common keys, least common first: count them for the texts still alive (from the
     *    key's bitset when it has one, else by binary search while they are few, else by one
     *    pass over the list), then drop those that can no longer reach the bar. */
    for (Py_ssize_t i = n_scan; i < n_lists && alive > 0; i++) {
        Py_ssize_t len = lists[i].len[0] + lists[i].len[1];
        rest--;
        if (lists[i].bits != NULL || dense_end > 0) {
            /* From its bitset, or a search; the dense count has counted every key below dense_end. */
            const uint8_t *bits = lists[i].bits;
            Py_ssize_t kept = 0;
            for (Py_ssize_t t = 0; t < alive; t++) {
                int32_t id = out[t], m = out_ov[t];
                int held = id < dense_end             ? 0
                           : bits != NULL && id < cover ? (bits[id >> 3] >> (id & 7)) & 1
                                                        : has_id(&lists[i], id);
                uint16_t c = counts[id] + (uint16_t)held;
                int keep = (Py_ssize_t)c + (id < dense_end ? 0 : rest) >= need[m];
                counts[id] = keep ? c : 0;
                out[kept] = id;
                out_ov[kept] = m;
                kept += keep;
            }
            alive = kept;
            continue;
        }
        Py_ssize_t steps = 1;
        while (((Py_ssize_t)1 << steps) < len)
            steps++;
        if (alive * steps * LOOKUP_COST < len) {
            for (Py_ssize_t t = 0; t < alive; t++)
                counts[out[t]] += (uint16_t)has_id(&lists[i], out[t]);
        } else {
            for (int part = 0; part < 2; part++) {
                const int32_t *ids = lists[i].ids[part];
                for (Py_ssize_t j = 0, n = lists[i].len[part]; j < n; j++) {
                    int32_t id = ids[j];
                    if (id >= limit || id < 0)
                        break;
                    counts[id] += counts[id] != 0; /* branch-free: few are alive */
                }
            }
        }
        Py_ssize_t kept = 0;
        for (Py_ssize_t t = 0; t < alive; t++) {
            int32_t id = out[t], m = out_ov[t];
            if ((Py_ssize_t)counts[id] + rest >= need[m]) {
                out_ov[kept] = m;
                out[kept++] = id;
            } else {
                counts[id] = 0;
            }
        }
        alive = kept;
    }
    /* 4. Every key is counted now: the exact overlaps. Leave counts all zero. */
    for (Py_ssize_t t = 0; t < alive; t++) {
        out_ov[t] = counts[out[t]];
        counts[out[t]] = 0;
    }
    k = alive;
    Py_END_ALLOW_THREADS

    if (bad_length) {
        PyErr_SetString(PyExc_ValueError, "a text length is outside the need table");
        k = -1;
    }
done:
    for (int v = 0; v < have; v++)
        PyBuffer_Release(&views[v]);
    if (lists != NULL) {
        for (Py_ssize_t i = 0; i < n_lists; i++) {
            if (lists[i].has_tail)
                PyBuffer_Release(&lists[i].tail_view);
            if (lists[i].has_bits)
                PyBuffer_Release(&lists[i].bits_view);
        }
        PyMem_Free(lists);
    }
    PyMem_Free(dense_bits);
    PyMem_Free(made_bits);
    PyMem_Free(kept_planes);
    if (has_length)
        PyBuffer_Release(&length_view);
    Py_DECREF(seq);
    Py_XDECREF(bit_seq);
    if (k < 0)
        return NULL;
    return Py_BuildValue("nn", k, r);
}

/* First index in a[lo:n] (ascending) holding a value >= x (upper = 0) or > x (upper = 1), galloping
 * from lo: the ranges are searched in ascending order, so each search starts where the last ended. */
static Py_ssize_t gallop(const int64_t *a, Py_ssize_t lo, Py_ssize_t n, int64_t x, int upper)
{
#define BEFORE(v) (upper ? (v) <= x : (v) < x)
    if (lo >= n || !BEFORE(a[lo]))
        return lo;
    Py_ssize_t step = 1, hi = lo + 1; /* invariant: a[lo] is before x */
    while (hi < n && BEFORE(a[hi])) {
        lo = hi;
        step <<= 1;
        hi = lo + step;
    }
    if (hi > n)
        hi = n;
    /* a[lo] before x; a[hi] (if hi < n) not: binary search in (lo, hi] */
    Py_ssize_t len = hi - lo - 1;
    lo += 1;
    while (len > 0) {
        Py_ssize_t half = len >> 1;
        if (BEFORE(a[lo + half])) {
            lo += half + 1;
            len -= half + 1;
        } else {
            len = half;
        }
    }
    return lo;
#undef BEFORE
}

/* The first bound of a prefix-index entry (see RougeLIndex._probe): whether the text whose first
 * shared prefix key this entry is can still share need[m] keys with the query. */
typedef struct {
    int64_t n_keys, n_rare, q_rest, limit, n_need, n_lens, n_span;
    uint64_t qtop;
    const int64_t *need;
    const int32_t *lens;
    const int64_t *span_need, *span_jmax; /* NULL: the ranges are the need table's own */
    int capped, bad;
} Bound;

/* Whether a span's entry lies in one of the need table's ranges of its key (true without spans):
 * its length bucket asks no more than the key's K - i (qb), and its j is within that range. */
static inline int in_span(const Bound *b, int64_t comp, int64_t qb)
{
    if (b->span_need == NULL)
        return 1;
    int64_t bucket = (comp >> 18) & 1023;
    return bucket < b->n_span && ((comp >> 10) & 255) <= b->span_jmax[bucket] && b->span_need[bucket] <= qb;
}

static inline __attribute__((always_inline)) int first_bound(Bound *b, int64_t comp, uint64_t top, int32_t doc,
                                                             int64_t qb, int64_t *qi_out, int64_t *j_out)
{
    if (doc < 0 || doc >= b->limit)
        return 0;
    int64_t rest = comp & 1023, j = (comp >> 10) & 255, m;
    if (b->capped) {
        if (doc >= b->n_lens) {
            b->bad = 1;
            return 0;
        }
        m = b->lens[doc];
    } else {
        m = (comp >> 18) & 1023;
    }
    if (m < 0 || m >= b->n_need) {
        b->bad = 1;
        return 0;
    }
    int64_t qi = b->n_keys - qb, rare = 0;
    if (qi < b->n_rare) {
        int64_t a = b->n_rare - qi, c = m - rest - __builtin_popcountll(top) - j;
        rare = a < c ? a : c;
    }
    int64_t need = b->need[m];
    int64_t bound = __builtin_popcountll(top & b->qtop) + (rest < b->q_rest ? rest : b->q_rest) + rare;
    if (bound < need)
        return 0;
    if (b->capped && (m - j < qb ? m - j : qb) < need)
        return 0;
    *qi_out = qi;
    *j_out = j;
    return 1;
}

/* Everything prefix_hits() reads and writes once its buffers are taken. */
typedef struct {
    Bound b;
    Py_ssize_t n_runs; /* sorted runs; the unsorted one follows at index n_runs */
    const int64_t **comps;
    const uint64_t **tops;
    const int32_t **docs;
    const Py_ssize_t *sizes;
    Py_ssize_t n_ranges;
    const int64_t *lows, *highs, *tags;
    Py_ssize_t *bounds; /* scratch: 2 per (run, range) */
    Py_ssize_t capacity;
    int32_t *out_doc;
    int64_t *out_qi, *out_j;
} Scan;

static inline __attribute__((always_inline)) Py_ssize_t scan_hits(Scan *s)
{
    const Py_ssize_t n_runs = s->n_runs, n_ranges = s->n_ranges;
    const int64_t *lows = s->lows, *highs = s->highs, *tags = s->tags;
    Py_ssize_t *bounds = s->bounds, total = 0, k = 0;
    for (Py_ssize_t r = 0; r < n_runs; r++) {
        Py_ssize_t at = 0;
        for (Py_ssize_t i = 0; i < n_ranges; i++) {
            Py_ssize_t a = gallop(s->comps[r], at, s->sizes[r], lows[i], 0);
            Py_ssize_t e = gallop(s->comps[r], a, s->sizes[r], highs[i], 1);
            bounds[2 * (r * n_ranges + i)] = a;
            bounds[2 * (r * n_ranges + i) + 1] = e;
            total += e - a;
            at = e;
        }
    }
    total += s->sizes[n_runs];
    if (total > s->capacity)
        return -total - 1;
    /* A local copy: the out arrays could alias the bound's fields, which would be reloaded from
     * memory after every store otherwise. */
    Bound b = s->b;
    int32_t *out_doc = s->out_doc;
    int64_t *out_qi = s->out_qi, *out_j = s->out_j;
    for (Py_ssize_t r = 0; r < n_runs; r++) {
        const int64_t *comp = s->comps[r];
        const uint64_t *top = s->tops[r];
        const int32_t *doc = s->docs[r];
        for (Py_ssize_t i = 0; i < n_ranges; i++) {
            const int64_t tag = tags[i];
            for (Py_ssize_t x = bounds[2 * (r * n_ranges + i)], e = bounds[2 * (r * n_ranges + i) + 1]; x < e;) {
                if (!in_span(&b, comp[x], tag)) {
                    /* Entries ascend by j within a length: the rest of this length is out too.
                     * Gallop to the next length: a step or two over a short gap, a search over
                     * a long one (large pools), so a span costs at most what its ranges did. */
                    x = gallop(comp, x + 1, e, ((comp[x] >> 18) + 1) << 18, 0);
                    continue;
                }
                int64_t qi, j;
                if (first_bound(&b, comp[x], top[x], doc[x], tag, &qi, &j)) {
                    out_qi[k] = qi;
                    out_j[k] = j;
                    out_doc[k++] = doc[x];
                }
                x++;
            }
        }
    }
    const int64_t *sc = s->comps[n_runs];
    for (Py_ssize_t x = 0; x < s->sizes[n_runs]; x++) {
        Py_ssize_t i = gallop(lows, 0, n_ranges, sc[x], 1) - 1; /* the last range starting at or before it */
        int64_t qi, j;
        if (i >= 0 && sc[x] <= highs[i] && in_span(&b, sc[x], tags[i]) &&
            first_bound(&b, sc[x], s->tops[n_runs][x], s->docs[n_runs][x], tags[i], &qi, &j)) {
            out_qi[k] = qi;
            out_j[k] = j;
            out_doc[k++] = s->docs[n_runs][x];
        }
    }
    s->b.bad = b.bad;
    return k;
}

/* The bounds count bits of every entry: with the popcnt instruction where the CPU has it (the
 * portable build would otherwise call a library routine per count, a sixth of the time).
 * WITH_POPCNT(name, T, pass) defines name(T *), which runs pass, inlined, compiled both ways. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define WITH_POPCNT(name, T, pass)                                                                      \
    static Py_ssize_t name##_plain(T *s) { return pass(s); }                                           \
    __attribute__((target("popcnt"))) static Py_ssize_t name##_popcnt(T *s) { return pass(s); }        \
    static Py_ssize_t name(T *s) { return __builtin_cpu_supports("popcnt") ? name##_popcnt(s) : name##_plain(s); }
#else
#define WITH_POPCNT(name, T, pass)                                                                      \
    static Py_ssize_t name(T *s) { return pass(s); }
#endif

WITH_POPCNT(run_scan, Scan, scan_hits)

/* prefix_hits(runs, small, lows, highs, tags, n_keys, n_rare, qtop, q_rest, need, lens, capped, limit,
 *             out_doc, out_qi, out_j[, span_need, span_jmax]) -> k
 *
 * The lookup and first bound of RougeLIndex._probe in one pass. runs: (comp int64, top uint64,
 * doc int32) triples, each sorted by comp; small: one more triple, unsorted. lows, highs (int64)
 * are sorted, disjoint ranges of comp, tags (int64) the query's K - i of each. For every entry in
 * a range, in run order, range order and then entry order (the small run last, in its own order),
 * the entry is kept when its text is below limit and its first bound reaches need[m] (int64 per
 * length; m from the entry, or from lens when capped). out_doc (int32), out_qi and out_j (int64)
 * receive the kept entries' text, query position and text position. Returns k, the number kept,
 * or -(entries in the ranges) - 1 when the out arrays are shorter than that: nothing is written,
 * call again with longer ones.
 *
 * With span_need and span_jmax (int64, one per length bucket m of the entries' comp): each range
 * is a span, one per probe key, covering all of its lengths; an entry counts as in it only when
 * span_need[m] <= its tag and its j <= span_jmax[m], i.e. when it lies in one of the need
 * table's ranges of that key: the same entries in the same order as those ranges give. One
 * search per key instead of one per (key, length), whose ranges hold ~10 entries each in a 52k
 * pool; the entries past a length's range are skipped by galloping to the next length.
 */
static PyObject *prefix_hits(PyObject *self, PyObject *args)
{
    PyObject *runs_obj, *small_obj, *lows_obj, *highs_obj, *tags_obj, *need_obj, *lens_obj, *doc_obj, *qi_obj, *j_obj;
    PyObject *span_need_obj = Py_None, *span_jmax_obj = Py_None;
    long long n_keys, n_rare, q_rest, limit;
    unsigned long long qtop;
    int capped;
    if (!PyArg_ParseTuple(args, "OOOOOLLKLOOpLOOO|OO", &runs_obj, &small_obj, &lows_obj, &highs_obj, &tags_obj, &n_keys,
                          &n_rare, &qtop, &q_rest, &need_obj, &lens_obj, &capped, &limit, &doc_obj, &qi_obj, &j_obj,
                          &span_need_obj, &span_jmax_obj))
        return NULL;
    if ((span_need_obj == Py_None) != (span_jmax_obj == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "prefix_hits: span_need and span_jmax go together");
        return NULL;
    }
    PyObject *runs = PySequence_Fast(runs_obj, "runs must be a sequence");
    if (runs == NULL)
        return NULL;
    Py_ssize_t n_runs = PySequence_Fast_GET_SIZE(runs);
    if (n_runs > 8) {
        PyErr_SetString(PyExc_ValueError, "at most 8 sorted runs");
        Py_DECREF(runs);
        return NULL;
    }
    enum { LOWS, HIGHS, TAGS, NEED, LENS, DOC, QI, J, N_FIXED };
    enum { MAX_VIEWS = N_FIXED + 2 + 3 * 9 };
    Py_buffer views[MAX_VIEWS];
    int have = 0;
    Py_ssize_t k = -1;
    Py_ssize_t *bounds = NULL;
    const Wanted fixed[N_FIXED] = {
        {lows_obj, 0, 8, "lows"}, {highs_obj, 0, 8, "highs"}, {tags_obj, 0, 8, "tags"},   {need_obj, 0, 8, "need"},
        {lens_obj, 0, 4, "lens"}, {doc_obj, 1, 4, "out_doc"}, {qi_obj, 1, 8, "out_qi"}, {j_obj, 1, 8, "out_j"},
    };
    if ((have = take_buffers(fixed, N_FIXED, views)) < N_FIXED)
        goto done;
    const int64_t *span_need = NULL, *span_jmax = NULL;
    Py_ssize_t n_span = 0;
    if (span_need_obj != Py_None) {
        if (take_buffer(span_need_obj, &views[have], 0, 8, "span_need") < 0)
            goto done;
        span_need = views[have].buf;
        n_span = views[have++].len / 8;
        if (take_buffer(span_jmax_obj, &views[have], 0, 8, "span_jmax") < 0)
            goto done;
        span_jmax = views[have].buf;
        if (views[have++].len / 8 != n_span) {
            PyErr_SetString(PyExc_ValueError, "prefix_hits: span_need and span_jmax differ in length");
            goto done;
        }
    }
    /* the sorted runs, then the small one: comp, top, doc each */
    const int64_t *comps[9];
    const uint64_t *tops[9];
    const int32_t *docs[9];
    Py_ssize_t sizes[9];
    for (Py_ssize_t r = 0; r <= n_runs; r++) {
        PyObject *triple = r < n_runs ? PySequence_Fast_GET_ITEM(runs, r) : small_obj;
        PyObject *parts[3];
        if (!PyTuple_Check(triple) || PyTuple_GET_SIZE(triple) != 3) {
            PyErr_SetString(PyExc_TypeError, "each run must be a (comp, top, doc) tuple");
            goto done;
        }
        for (int p = 0; p < 3; p++)
            parts[p] = PyTuple_GET_ITEM(triple, p);
        if (take_buffer(parts[0], &views[have], 0, 8, "comp") < 0)
            goto done;
        comps[r] = (const int64_t *)views[have].buf;
        sizes[r] = views[have++].len / 8;
        if (take_buffer(parts[1], &views[have], 0, 8, "top") < 0)
            goto done;
        tops[r] = (const uint64_t *)views[have].buf;
        Py_ssize_t n_top = views[have++].len / 8;
        if (take_buffer(parts[2], &views[have], 0, 4, "doc") < 0)
            goto done;
        docs[r] = (const int32_t *)views[have].buf;
        Py_ssize_t n_doc = views[have++].len / 4;
        if (n_top != sizes[r] || n_doc != sizes[r]) {
            PyErr_SetString(PyExc_ValueError, "a run's comp, top and doc differ in length");
            goto done;
        }
    }
    const Py_ssize_t n_ranges = views[LOWS].len / 8;
    if (views[HIGHS].len / 8 != n_ranges || views[TAGS].len / 8 != n_ranges || views[NEED].len < 8) {
        PyErr_SetString(PyExc_ValueError, "lows, highs and tags must have one entry per range, need at least one");
        goto done;
    }
    const int64_t *lows = (const int64_t *)views[LOWS].buf, *highs = (const int64_t *)views[HIGHS].buf;
    const int64_t *tags = (const int64_t *)views[TAGS].buf;
    for (Py_ssize_t i = 0; i < n_ranges; i++)
        if (highs[i] < lows[i] || (i && lows[i] <= highs[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "the ranges must be sorted and disjoint");
            goto done;
        }
    bounds = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (size_t)(n_ranges * n_runs + 1));
    if (bounds == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t capacity = views[DOC].len / 4;
    if (views[QI].len / 8 < capacity)
        capacity = views[QI].len / 8;
    if (views[J].len / 8 < capacity)
        capacity = views[J].len / 8;
    Scan scan = {{n_keys, n_rare, q_rest, limit, views[NEED].len / 8, views[LENS].len / 4, n_span, qtop,
                  (const int64_t *)views[NEED].buf, (const int32_t *)views[LENS].buf, span_need, span_jmax, capped, 0},
                 n_runs, comps, tops, docs, sizes, n_ranges, lows, highs, tags, bounds, capacity,
                 (int32_t *)views[DOC].buf, (int64_t *)views[QI].buf, (int64_t *)views[J].buf};
    Py_BEGIN_ALLOW_THREADS
    k = run_scan(&scan);
    Py_END_ALLOW_THREADS
    Bound b = scan.b;

    if (b.bad) {
        PyErr_SetString(PyExc_ValueError, "a text length is outside the need table, or a text outside lens");
        k = -1;
        goto done;
    }
    PyMem_Free(bounds);
    bounds = NULL;
    for (int v = 0; v < have; v++)
        PyBuffer_Release(&views[v]);
    Py_DECREF(runs);
    return PyLong_FromSsize_t(k);
done:
    PyMem_Free(bounds);
    for (int v = 0; v < have; v++)
        PyBuffer_Release(&views[v]);
    Py_DECREF(runs);
    return NULL;
}

static int compare_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

#define COMMON_WORDS 4

typedef struct {
    Py_ssize_t n_hits, n_texts, n_need, n_runners;
    int64_t n_rare, n;
    const int32_t *doc, *lens;
    const int64_t *qi, *j, *need;
    const int16_t *ncommon;
    const uint64_t *cm, *qm;
    int64_t *packed;
    int32_t *out_cand, *runners;
    int64_t *out_ov, *out_m;
    Py_ssize_t r;
    int bad;
} Second;

static inline __attribute__((always_inline)) Py_ssize_t second_pass(Second *s)
{
    const Py_ssize_t n_hits = s->n_hits;
    for (Py_ssize_t x = 0; x < n_hits; x++) {
        int32_t d = s->doc[x];
        int64_t qi = s->qi[x] < 0xFFFFF ? s->qi[x] : 0xFFFFF;
        if (d < 0 || d >= s->n_texts || qi < 0 || s->j[x] < 0 || s->j[x] > 255) {
            s->bad = 1;
            return 0;
        }
        s->packed[x] = ((int64_t)d << 28) | (qi << 8) | s->j[x];
    }
    qsort(s->packed, (size_t)n_hits, sizeof(int64_t), compare_int64);
    double runner_key[64];
    Py_ssize_t k = 0, r = 0;
    for (Py_ssize_t a = 0; a < n_hits;) {
        int64_t d = s->packed[a] >> 28;
        Py_ssize_t e = a, h_rare = 0;
        while (e < n_hits && (s->packed[e] >> 28) == d) {
            h_rare += ((s->packed[e] >> 8) & 0xFFFFF) < s->n_rare;
            e++;
        }
        int64_t last = s->packed[a + (h_rare > 1 ? h_rare - 1 : 0)];
        int64_t m = s->lens[d];
        if (m < 0 || m >= s->n_need) {
            s->bad = 1;
            return 0;
        }
        int64_t after_q = s->n_rare - 1 - ((last >> 8) & 0xFFFFF), after_t = m - s->ncommon[d] - 1 - (last & 255);
        int64_t after = after_q < after_t ? after_q : after_t;
        int64_t shared_common = 0;
        for (int w = 0; w < COMMON_WORDS; w++)
            shared_common += __builtin_popcountll(s->cm[(Py_ssize_t)d * COMMON_WORDS + w] & s->qm[w]);
        int64_t ov = shared_common + h_rare + (h_rare > 0 && after > 0 ? after : 0);
        if (ov >= s->need[m]) {
            s->out_cand[k] = (int32_t)d;
            s->out_ov[k] = ov;
            s->out_m[k++] = m;
        } else {
            /* the best bounds among the dropped, earlier first among equals */
            double key = (double)ov / (double)(m + s->n);
            Py_ssize_t at = r;
            while (at > 0 && runner_key[at - 1] < key)
                at--;
            if (at < s->n_runners) {
                Py_ssize_t last_slot = r < s->n_runners ? r : r - 1;
                for (Py_ssize_t x = last_slot; x > at; x--) {
                    s->runners[x] = s->runners[x - 1];
                    runner_key[x] = runner_key[x - 1];
                }
                s->runners[at] = (int32_t)d;
                runner_key[at] = key;
                if (last_slot == r)
                    r++;
            }
        }
        a = e;
    }
    s->r = r;
    return k;
}

WITH_POPCNT(run_second, Second, second_pass)

/* second_bound(doc, qi, j, n_rare, n, lens, ncommon, cm, qm, need, out_cand, out_ov, out_m, runners) -> (k, r)
 *
 * The second bound of RougeLIndex._probe, per text from the hits prefix_hits() kept (doc int32,
 * qi and j int64: the hit's query and text positions). Per text (ascending ids): with h_rare its
 * hits at a rare query position (< n_rare) and (i, j) the last of those, its overlap is at most
 * its shared common keys (cm: uint64, 4 words per text, AND qm, 4 words) + h_rare + the keys
 * after both i and j (n_rare - 1 - i, or m - ncommon[text] - 1 - j). Texts whose bound reaches
 * need[m] (int64 per length; m from lens, int32) go to out_cand (int32), out_ov and out_m
 * (int64): k of them. Of the others, runners (int32) gets the len(runners) <= 64 with the
 * highest bound / (m + n), earlier first among equals: r of them.
 */
static PyObject *second_bound(PyObject *self, PyObject *args)
{
    PyObject *doc_obj, *qi_obj, *j_obj, *lens_obj, *ncommon_obj, *cm_obj, *qm_obj, *need_obj, *cand_obj, *ov_obj,
        *m_obj, *runners_obj;
    long long n_rare, n;
    if (!PyArg_ParseTuple(args, "OOOLLOOOOOOOOO", &doc_obj, &qi_obj, &j_obj, &n_rare, &n, &lens_obj, &ncommon_obj,
                          &cm_obj, &qm_obj, &need_obj, &cand_obj, &ov_obj, &m_obj, &runners_obj))
        return NULL;
    enum { DOC, QI, J, LENS, NCOMMON, CM, QM, NEED, CAND, OV, M, RUNNERS, N_VIEWS };
    const Wanted wanted[N_VIEWS] = {
        {doc_obj, 0, 4, "doc"},     {qi_obj, 0, 8, "qi"},         {j_obj, 0, 8, "j"},         {lens_obj, 0, 4, "lens"},
        {ncommon_obj, 0, 2, "ncommon"}, {cm_obj, 0, 8, "cm"},     {qm_obj, 0, 8, "qm"},       {need_obj, 0, 8, "need"},
        {cand_obj, 1, 4, "out_cand"}, {ov_obj, 1, 8, "out_ov"},  {m_obj, 1, 8, "out_m"},    {runners_obj, 1, 4, "runners"},
    };
    Py_buffer views[N_VIEWS];
    int have = 0;
    PyObject *result = NULL;
    int64_t *packed = NULL;
    if ((have = take_buffers(wanted, N_VIEWS, views)) < N_VIEWS)
        goto done;
    Py_ssize_t n_hits = views[DOC].len / 4;
    Py_ssize_t n_texts = views[LENS].len / 4;
    if (views[NCOMMON].len / 2 < n_texts)
        n_texts = views[NCOMMON].len / 2;
    if (views[CM].len / (8 * COMMON_WORDS) < n_texts)
        n_texts = views[CM].len / (8 * COMMON_WORDS);
    if (views[QI].len / 8 != n_hits || views[J].len / 8 != n_hits || views[QM].len / 8 != COMMON_WORDS ||
        views[NEED].len < 8 || views[CAND].len / 4 < n_hits || views[OV].len / 8 < n_hits || views[M].len / 8 < n_hits ||
        views[RUNNERS].len / 4 > 64) {
        PyErr_SetString(PyExc_ValueError, "need qi and j as long as doc, 4 words of qm, a need table, out arrays as long "
                                          "as doc and at most 64 runners");
        goto done;
    }
    packed = PyMem_Malloc(sizeof(int64_t) * (size_t)(n_hits ? n_hits : 1));
    if (packed == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Second s = {n_hits, n_texts, views[NEED].len / 8, views[RUNNERS].len / 4, n_rare, n,
                (const int32_t *)views[DOC].buf, (const int32_t *)views[LENS].buf, (const int64_t *)views[QI].buf,
                (const int64_t *)views[J].buf, (const int64_t *)views[NEED].buf, (const int16_t *)views[NCOMMON].buf,
                (const uint64_t *)views[CM].buf, (const uint64_t *)views[QM].buf, packed,
                (int32_t *)views[CAND].buf, (int32_t *)views[RUNNERS].buf, (int64_t *)views[OV].buf,
                (int64_t *)views[M].buf, 0, 0};
    Py_ssize_t k;
    Py_BEGIN_ALLOW_THREADS
    k = run_second(&s);
    Py_END_ALLOW_THREADS
    if (s.bad)
        PyErr_SetString(PyExc_ValueError, "a hit names a text outside lens, ncommon or cm, a position out of range, or a "
                                          "length outside the need table");
    else
        result = Py_BuildValue("nn", k, s.r);
done:
    PyMem_Free(packed);
    for (int v = 0; v < have; v++)
        PyBuffer_Release(&views[v]);
    return result;
}

/* ---- verify(): exact ROUGE-L F of a query with texts, through rapidfuzz's own LCS ----------
 *
 * similarity.py verified candidates one Python call (or one cdist) at a time; here the loop over
 * candidates runs in C and calls rapidfuzz's LCSseq.similarity through the scorer interface its
 * functions publish in a capsule (`_RF_Scorer`, the one rapidfuzz.process.cdist uses). The
 * declarations below follow that interface at version 3 (rapidfuzz >= 3.0); bind_lcs() checks the
 * version and the result type, and similarity.py falls back to the Python loop when it refuses. */

#include <stdbool.h>

typedef struct RfString {
    void (*dtor)(struct RfString *self);
    int kind; /* 0..3: 1, 2, 4 or 8 bytes per character */
    void *data;
    int64_t length;
    void *context;
} RfString;

typedef struct RfKwargs {
    void (*dtor)(struct RfKwargs *self);
    void *context;
} RfKwargs;

typedef struct RfScorerFunc {
    void (*dtor)(struct RfScorerFunc *self);
    union {
        bool (*f64)(const struct RfScorerFunc *, const RfString *, int64_t, double, double, double *);
        bool (*i64)(const struct RfScorerFunc *, const RfString *, int64_t, int64_t, int64_t, int64_t *);
        bool (*sizet)(const struct RfScorerFunc *, const RfString *, int64_t, size_t, size_t, size_t *);
    } call;
    void *context;
} RfScorerFunc;

typedef struct {
    uint32_t flags;
    union { double f64; int64_t i64; size_t sizet; } optimal_score, worst_score;
} RfScorerFlags;

typedef struct {
    uint32_t version;
    bool (*kwargs_init)(RfKwargs *self, PyObject *kwargs);
    bool (*get_scorer_flags)(const RfKwargs *kwargs, RfScorerFlags *flags);
    bool (*scorer_func_init)(RfScorerFunc *self, const RfKwargs *kwargs, int64_t count, const RfString *strings);
} RfScorer;

#define RF_INTERFACE_VERSION 3u
#define RF_RESULT_SIZE_T (1u << 7)

static const RfScorer *lcs_scorer = NULL;
static PyObject *no_kwargs = NULL; /* an empty dict, for kwargs_init */

/* bind_lcs(LCSseq.similarity) -> bool: whether verify() can call it. */
static PyObject *bind_lcs(PyObject *self, PyObject *scorer_fn)
{
    PyObject *capsule = PyObject_GetAttrString(scorer_fn, "_RF_Scorer");
    if (capsule == NULL) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    const RfScorer *scorer = PyCapsule_IsValid(capsule, NULL) ? PyCapsule_GetPointer(capsule, NULL) : NULL;
    Py_DECREF(capsule); /* the scorer is static data of rapidfuzz's module, which stays loaded */
    if (scorer == NULL || scorer->version != RF_INTERFACE_VERSION) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    if (no_kwargs == NULL && (no_kwargs = PyDict_New()) == NULL)
        return NULL;
    RfKwargs kwargs = {NULL, NULL};
    RfScorerFlags flags;
    if (!scorer->kwargs_init(&kwargs, no_kwargs))
        return NULL;
    bool ok = scorer->get_scorer_flags(&kwargs, &flags);
    if (kwargs.dtor)
        kwargs.dtor(&kwargs);
    if (!ok)
        return NULL;
    if (!(flags.flags & RF_RESULT_SIZE_T))
        Py_RETURN_FALSE;
    lcs_scorer = scorer;
    Py_RETURN_TRUE;
}

static int as_rf_string(PyObject *obj, RfString *out)
{
    if (!PyUnicode_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "verify: the query and the texts must be str");
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(obj) < 0)
        return -1;
#endif
    int kind = PyUnicode_KIND(obj);
    out->dtor = NULL;
    out->kind = kind == PyUnicode_1BYTE_KIND ? 0 : kind == PyUnicode_2BYTE_KIND ? 1 : 2;
    out->data = PyUnicode_DATA(obj);
    out->length = PyUnicode_GET_LENGTH(obj);
    out->context = NULL;
    return 0;
}

/* rouge_score's F-measure, the operations of similarity._fmeasure in its order (each one a
 * correctly rounded IEEE operation on exactly representable values, as in Python). */
static inline double fmeasure(size_t lcs, int64_t n, int64_t m)
{
    if (lcs == 0)
        return 0.0;
    double precision = (double)lcs / (double)n;
    double recall = (double)lcs / (double)m;
    return 2 * precision * recall / (precision + recall);
}

/* A binary heap of positions into ub and ids: the top has the highest bound, the lowest id
 * among equal bounds. */
typedef struct {
    const double *ub;
    const Py_buffer *ids;
    Py_ssize_t *heap;
    Py_ssize_t size;
} Ranking;

static inline int ranks_before(const Ranking *r, Py_ssize_t a, Py_ssize_t b)
{
    return r->ub[a] > r->ub[b] || (r->ub[a] == r->ub[b] && int_item(r->ids, a) < int_item(r->ids, b));
}

static void sift_down(Ranking *r, Py_ssize_t at)
{
    Py_ssize_t *h = r->heap, moving = h[at];
    for (;;) {
        Py_ssize_t child = 2 * at + 1;
        if (child >= r->size)
            break;
        if (child + 1 < r->size && ranks_before(r, h[child + 1], h[child]))
            child++;
        if (!ranks_before(r, h[child], moving))
            break;
        h[at] = h[child];
        at = child;
    }
    h[at] = moving;
}

static Py_ssize_t pop_top(Ranking *r)
{
    Py_ssize_t top = r->heap[0];
    r->heap[0] = r->heap[--r->size];
    if (r->size > 0)
        sift_down(r, 0);
    return top;
}

/* verify()'s bounds from overlaps into a new array *out (PyMem_Free it); -1 with an exception set. */
static int make_bounds(PyObject *ov_obj, const Py_buffer *ids, const int32_t *lens, Py_ssize_t n_lens, int64_t n,
                       Py_ssize_t count, double **out)
{
    Py_buffer view;
    if (take_buffer(ov_obj, &view, 0, 4, "verify: overlaps") < 0)
        return -1;
    const int32_t *ov = view.buf;
    double *bounds = NULL;
    if (view.len / 4 < count) {
        PyErr_SetString(PyExc_ValueError, "verify: overlaps is shorter than ids");
        goto fail;
    }
    if ((bounds = PyMem_Malloc(sizeof(double) * (size_t)(count ? count : 1))) == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        int64_t i = int_item(ids, k);
        if (i < 0 || i >= n_lens) {
            PyErr_SetString(PyExc_IndexError, "verify: an id outside seqs or lens");
            goto fail;
        }
        int64_t m = lens[i], o = ov[k] < m ? ov[k] : m;
        bounds[k] = (double)(2 * o) / (double)(m + n);
    }
    PyBuffer_Release(&view);
    *out = bounds;
    return 0;
fail:
    PyMem_Free(bounds);
    PyBuffer_Release(&view);
    return -1;
}

/* verify(query, seqs, ids, ub, lens, n, stop_above, cut_above, eps, best, best_id[, ranked[, overlaps]])
 *     -> (best, best_id)
 *
 * Scores texts ids[0], ids[1], ... (int32 or int64) against the query: F from the LCS of
 * query and seqs[i] (one character per token) and the lengths n and lens[i]. Returns at once the
 * first (F, id) with F > stop_above. Otherwise raises (best, best_id) -- the highest F, the
 * smallest id on ties -- and returns it; once best > cut_above, stops at the first k with
 * ub[k] < best - eps (ub: float64 upper bounds, descending; None: no cut).
 *
 * ranked=True: ub need not be sorted; the texts are taken in descending ub, ascending id among
 * equal bounds (the order np.lexsort((ids, -ub)) gives), through a heap, so that a long list
 * cut after a few texts is not sorted whole.
 *
 * overlaps (int32, with ub None): the bounds are 2 min(overlaps[k], m) / (m + n), m = lens[ids[k]],
 * the float numpy's 2 * np.minimum(ov, m) / (m + n) gives. */
static PyObject *verify(PyObject *self, PyObject *args)
{
    PyObject *query, *seqs, *ids_obj, *ub_obj, *lens_obj, *ov_obj = Py_None;
    long long n, best_id;
    double stop_above, cut_above, eps, best;
    int ranked = 0;
    if (!PyArg_ParseTuple(args, "OO!OOOLddddL|pO", &query, &PyList_Type, &seqs, &ids_obj, &ub_obj, &lens_obj, &n,
                          &stop_above, &cut_above, &eps, &best, &best_id, &ranked, &ov_obj))
        return NULL;
    if (lcs_scorer == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "verify: bind_lcs() did not succeed");
        return NULL;
    }
    if (n <= 0) {
        PyErr_SetString(PyExc_ValueError, "verify: the query must have tokens");
        return NULL;
    }
    RfString qstr;
    if (as_rf_string(query, &qstr) < 0)
        return NULL;
    Py_buffer ids_view, ub_view = {0}, lens_view;
    if (take_int_array(ids_obj, &ids_view, "verify: ids") < 0)
        return NULL;
    PyObject *result = NULL;
    int have_ub = 0, have_lens = 0;
    double *bounds = NULL; /* the bounds made from overlaps */
    Ranking rank = {NULL, NULL, NULL, 0};
    Py_ssize_t count = ids_view.len / ids_view.itemsize;
    if (ub_obj != Py_None && ov_obj != Py_None) {
        PyErr_SetString(PyExc_ValueError, "verify: give ub or overlaps, not both");
        goto done;
    }
    if (ub_obj != Py_None) {
        if (take_buffer(ub_obj, &ub_view, 0, 8, "verify: ub") < 0)
            goto done;
        have_ub = 1;
        if (ub_view.len / 8 < count) {
            PyErr_SetString(PyExc_ValueError, "verify: ub is shorter than ids");
            goto done;
        }
    }
    if (take_buffer(lens_obj, &lens_view, 0, 4, "verify: lens") < 0)
        goto done;
    have_lens = 1;
    const int32_t *lens = lens_view.buf;
    Py_ssize_t n_lens = lens_view.len / 4, n_seqs = PyList_GET_SIZE(seqs);
    const double *ub = have_ub ? ub_view.buf : NULL;
    if (ov_obj != Py_None && make_bounds(ov_obj, &ids_view, lens, n_lens, n, count, &bounds) < 0)
        goto done;
    if (bounds != NULL)
        ub = bounds;
    if (ranked && ub == NULL) {
        PyErr_SetString(PyExc_ValueError, "verify: ranked needs ub");
        goto done;
    }
    rank.ub = ub;
    rank.ids = &ids_view;
    if (ranked && count > 1) {
        rank.heap = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)count);
        if (rank.heap == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t k = 0; k < count; k++)
            rank.heap[k] = k;
        rank.size = count;
        for (Py_ssize_t k = count / 2; k-- > 0;)
            sift_down(&rank, k);
    }

    RfKwargs kwargs = {NULL, NULL};
    RfScorerFunc scorer = {0};
    if (!lcs_scorer->kwargs_init(&kwargs, no_kwargs))
        goto done;
    if (!lcs_scorer->scorer_func_init(&scorer, &kwargs, 1, &qstr)) {
        if (kwargs.dtor)
            kwargs.dtor(&kwargs);
        goto done;
    }
    int failed = 0;
    for (Py_ssize_t step = 0; step < count; step++) {
        Py_ssize_t k = rank.heap != NULL ? pop_top(&rank) : step;
        if (ub != NULL && best > cut_above && ub[k] < best - eps)
            break;
        int64_t i = int_item(&ids_view, k);
        if (i < 0 || i >= n_seqs || i >= n_lens) {
            PyErr_SetString(PyExc_IndexError, "verify: an id outside seqs or lens");
            failed = 1;
            break;
        }
        RfString text;
        size_t lcs;
        if (as_rf_string(PyList_GET_ITEM(seqs, i), &text) < 0 || !scorer.call.sizet(&scorer, &text, 1, 0, 0, &lcs)) {
            failed = 1;
            break;
        }
        double f = fmeasure(lcs, n, lens[i]);
        if (f > stop_above) {
            best = f;
            best_id = i;
            break;
        }
        if (f > best || (f == best && i < best_id)) {
            best = f;
            best_id = i;
        }
    }
    if (scorer.dtor)
        scorer.dtor(&scorer);
    if (kwargs.dtor)
        kwargs.dtor(&kwargs);
    if (!failed)
        result = Py_BuildValue("dL", best, best_id);
done:
    PyMem_Free(rank.heap);
    PyMem_Free(bounds);
    PyBuffer_Release(&ids_view);
    if (have_ub)
        PyBuffer_Release(&ub_view);
    if (have_lens)
        PyBuffer_Release(&lens_view);
    return result;
}

/* min_shared(best, eps, n, out) -> None
 *
 * RougeLIndex._min_shared(best, n, 0) into out (int32, one per length m): the fewest keys a text
 * of m tokens must share with a query of n tokens to possibly reach F = best, i.e.
 * max(ceil((best - eps) * (m + n) / 2), 1), or 2**30 when that exceeds m. The same float
 * operations in the same order as numpy's there. */
static PyObject *min_shared(PyObject *self, PyObject *args)
{
    double best, eps;
    long long n;
    PyObject *out_obj;
    if (!PyArg_ParseTuple(args, "ddLO", &best, &eps, &n, &out_obj))
        return NULL;
    Py_buffer view;
    if (take_buffer(out_obj, &view, 1, 4, "min_shared: out") < 0)
        return NULL;
    int32_t *out = view.buf;
    const double bar = best - eps;
    for (Py_ssize_t m = 0, len = view.len / 4; m < len; m++) {
        double need = ceil(bar * (double)(m + n) / 2);
        out[m] = (double)m >= need ? (need > 1 ? (int32_t)need : 1) : (int32_t)1 << 30;
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* min_lcs_above(t, n, x, big, out) -> None
 *
 * similarity._min_lcs_above(t, n, arange(len(x)), x) into out (int64, one per length m): the
 * smallest l <= min(n, m) whose float F(l, n, m) is > t, else big; n < 0 stands for n = l. x is
 * the real solution of F = t for each m, and the float F is tried on floor(x) - 1 ... floor(x) + 2,
 * with the same float operations in the same order as numpy's there. */
static PyObject *min_lcs_above(PyObject *self, PyObject *args)
{
    double t;
    long long n, big;
    PyObject *x_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "dLOLO", &t, &n, &x_obj, &big, &out_obj))
        return NULL;
    Wanted wanted[] = {{x_obj, 0, 8, "min_lcs_above: x"}, {out_obj, 1, 8, "min_lcs_above: out"}};
    Py_buffer views[2];
    int have = take_buffers(wanted, 2, views);
    PyObject *result = NULL;
    if (have < 2)
        goto done;
    Py_ssize_t len = views[0].len / 8;
    if (views[1].len / 8 != len) {
        PyErr_SetString(PyExc_ValueError, "min_lcs_above: out and x differ in length");
        goto done;
    }
    const double *x = views[0].buf;
    int64_t *out = views[1].buf;
    for (Py_ssize_t m = 0; m < len; m++) {
        int64_t base = (int64_t)floor(x[m]) - 1;
        out[m] = big;
        for (int d = 0; d < 4; d++) {  /* the smallest passing l: the first from below */
            int64_t l = base + d, nn = n < 0 ? l : n;
            if (l < 1 || l > (nn < m ? nn : m))
                continue;
            if (fmeasure((size_t)l, nn, m) > t) {
                out[m] = l;
                break;
            }
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < have; i++)
        PyBuffer_Release(&views[i]);
    return result;
}

/* Sequence of Python ints -> int64 array (PyMem); NULL with an exception set. */
static int64_t *int64s_of(PyObject *obj, Py_ssize_t *n_out, const char *what)
{
    PyObject *seq = PySequence_Fast(obj, what);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int64_t *out = PyMem_Malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    if (out == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(out);
            Py_DECREF(seq);
            return NULL;
        }
        out[i] = v;
    }
    Py_DECREF(seq);
    *n_out = n;
    return out;
}

typedef struct {
    int64_t value;
    int64_t at; /* position in the input: ties keep input order */
} Ranked;

static int compare_ranked(const void *a, const void *b)
{
    const Ranked *x = a, *y = b;
    if (x->value != y->value)
        return x->value < y->value ? -1 : 1;
    return x->at < y->at ? -1 : x->at > y->at;
}

/* Reads table[key] (int32 or int64 items); -1 with an exception set when key is out of range. */
static int table_value(const Py_buffer *table, int64_t key, int64_t *value)
{
    if (key < 0 || key >= table->len / table->itemsize) {
        PyErr_SetString(PyExc_IndexError, "key outside the table");
        return -1;
    }
    *value = int_item(table, key);
    return 0;
}

/* rank(keys, table) -> (keys, values, cum)
 *
 * The keys (Python ints) ordered by table[key] ascending, ties in the given order; their values
 * and the running sums of those (RougeLIndex._rarest_first and _cum_postings: table is the
 * postings count per key). Lists of ints. */
static PyObject *rank(PyObject *self, PyObject *args)
{
    PyObject *keys_obj, *table_obj, *result = NULL, *lists[3] = {NULL, NULL, NULL};
    if (!PyArg_ParseTuple(args, "OO", &keys_obj, &table_obj))
        return NULL;
    Py_buffer table;
    if (take_int_array(table_obj, &table, "rank: table") < 0)
        return NULL;
    Py_ssize_t n = 0;
    int64_t *keys = int64s_of(keys_obj, &n, "rank: keys must be a sequence");
    Ranked *ranked = keys ? PyMem_Malloc(sizeof(Ranked) * (size_t)(n ? n : 1)) : NULL;
    if (keys != NULL && ranked == NULL)
        PyErr_NoMemory();
    if (ranked == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (table_value(&table, keys[i], &ranked[i].value) < 0)
            goto done;
        ranked[i].at = i;
    }
    qsort(ranked, (size_t)n, sizeof(Ranked), compare_ranked);
    for (int l = 0; l < 3; l++)
        if ((lists[l] = PyList_New(n)) == NULL)
            goto done;
    int64_t sum = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        sum += ranked[i].value;
        PyObject *k = PyLong_FromLongLong(keys[ranked[i].at]), *v = PyLong_FromLongLong(ranked[i].value),
                 *c = PyLong_FromLongLong(sum);
        if (k == NULL || v == NULL || c == NULL) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_XDECREF(c);
            goto done;
        }
        PyList_SET_ITEM(lists[0], i, k);
        PyList_SET_ITEM(lists[1], i, v);
        PyList_SET_ITEM(lists[2], i, c);
    }
    result = PyTuple_Pack(3, lists[0], lists[1], lists[2]);
done:
    for (int l = 0; l < 3; l++)
        Py_XDECREF(lists[l]);
    PyMem_Free(ranked);
    PyMem_Free(keys);
    PyBuffer_Release(&table);
    return result;
}

/* probe_front(keys, ord, c0, c64, pi, lo, hi, qb, lows, highs, tags, qm) -> (r, n_common, qtop, q_rest)
 *
 * What RougeLIndex._probe computes before reading the decision index, for a query's keys (Python
 * ints) and ord (int64, each key's place in the global order, distinct; rarest first):
 * - the ranges of the index to read: for probe key i (the i-th rarest) and each range template
 *   of the need table's (pi == i: the first and last comp below the key in lo and hi, K - i in
 *   qb; rows of one i contiguous, ascending), lows = key << 28 | lo, highs = key << 28 | hi,
 *   tags = qb: written to lows/highs/tags (int64, room for len(pi)) sorted by lows, r = len(pi);
 * - the query's common-key mask: bit ord - c0 of every key with ord >= c0 (< c0 + 256) in qm
 *   (uint64[4]), how many (n_common), those from bit c64 - c0 on shifted down (qtop, the 64 most
 *   frequent) and how many common keys are not among those (q_rest).
 * numpy's version: the lines of _probe it replaces and RougeLIndex._masks. */
static PyObject *probe_front(PyObject *self, PyObject *args)
{
    PyObject *keys_obj, *ord_obj, *pi_obj, *lo_obj, *hi_obj, *qb_obj, *lows_obj, *highs_obj, *tags_obj, *qm_obj;
    long long c0, c64;
    if (!PyArg_ParseTuple(args, "OOLLOOOOOOOO", &keys_obj, &ord_obj, &c0, &c64, &pi_obj, &lo_obj, &hi_obj, &qb_obj,
                          &lows_obj, &highs_obj, &tags_obj, &qm_obj))
        return NULL;
    enum { ORD, PI, LO, HI, QB, LOWS, HIGHS, TAGS, QM, N_VIEWS };
    const Wanted wanted[N_VIEWS] = {
        {ord_obj, 0, 8, "ord"},     {pi_obj, 0, 8, "pi"},       {lo_obj, 0, 8, "lo"},
        {hi_obj, 0, 8, "hi"},       {qb_obj, 0, 8, "qb"},       {lows_obj, 1, 8, "lows"},
        {highs_obj, 1, 8, "highs"}, {tags_obj, 1, 8, "tags"},   {qm_obj, 1, 8, "qm"},
    };
    Py_buffer views[N_VIEWS];
    PyObject *result = NULL;
    Ranked *by_ord = NULL, *probes = NULL;
    Py_ssize_t *start = NULL;
    Py_ssize_t n = 0;
    int64_t *keys = NULL;
    int have = take_buffers(wanted, N_VIEWS, views);
    if (have < N_VIEWS)
        goto done;
    const Py_ssize_t r = views[PI].len / 8, n_ord = views[ORD].len / 8;
    if (views[LO].len / 8 != r || views[HI].len / 8 != r || views[QB].len / 8 != r || views[LOWS].len / 8 < r ||
        views[HIGHS].len / 8 < r || views[TAGS].len / 8 < r || views[QM].len / 8 != 4 || c64 < c0) {
        PyErr_SetString(PyExc_ValueError, "probe_front: pi, lo, hi and qb of one length, room for them, qm of 4 words");
        goto done;
    }
    if ((keys = int64s_of(keys_obj, &n, "probe_front: keys must be a sequence")) == NULL)
        goto done;
    by_ord = PyMem_Malloc(sizeof(Ranked) * (size_t)(n ? n : 1));
    probes = PyMem_Malloc(sizeof(Ranked) * (size_t)(n ? n : 1));
    start = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    if (by_ord == NULL || probes == NULL || start == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *ord = views[ORD].buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (keys[i] < 0 || keys[i] >= n_ord) {
            PyErr_SetString(PyExc_IndexError, "probe_front: key outside ord");
            goto done;
        }
        by_ord[i].value = ord[keys[i]];
        by_ord[i].at = keys[i];
    }
    qsort(by_ord, (size_t)n, sizeof(Ranked), compare_ranked);

    uint64_t *qm = views[QM].buf;
    uint64_t qtop = 0;
    long long n_common = 0, top_bit = c64 - c0;
    qm[0] = qm[1] = qm[2] = qm[3] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long bit = by_ord[i].value - c0;
        if (bit < 0)
            continue;
        if (bit >= 256 || bit >= top_bit + 64) {
            PyErr_SetString(PyExc_ValueError, "probe_front: a place past the common range");
            goto done;
        }
        qm[bit >> 6] |= (uint64_t)1 << (bit & 63);
        n_common++;
        if (bit >= top_bit)
            qtop |= (uint64_t)1 << (bit - top_bit);
    }
    long long q_rest = n_common - __builtin_popcountll(qtop);

    /* The rows of each probe key, then the probe keys in ascending key order: lows ascend. */
    const int64_t *pi = views[PI].buf, *lo = views[LO].buf, *hi = views[HI].buf, *qb = views[QB].buf;
    Py_ssize_t n_probes = 0;
    for (Py_ssize_t t = 0; t < r; t++) {
        if (pi[t] < 0 || pi[t] >= n || (t > 0 && pi[t] < pi[t - 1])) {
            PyErr_SetString(PyExc_ValueError, "probe_front: pi must be non-decreasing, below len(keys)");
            goto done;
        }
        while (n_probes <= pi[t]) /* a probe key without rows gets an empty block */
            start[n_probes++] = t;
    }
    start[n_probes] = r;
    for (Py_ssize_t i = 0; i < n_probes; i++) {
        probes[i].value = by_ord[i].at; /* the key */
        probes[i].at = i;
    }
    qsort(probes, (size_t)n_probes, sizeof(Ranked), compare_ranked);
    int64_t *lows = views[LOWS].buf, *highs = views[HIGHS].buf, *tags = views[TAGS].buf;
    Py_ssize_t out = 0;
    for (Py_ssize_t p = 0; p < n_probes; p++) {
        Py_ssize_t i = probes[p].at;
        int64_t key = probes[p].value;
        for (Py_ssize_t t = start[i]; t < start[i + 1]; t++, out++) {
            lows[out] = (key << 28) | lo[t];
            highs[out] = (key << 28) | hi[t];
            tags[out] = qb[t];
        }
    }
    result = Py_BuildValue("nLKL", r, n_common, (unsigned long long)qtop, q_rest);
done:
    for (int v = 0; v < have; v++)
        PyBuffer_Release(&views[v]);
    PyMem_Free(keys);
    PyMem_Free(by_ord);
    PyMem_Free(probes);
    PyMem_Free(start);
    return result;
}

/* seq_of(keys, codes[, flat, at, df]) -> str | None
 *
 * The string of code points codes[key] for the keys (Python ints) in order: a text's LCS
 * sequence (RougeLIndex._seq_of). None when a code is not a valid scalar value (past the last
 * code point, or a surrogate): the caller builds a tuple then. codes: int64 per key.
 * With flat (int32): the keys of a text being stored (distinct), written to flat[at:at + n] and
 * counted in df (int32 per key, +1 each): the rest of RougeLIndex._store_one, in the same pass. */
static PyObject *seq_of(PyObject *self, PyObject *args)
{
    PyObject *keys_obj, *codes_obj, *flat_obj = Py_None, *df_obj = Py_None, *result = NULL;
    Py_ssize_t at = 0;
    if (!PyArg_ParseTuple(args, "OO|OnO", &keys_obj, &codes_obj, &flat_obj, &at, &df_obj))
        return NULL;
    Py_buffer views[3];
    int have = 0;
    const Wanted wanted[3] = {{codes_obj, 0, 8, "seq_of: codes"}, {flat_obj, 1, 4, "seq_of: flat"},
                              {df_obj, 1, 4, "seq_of: df"}};
    PyObject *seq = NULL;
    Py_UCS4 small[256], *chars = small;
    if ((have = take_buffers(wanted, flat_obj == Py_None ? 1 : 3, views)) < (flat_obj == Py_None ? 1 : 3))
        goto done;
    if ((seq = PySequence_Fast(keys_obj, "seq_of: keys must be a sequence")) == NULL)
        goto done;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), n_codes = views[0].len / 8;
    if (n > 256 && (chars = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)n)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (have == 3 && (at < 0 || at + n > views[1].len / 4)) {
        PyErr_SetString(PyExc_ValueError, "seq_of: flat has no room for the keys at `at`");
        goto done;
    }
    const Py_ssize_t n_df = have == 3 ? views[2].len / 4 : n_codes;
    const int64_t *code = views[0].buf;
    int valid = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long key = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (key == -1 && PyErr_Occurred())
            goto done;
        if (key < 0 || key >= n_codes || key >= n_df) {
            PyErr_SetString(PyExc_IndexError, "seq_of: key outside codes (or df)");
            goto done;
        }
        int64_t c = code[key];
        if (c < 0 || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            valid = 0;
        chars[i] = (Py_UCS4)c;
    }
    if (have == 3) { /* every key checked above: nothing is half written */
        int32_t *flat = views[1].buf, *df = views[2].buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t key = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
            flat[at + i] = (int32_t)key;
            df[key]++;
        }
    }
    result = valid ? PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, chars, n) : Py_NewRef(Py_None);
done:
    if (chars != small)
        PyMem_Free(chars);
    Py_XDECREF(seq);
    for (int i = 0; i < have; i++)
        PyBuffer_Release(&views[i]);
    return result;
}

/* Appends more[(tid, j)] for j = 2 .. count to keys, stopping at the first the pool lacks. */
static int occurrence_keys(PyObject *keys, PyObject *more, PyObject *tid, Py_ssize_t count)
{
    for (Py_ssize_t j = 2; j <= count; j++) {
        PyObject *pair = Py_BuildValue("(On)", tid, j);
        if (pair == NULL)
            return -1;
        PyObject *key = PyDict_GetItemWithError(more, pair);
        Py_DECREF(pair);
        if (key == NULL)
            return PyErr_Occurred() ? -1 : 0; /* no pool text has this token j times */
        if (PyList_Append(keys, key) < 0)
            return -1;
    }
    return 0;
}

#define QUERY_SMALL 128

/* query_keys(tokens, vocab, more) -> (keys, tids) | None
 *
 * RougeLIndex._query's lookups: tids, the known tokens' ids (vocab: token -> id) in token order;
 * keys, each distinct id once in order of first occurrence, then for each repeated id (same
 * order) its occurrence keys more[(id, k)] for k = 2, 3 ... while the pool has one. None when no
 * token is known. Without repeats keys is tids (the same list). */
static PyObject *query_keys(PyObject *self, PyObject *args)
{
    PyObject *toks_obj, *vocab, *more;
    if (!PyArg_ParseTuple(args, "OO!O!", &toks_obj, &PyDict_Type, &vocab, &PyDict_Type, &more))
        return NULL;
    PyObject *toks = PySequence_Fast(toks_obj, "query_keys: tokens must be a sequence");
    if (toks == NULL)
        return NULL;
    PyObject *tids = NULL, *keys = NULL, *seen = NULL, *result = NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(toks);
    if ((tids = PyList_New(0)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *tid = PyDict_GetItemWithError(vocab, PySequence_Fast_GET_ITEM(toks, i)); /* borrowed */
        if (tid == NULL) {
            if (PyErr_Occurred())
                goto done;
            continue;
        }
        if (PyList_Append(tids, tid) < 0)
            goto done;
    }
    const Py_ssize_t k = PyList_GET_SIZE(tids);
    if (k == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* Distinct ids in order of first occurrence, and their counts. A token's id is one object
     * (vocab's value), so ids compare by identity; a dict past QUERY_SMALL tokens. */
    Py_ssize_t n_distinct = 0;
    PyObject *small_ids[QUERY_SMALL];
    Py_ssize_t small_counts[QUERY_SMALL];
    if (k <= QUERY_SMALL) {
        for (Py_ssize_t i = 0; i < k; i++) {
            PyObject *tid = PyList_GET_ITEM(tids, i);
            Py_ssize_t d = 0;
            while (d < n_distinct && small_ids[d] != tid)
                d++;
            if (d == n_distinct) {
                small_ids[n_distinct] = tid;
                small_counts[n_distinct++] = 1;
            } else {
                small_counts[d]++;
            }
        }
        if (n_distinct == k) {
            result = PyTuple_Pack(2, tids, tids);
            goto done;
        }
        if ((keys = PyList_New(n_distinct)) == NULL)
            goto done;
        for (Py_ssize_t d = 0; d < n_distinct; d++)
            PyList_SET_ITEM(keys, d, Py_NewRef(small_ids[d]));
        for (Py_ssize_t d = 0; d < n_distinct; d++)
            if (small_counts[d] > 1 && occurrence_keys(keys, more, small_ids[d], small_counts[d]) < 0)
                goto done;
    } else {
        if ((seen = PyDict_New()) == NULL)
            goto done;
        for (Py_ssize_t i = 0; i < k; i++) {
            PyObject *tid = PyList_GET_ITEM(tids, i), *count = PyDict_GetItemWithError(seen, tid);
            if (count == NULL && PyErr_Occurred())
                goto done;
            PyObject *next = PyLong_FromSsize_t(count == NULL ? 1 : PyLong_AsSsize_t(count) + 1);
            if (next == NULL || PyDict_SetItem(seen, tid, next) < 0) {
                Py_XDECREF(next);
                goto done;
            }
            Py_DECREF(next);
        }
        if (PyDict_GET_SIZE(seen) == k) {
            result = PyTuple_Pack(2, tids, tids);
            goto done;
        }
        if ((keys = PyDict_Keys(seen)) == NULL)
            goto done;
        PyObject *tid, *count;
        Py_ssize_t at = 0;
        while (PyDict_Next(seen, &at, &tid, &count)) {
            Py_ssize_t c = PyLong_AsSsize_t(count);
            if (c > 1 && occurrence_keys(keys, more, tid, c) < 0)
                goto done;
        }
    }
    result = PyTuple_Pack(2, keys, tids);
done:
    Py_XDECREF(seen);
    Py_XDECREF(keys);
    Py_XDECREF(tids);
    Py_DECREF(toks);
    return result;
}

/* Grows a bytearray by size bytes and returns where they start; NULL with an exception set.
 * PyByteArray_Resize over-allocates as it grows: appends are amortised O(1). */
static char *bytearray_grow(PyObject *ba, Py_ssize_t size)
{
    Py_ssize_t at = PyByteArray_GET_SIZE(ba);
    return PyByteArray_Resize(ba, at + size) < 0 ? NULL : PyByteArray_AS_STRING(ba) + at;
}

#define INDEX_SMALL 256

/* index_text(keys, doc, tails[, ord, c0, c64, alpha, cm, small, m_cap]) -> n_common
 *
 * RougeLIndex._index for one text (id doc, larger than every id so far; keys: its distinct keys,
 * Python ints):
 * - doc (native int32) is appended to tails[key] for every key, a bytearray made when missing;
 * - with the decision index (ord not None; int64, each key's place in the order, new keys
 *   negative): the text's common-key mask goes to row doc of cm (uint64, 4 words a row): bit
 *   ord[key] - c0 for each key with c0 <= ord[key] < c0 + 256; and its prefix entries are appended
 *   to small (a (comp, top, doc) triple of bytearrays), one for each of its plen = m - alpha[m] + 1
 *   first keys in (ord, key) order: comp = key << 28 | min(m, m_cap) << 18 | min(j, 255) << 10 |
 *   min(rest, 1023) for the j-th, top = the mask's bits from c64 - c0 on, shifted down (the 64
 *   most frequent keys), rest = the common keys not among those.
 * Returns the number of common keys (0 without ord). A bad ord, alpha, cm, small or key leaves
 * the tails as they were. Python's version: _Postings.append and the rest of _index. */
static PyObject *index_text(PyObject *self, PyObject *args)
{
    PyObject *keys_obj, *tails, *ord_obj = Py_None, *alpha_obj = Py_None, *cm_obj = Py_None, *small_obj = Py_None;
    long long doc_ll, c0 = 0, c64 = 0, m_cap = 1023;
    if (!PyArg_ParseTuple(args, "O!LO!|OLLOOOL", &PyList_Type, &keys_obj, &doc_ll, &PyDict_Type, &tails, &ord_obj,
                          &c0, &c64, &alpha_obj, &cm_obj, &small_obj, &m_cap))
        return NULL;
    if (doc_ll < 0 || doc_ll > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "index_text: doc out of int32 range");
        return NULL;
    }
    const int32_t doc = (int32_t)doc_ll;
    const Py_ssize_t m = PyList_GET_SIZE(keys_obj);
    PyObject *result = NULL, *small = NULL;
    Py_buffer views[3];
    int have = 0;
    int64_t stack[INDEX_SMALL], *placed = m <= INDEX_SMALL ? stack : PyMem_Malloc(sizeof(int64_t) * (size_t)m);
    if (placed == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    /* With the decision index: every argument checked and the masks made before anything is written. */
    const int indexed = ord_obj != Py_None;
    const int64_t *alpha = NULL;
    uint64_t mask[4] = {0, 0, 0, 0}, top = 0;
    if (indexed) {
        const Wanted wanted[3] = {{ord_obj, 0, 8, "ord"}, {alpha_obj, 0, 8, "alpha"}, {cm_obj, 1, 8, "cm"}};
        if ((have = take_buffers(wanted, 3, views)) < 3)
            goto done;
        small = PySequence_Fast(small_obj, "index_text: small must be a (comp, top, doc) triple");
        if (small == NULL)
            goto done;
        if (PySequence_Fast_GET_SIZE(small) != 3 || !PyByteArray_Check(PySequence_Fast_GET_ITEM(small, 0)) ||
            !PyByteArray_Check(PySequence_Fast_GET_ITEM(small, 1)) ||
            !PyByteArray_Check(PySequence_Fast_GET_ITEM(small, 2))) {
            PyErr_SetString(PyExc_TypeError, "index_text: small must be three bytearrays");
            goto done;
        }
        const int64_t *ord = views[0].buf;
        alpha = views[1].buf;
        const Py_ssize_t n_ord = views[0].len / 8, n_alpha = views[1].len / 8;
        if (m >= n_alpha || (Py_ssize_t)doc >= views[2].len / 32 || c64 < c0 || c64 - c0 > 192 || m_cap < 0 ||
            m_cap > 1023) {
            PyErr_SetString(PyExc_ValueError,
                            "index_text: need m < len(alpha), doc < rows of cm, 0 <= c64 - c0 <= 192, 0 <= m_cap <= 1023");
            goto done;
        }
        const int64_t top_bit = c64 - c0;
        for (Py_ssize_t i = 0; i < m; i++) {
            long long key = PyLong_AsLongLong(PyList_GET_ITEM(keys_obj, i));
            if (key == -1 && PyErr_Occurred())
                goto done;
            if (key < 0 || key >= n_ord || key > INT32_MAX) {
                PyErr_SetString(PyExc_IndexError, "index_text: key outside ord");
                goto done;
            }
            const int64_t o = ord[key], b = o - c0;
            placed[i] = (int64_t)(((uint64_t)o << 32) | (uint64_t)key);
            if (o >= c0 && b < 256) {
                mask[b >> 6] |= (uint64_t)1 << (b & 63);
                if (b >= top_bit)
                    top |= (uint64_t)1 << (b - top_bit);
            }
        }
    }
    for (Py_ssize_t i = 0; i < m; i++) { /* the tails */
        PyObject *key = PyList_GET_ITEM(keys_obj, i), *tail = PyDict_GetItemWithError(tails, key);
        if (tail == NULL) {
            if (PyErr_Occurred() || (tail = PyByteArray_FromStringAndSize(NULL, 0)) == NULL)
                goto done;
            int failed = PyDict_SetItem(tails, key, tail);
            Py_DECREF(tail); /* the dict holds it */
            if (failed < 0)
                goto done;
        } else if (!PyByteArray_Check(tail)) {
            PyErr_SetString(PyExc_TypeError, "index_text: tails must hold bytearrays");
            goto done;
        }
        char *at = bytearray_grow(tail, 4);
        if (at == NULL)
            goto done;
        memcpy(at, &doc, 4);
    }
    if (!indexed) {
        result = PyLong_FromLong(0);
        goto done;
    }
    uint64_t *row = (uint64_t *)views[2].buf + 4 * (Py_ssize_t)doc;
    int n_common = 0;
    for (int w = 0; w < 4; w++) {
        row[w] = mask[w];
        n_common += __builtin_popcountll(mask[w]);
    }
    const int64_t plen = m - alpha[m] + 1;
    if (m > 0 && plen > 0) {
        const int64_t rest = n_common - __builtin_popcountll(top);
        const int64_t low = ((int64_t)(m < m_cap ? m : m_cap) << 18) | (rest < 1023 ? rest : 1023);
        qsort(placed, (size_t)m, sizeof(int64_t), compare_int64); /* rarest first */
        const Py_ssize_t n_entries = plen < m ? (Py_ssize_t)plen : m;
        int64_t *c = (int64_t *)bytearray_grow(PySequence_Fast_GET_ITEM(small, 0), 8 * n_entries);
        uint64_t *t = c ? (uint64_t *)bytearray_grow(PySequence_Fast_GET_ITEM(small, 1), 8 * n_entries) : NULL;
        int32_t *d = t ? (int32_t *)bytearray_grow(PySequence_Fast_GET_ITEM(small, 2), 4 * n_entries) : NULL;
        if (d == NULL)
            goto done;
        for (Py_ssize_t j = 0; j < n_entries; j++) {
            c[j] = ((placed[j] & 0xFFFFFFFF) << 28) | ((int64_t)(j < 255 ? j : 255) << 10) | low;
            t[j] = top;
            d[j] = doc;
        }
    }
    result = PyLong_FromLong(n_common);
done:
    Py_XDECREF(small);
    for (int i = 0; i < have; i++)
        PyBuffer_Release(&views[i]);
    if (placed != stack)
        PyMem_Free(placed);
    return result;
}

static PyMethodDef methods[] = {
    {"survivors", survivors, METH_VARARGS,
     "survivors(keys, indptr, data, tails, n_scan, lens, need, limit, counts, out, out_ov, runners[, bitsets, cover"
     "[, mode[, length_rows]]]) -> "
     "(k, r): the texts whose token overlap with a query can reach a bar, and their exact overlaps (see "
     "selfinstruct/_overlap.c)."},
    {"prefix_hits", prefix_hits, METH_VARARGS,
     "prefix_hits(runs, small, lows, highs, tags, n_keys, n_rare, qtop, q_rest, need, lens, capped, limit, out_doc, "
     "out_qi, out_j[, span_need, span_jmax]) -> k: the prefix-index entries in the ranges that pass the first bound "
     "(see selfinstruct/_overlap.c)."},
    {"second_bound", second_bound, METH_VARARGS,
     "second_bound(doc, qi, j, n_rare, n, lens, ncommon, cm, qm, need, out_cand, out_ov, out_m, runners) -> (k, r): the "
     "texts of prefix_hits()'s hits whose second bound reaches the need table (see selfinstruct/_overlap.c)."},
    {"bind_lcs", bind_lcs, METH_O,
     "bind_lcs(rapidfuzz.distance.LCSseq.similarity) -> bool: whether verify() can call that scorer natively."},
    {"verify", verify, METH_VARARGS,
     "verify(query, seqs, ids, ub, lens, n, stop_above, cut_above, eps, best, best_id[, ranked[, overlaps]]) -> "
     "(best, best_id): "
     "exact ROUGE-L F of a query with texts through rapidfuzz's LCS, best first (see selfinstruct/_overlap.c)."},
    {"query_keys", query_keys, METH_VARARGS,
     "query_keys(tokens, vocab, more) -> (keys, tids) | None: a query's known token ids and keys (see "
     "selfinstruct/_overlap.c)."},
    {"seq_of", seq_of, METH_VARARGS,
     "seq_of(keys, codes[, flat, at, df]) -> str | None: the code points of the keys as a string; with flat, the keys "
     "stored there and counted in df (see selfinstruct/_overlap.c)."},
    {"rank", rank, METH_VARARGS,
     "rank(keys, table) -> (keys, values, cum): keys by table value, ties in order, with the values and their running "
     "sums (see selfinstruct/_overlap.c)."},
    {"probe_front", probe_front, METH_VARARGS,
     "probe_front(keys, ord, c0, c64, pi, lo, hi, qb, lows, highs, tags, qm) -> (r, n_common, qtop, q_rest): the "
     "index ranges of a probe, sorted, and the query's common-key masks (see selfinstruct/_overlap.c)."},
    {"index_text", index_text, METH_VARARGS,
     "index_text(keys, doc, tails[, ord, c0, c64, alpha, cm, small, m_cap]) -> n_common: one text into the postings' tails and "
     "the decision index's small run (see selfinstruct/_overlap.c)."},
    {"min_lcs_above", min_lcs_above, METH_VARARGS,
     "min_lcs_above(t, n, x, big, out) -> None: per text length, the smallest LCS whose F exceeds t "
     "(see selfinstruct/_overlap.c)."},
    {"min_shared", min_shared, METH_VARARGS,
     "min_shared(best, eps, n, out) -> None: per text length, the fewest shared keys with which F can reach best "
     "(see selfinstruct/_overlap.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_overlap", "Native kernel of selfinstruct.similarity.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__overlap(void)
{
    PyObject *mod = PyModule_Create(&module), *classes = mod != NULL ? PyTuple_New(N_BUCKETS) : NULL;
    for (int b = 0; classes != NULL && b < N_BUCKETS; b++) {
        PyObject *start = PyLong_FromLong(BUCKET_START[b]);
        if (start == NULL) {
            Py_CLEAR(classes);
            break;
        }
        PyTuple_SET_ITEM(classes, b, start);
    }
    if (classes == NULL || PyModule_AddObject(mod, "LENGTH_CLASSES", classes) < 0) {
        Py_XDECREF(classes);
        Py_XDECREF(mod);
        return NULL;
    }
    return mod;
}
