/* Optional native kernel of the near-duplicate search (selfinstruct/similarity.py).
 *
 * One function, survivors(): from the postings of a query's keys, the texts whose multiset
 * token overlap with the query can still reach a bar, and that overlap exactly. similarity.py
 * verifies the survivors with rapidfuzz's LCS, as it does its own candidates; without this
 * module (no compiler at install time) it computes the same set with numpy, more slowly.
 * The loops run without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* A key's postings: its ids in the CSR arrays, then those in its tail (all larger). */
typedef struct {
    Py_buffer tail_view;
    int has_tail;
    const int32_t *ids[2];
    Py_ssize_t len[2];
} IdList;

static int take_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize || (view->len % itemsize) != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous array of %zd-byte items", what, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
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

static int has_id(const IdList *list, int32_t id)
{
    for (int part = 0; part < 2; part++) {
        Py_ssize_t at = lower_bound(list->ids[part], list->len[part], id);
        if (at < list->len[part] && list->ids[part][at] == id)
            return 1;
    }
    return 0;
}

/* survivors(keys, indptr, data, tails, n_scan, lens, need, limit, counts, out, out_ov, runners)
 *     -> (k, r)
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
 *         (left all zero). out, out_ov: int32 of at least limit entries.
 * runners: int32, room for the R texts dropped first (after the scanned lists) that held the
 *         most of them, shortest first among equals: a bar for a nearest search to start from.
 * Returns (k, r): out[:k] the surviving ids (no order), out_ov[:k] their exact overlaps, and
 * runners[:r] (best first).
 */
static PyObject *survivors(PyObject *self, PyObject *args)
{
    PyObject *keys_obj, *indptr_obj, *data_obj, *tails_obj, *lens_obj, *need_obj, *counts_obj, *out_obj, *ov_obj,
        *runners_obj;
    Py_ssize_t n_scan, limit;
    if (!PyArg_ParseTuple(args, "OOOOnOOnOOOO", &keys_obj, &indptr_obj, &data_obj, &tails_obj, &n_scan, &lens_obj,
                          &need_obj, &limit, &counts_obj, &out_obj, &ov_obj, &runners_obj))
        return NULL;
    PyObject *seq = PySequence_Fast(tails_obj, "tails must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n_lists = PySequence_Fast_GET_SIZE(seq);
    enum { KEYS, INDPTR, DATA, LENS, NEED, COUNTS, OUT, OV, RUNNERS, N_VIEWS };
    const struct {
        PyObject *obj;
        int writable;
        Py_ssize_t itemsize;
        const char *name;
    } wanted[N_VIEWS] = {
        {keys_obj, 0, 8, "keys"},     {indptr_obj, 0, 8, "indptr"}, {data_obj, 0, 4, "data"},
        {lens_obj, 0, 4, "lens"},     {need_obj, 0, 4, "need"},     {counts_obj, 1, 2, "counts"},
        {out_obj, 1, 4, "out"},       {ov_obj, 1, 4, "out_ov"},     {runners_obj, 1, 4, "runners"},
    };
    Py_buffer views[N_VIEWS];
    int have = 0; /* views taken so far */
    Py_ssize_t k = -1, r = 0;
    IdList *lists = NULL;
    for (; have < N_VIEWS; have++)
        if (take_buffer(wanted[have].obj, &views[have], wanted[have].writable, wanted[have].itemsize,
                        wanted[have].name) < 0)
            goto done;
    const Py_ssize_t n_need = views[NEED].len / 4;
    if (views[KEYS].len / 8 != n_lists || n_scan < 0 || n_scan > n_lists || n_lists > 65535 || limit < 0 || n_need < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "need len(keys) == len(tails) <= 65535, 0 <= n_scan <= len(keys), limit >= 0, a need table");
        goto done;
    }
    if (views[LENS].len / 4 < limit || views[COUNTS].len / 2 < limit || views[OUT].len / 4 < limit ||
        views[OV].len / 4 < limit) {
        PyErr_SetString(PyExc_ValueError, "lens, counts, out and out_ov need at least limit entries");
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

    Py_BEGIN_ALLOW_THREADS
    /* 1. Count the scanned lists per text; out collects each text once. */
    Py_ssize_t touched = 0;
    for (Py_ssize_t i = 0; i < n_scan; i++) {
        for (int part = 0; part < 2; part++) {
            const int32_t *ids = lists[i].ids[part];
            for (Py_ssize_t j = 0, len = lists[i].len[part]; j < len; j++) {
                int32_t id = ids[j];
                if (id >= limit || id < 0)
                    break; /* ascending: the rest is past the limit */
                if (counts[id]++ == 0)
                    out[touched++] = id;
            }
        }
    }
    /* 2. Keep the texts that could reach the bar if they held every key not read yet. */
    Py_ssize_t alive = 0, rest = n_lists - n_scan;
    for (Py_ssize_t t = 0; t < touched; t++) {
        int32_t id = out[t];
        int32_t m = lens[id];
        if (m < 0 || m >= n_need) {
            bad_length = 1;
            m = 0;
        }
        uint16_t c = counts[id];
        if ((Py_ssize_t)c + rest >= need[m]) {
            out[alive++] = id;
            continue;
        }
        counts[id] = 0;
        /* Keep the best dropped ones: most keys held, then shortest (insertion into r <= 64). */
        Py_ssize_t at = r;
        while (at > 0 && (runner_count[at - 1] < c || (runner_count[at - 1] == c && runner_len[at - 1] > m)))
            at--;
        if (at < n_runners && at < 64) {
            Py_ssize_t last = r < n_runners && r < 64 ? r : r - 1;
            for (Py_ssize_t x = last; x > at; x--) {
                runners[x] = runners[x - 1];
                runner_count[x] = runner_count[x - 1];
                runner_len[x] = runner_len[x - 1];
            }
            runners[at] = id;
            runner_count[at] = c;
            runner_len[at] = m;
            if (last == r)
                r++;
        }
    }
    /* 3. The common keys, least common first: count them for the texts still alive (by
     *    binary search while they are few, else by one pass over the list), then drop those
     *    that can no longer reach the bar. */
    for (Py_ssize_t i = n_scan; i < n_lists && alive > 0; i++) {
        Py_ssize_t len = lists[i].len[0] + lists[i].len[1];
        rest--;
        Py_ssize_t steps = 1;
        while (((Py_ssize_t)1 << steps) < len)
            steps++;
        if (alive * steps < len) {
            for (Py_ssize_t t = 0; t < alive; t++)
                counts[out[t]] += (uint16_t)has_id(&lists[i], out[t]);
        } else {
            for (int part = 0; part < 2; part++) {
                const int32_t *ids = lists[i].ids[part];
                for (Py_ssize_t j = 0, n = lists[i].len[part]; j < n; j++) {
                    int32_t id = ids[j];
                    if (id >= limit || id < 0)
                        break;
                    if (counts[id])
                        counts[id]++;
                }
            }
        }
        Py_ssize_t kept = 0;
        for (Py_ssize_t t = 0; t < alive; t++) {
            int32_t id = out[t];
            int32_t m = lens[id];
            if (m < 0 || m >= n_need)
                m = 0;
            if ((Py_ssize_t)counts[id] + rest >= need[m])
                out[kept++] = id;
            else
                counts[id] = 0;
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
        for (Py_ssize_t i = 0; i < n_lists; i++)
            if (lists[i].has_tail)
                PyBuffer_Release(&lists[i].tail_view);
        PyMem_Free(lists);
    }
    Py_DECREF(seq);
    if (k < 0)
        return NULL;
    return Py_BuildValue("nn", k, r);
}

static PyMethodDef methods[] = {
    {"survivors", survivors, METH_VARARGS,
     "survivors(keys, indptr, data, tails, n_scan, lens, need, limit, counts, out, out_ov, runners) -> (k, r): the texts whose token "
     "overlap with a query can reach a bar, and their exact overlaps (see selfinstruct/_overlap.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_overlap", "Native kernel of selfinstruct.similarity.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__overlap(void) { return PyModule_Create(&module); }
