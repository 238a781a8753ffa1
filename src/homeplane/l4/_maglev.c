/* Maglev table population (l4/maglev.py ``populate``) in C.
 *
 * Why C: the fill loop is ~M*ln(M) probes (about 700 000 for M=65537), which takes Python tens
 * of milliseconds -- a stall of the event loop on every endpoint change of a large service.
 * Here it is a tight loop over two int arrays. The result is identical to the Python
 * implementation (tests/l4/test_maglev.py compares both), entry by entry.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *populate(PyObject *self, PyObject *args) {
    PyObject *params, *weights_obj;
    Py_ssize_t m;
    if (!PyArg_ParseTuple(args, "OnO", &params, &m, &weights_obj)) return NULL;
    PyObject *seq = PySequence_Fast(params, "params must be a sequence of (offset, skip)");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL, **index = NULL;
    uint64_t *offset = NULL, *skip = NULL, *next = NULL;
    int32_t *table = NULL;
    long *weight = NULL;
    if (m <= 1) { PyErr_SetString(PyExc_ValueError, "table size must be a prime"); goto done; }
    offset = PyMem_Calloc(n ? n : 1, sizeof *offset);
    skip = PyMem_Calloc(n ? n : 1, sizeof *skip);
    next = PyMem_Calloc(n ? n : 1, sizeof *next);
    weight = PyMem_Calloc(n ? n : 1, sizeof *weight);
    table = PyMem_Malloc(m * sizeof *table);
    index = PyMem_Calloc(n ? n : 1, sizeof *index);
    if (!offset || !skip || !next || !weight || !table || !index) { PyErr_NoMemory(); goto done; }
    long total_weight = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(seq, i);
        unsigned long long o, s;
        if (!PyArg_ParseTuple(p, "KK", &o, &s)) goto done;
        if (o >= (unsigned long long)m || s < 1 || s >= (unsigned long long)m) {
            PyErr_Format(PyExc_ValueError, "backend %zd: offset/skip out of range for M=%zd", i, m);
            goto done;
        }
        offset[i] = o;
        skip[i] = s;
        if (weights_obj == Py_None) {
            weight[i] = 1;
        } else {
            PyObject *w = PySequence_GetItem(weights_obj, i);
            if (!w) goto done;
            weight[i] = PyLong_AsLong(w);
            Py_DECREF(w);
            if (weight[i] == -1 && PyErr_Occurred()) goto done;
            if (weight[i] < 0) weight[i] = 0;
        }
        total_weight += weight[i];
    }
    for (Py_ssize_t c = 0; c < m; c++) table[c] = -1;
    if (n > 0 && total_weight > 0) {
        /* next[i] is the backend's position in its permutation; the slot it names is kept
         * incrementally ((offset + next*skip) mod M) as ``pos``, same order as the Python loop */
        uint64_t *pos = next; /* reuse: slot of the backend's next preference */
        /* which slots are taken, one bit each: 8 KiB for M=65537 stays in L1 while probing */
        uint64_t *taken = PyMem_Calloc((size_t)m / 64 + 1, sizeof *taken);
        if (!taken) { PyErr_NoMemory(); goto done; }
        for (Py_ssize_t i = 0; i < n; i++) pos[i] = offset[i];
        Py_ssize_t filled = 0;
        for (;;) {
            for (Py_ssize_t i = 0; i < n; i++) {
                for (long k = 0; k < weight[i]; k++) {
                    uint64_t c = pos[i];
                    while (taken[c >> 6] & (1ULL << (c & 63))) {
                        c += skip[i];
                        if (c >= (uint64_t)m) c -= (uint64_t)m;
                    }
                    table[c] = (int32_t)i;
                    taken[c >> 6] |= 1ULL << (c & 63);
                    c += skip[i];
                    if (c >= (uint64_t)m) c -= (uint64_t)m;
                    pos[i] = c;
                    if (++filled == m) goto full;
                }
            }
        }
    full:
        PyMem_Free(taken);
    }
    /* one int object per backend, shared by all its slots: no allocation per slot */
    for (Py_ssize_t i = 0; i < n; i++) {
        index[i] = PyLong_FromSsize_t(i);
        if (!index[i]) goto done;
    }
    PyObject *minus_one = PyLong_FromLong(-1);
    if (!minus_one) goto done;
    result = PyList_New(m);
    if (result) {
        for (Py_ssize_t c = 0; c < m; c++) {
            PyObject *v = table[c] >= 0 ? index[table[c]] : minus_one;
            Py_INCREF(v);
            PyList_SET_ITEM(result, c, v);
        }
    }
    Py_DECREF(minus_one);
done:
    if (index) for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(index[i]);
    PyMem_Free(index);
    PyMem_Free(offset);
    PyMem_Free(skip);
    PyMem_Free(next);
    PyMem_Free(weight);
    PyMem_Free(table);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"populate", populate, METH_VARARGS,
     "populate(params, m, weights|None) -> list: the Maglev table, as l4.maglev.populate"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_maglev", NULL, -1, methods};

PyMODINIT_FUNC PyInit__maglev(void) { return PyModule_Create(&module); }
