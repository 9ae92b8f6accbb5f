/* The TOC index and the string checks of a decoded TOC, in C.
 *
 * Specification: chunked/format/tocindex.py (index_entries), chunked/format/__init__.py (strings_ok) and
 * chunked/read/consistency.py (check_pair).
 * Both functions handle the common case only: on anything unexpected (a name that needs
 * path.Clean, a bad chunk, a duplicate, an error of any kind) they answer None or False,
 * and the Python runs and tells why. They therefore never raise for bad input, and never
 * decide anything the Python would decide otherwise: tests/test_tocindex.py runs both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_tarheader.h"

#define MAX_ZSTD_RATIO 32768

static PyObject *s_type, *s_name, *s_link_name, *s_xattrs, *s_size, *s_digest, *s_offset,
    *s_end_offset, *s_chunk_size, *s_chunk_digest, *s_chunk_offset, *s_chunk_type, *s_chunks,
    *s_mode, *s_uid, *s_gid, *s_dev_major, *s_dev_minor, *s_modtime, *s_accesstime,
    *s_changetime;

enum kind { K_OTHER, K_REG, K_CHUNK, K_DIR };

static int
kind_of(PyObject *t)
{
    if (!PyUnicode_Check(t)) {
        return -1;
    }
    if (PyUnicode_CompareWithASCIIString(t, "reg") == 0) {
        return K_REG;
    }
    if (PyUnicode_CompareWithASCIIString(t, "chunk") == 0) {
        return K_CHUNK;
    }
    if (PyUnicode_CompareWithASCIIString(t, "dir") == 0) {
        return K_DIR;
    }
    return K_OTHER;
}

/* An attribute as a C integer; -2 on an error or a value that is not a plain int (the
 * decoder keeps every field >= 0, so a negative answer is never a real value). */
static long long
int_attr(PyObject *e, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(e, name);
    if (v == NULL) {
        PyErr_Clear();
        return -2;
    }
    int overflow = 0;
    long long out = PyLong_Check(v) ? PyLong_AsLongLongAndOverflow(v, &overflow) : -2;
    Py_DECREF(v);
    if (out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -2;
    }
    return (overflow || out < 0) ? -2 : out;
}

static int
entry_kind(PyObject *e)
{
    PyObject *t = PyObject_GetAttr(e, s_type);
    if (t == NULL) {
        PyErr_Clear();
        return -1;
    }
    int k = kind_of(t);
    Py_DECREF(t);
    return k;
}

/* clean_name's fast path for ASCII names: strip "./", then leading slashes, when the name
 * holds no "//" or "/." and neither starts with "." nor ends with "/". A new reference,
 * or NULL with no error set when the name needs the Python. */
static PyObject *
fast_clean(PyObject *name)
{
    if (!PyUnicode_IS_ASCII(name)) {
        return NULL;
    }
    const char *s = (const char *)PyUnicode_DATA(name);
    Py_ssize_t n = PyUnicode_GET_LENGTH(name), at = 0;
    if (n >= 2 && s[0] == '.' && s[1] == '/') {
        at = 2;
    }
    if (at < n && s[at] == '.') {
        return NULL;
    }
    if (n > at && s[n - 1] == '/') {
        return NULL;
    }
    for (Py_ssize_t i = at; i + 1 < n; i++) {
        if (s[i] == '/' && (s[i + 1] == '/' || s[i + 1] == '.')) {
            return NULL;
        }
    }
    while (at < n && s[at] == '/') {
        at++;
    }
    if (at == 0) {
        Py_INCREF(name);
        return name;
    }
    return PyUnicode_Substring(name, at, n);
}

/* _check_path: 1 when the key may stand, 0 when the Python must judge it. */
static int
path_ok(PyObject *key, int kind)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(key);
    if (n == 0) {
        return kind == K_DIR;
    }
    if (n <= 63) {
        return 1;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(key, &len);
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t part = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (s[i] == '/') {
            part = 0;
        } else if (++part > 255) {
            return 0;
        }
    }
    return 1;
}

struct entry_ints {
    long long size, offset, end_offset, chunk_size, chunk_offset;
};

/* The file's chunks (tocindex._chunks), a new list, or NULL with no error set when any
 * check fails (or on an error, cleared). */
static PyObject *
chunks_of(PyObject **items, Py_ssize_t n, Py_ssize_t i, long long data_end,
          PyObject *chunk_ref)
{
    PyObject *head = items[i];
    Py_ssize_t j = i + 1;
    while (j < n) {
        int k = entry_kind(items[j]);
        if (k < 0) {
            return NULL;
        }
        if (k != K_CHUNK) {
            break;
        }
        j++;
    }
    long long head_size = int_attr(head, s_size);
    long long end = int_attr(head, s_end_offset);
    if (head_size < 0 || end < 0) {
        return NULL;
    }
    if (end == 0) {
        end = data_end;
        for (Py_ssize_t k = j; k < n; k++) {
            long long off = int_attr(items[k], s_offset);
            if (off < 0) {
                return NULL;
            }
            if (off) {
                end = off;
                break;
            }
        }
    }
    int single = j == i + 1;
    PyObject *head_digest = PyObject_GetAttr(head, s_digest);
    if (head_digest == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL || !PyUnicode_Check(head_digest) ||
        PyUnicode_GET_LENGTH(head_digest) == 0) {
        goto fail;
    }
    long long total = 0;
    long long next_offset = int_attr(head, s_offset);
    for (Py_ssize_t k = i; k < j; k++) {
        PyObject *c = items[k];
        long long start = next_offset;
        long long stop = end;
        if (k + 1 < j) {
            next_offset = int_attr(items[k + 1], s_offset);
            stop = next_offset;
        }
        long long chunk_offset = int_attr(c, s_chunk_offset);
        long long size = single ? head_size : int_attr(c, s_chunk_size);
        if (start < 0 || stop < 0 || chunk_offset < 0 || size < 0) {
            goto fail;
        }
        PyObject *digest = single ? (Py_INCREF(head_digest), head_digest)
                                  : PyObject_GetAttr(c, s_chunk_digest);
        PyObject *ctype = PyObject_GetAttr(c, s_chunk_type);
        if (digest == NULL || ctype == NULL) {
            Py_XDECREF(digest);
            Py_XDECREF(ctype);
            goto fail;
        }
        int zeros = PyUnicode_Check(ctype) &&
                    PyUnicode_CompareWithASCIIString(ctype, "zeros") == 0;
        int plain = PyUnicode_Check(ctype) && PyUnicode_GET_LENGTH(ctype) == 0;
        Py_DECREF(ctype);
        /* size > (stop - start) * ratio, without the product overflowing */
        if (!(zeros || plain) || chunk_offset != total || !PyUnicode_Check(digest) ||
            PyUnicode_GET_LENGTH(digest) == 0 || size <= 0 ||
            !(0 < start && start <= stop && stop <= data_end) || (!zeros && start == stop) ||
            stop - start < (size + MAX_ZSTD_RATIO - 1) / MAX_ZSTD_RATIO) {
            Py_DECREF(digest);
            goto fail;
        }
        total += size;
        if (total > head_size) {
            Py_DECREF(digest);
            break;
        }
        PyObject *args[6] = {NULL, NULL, NULL, NULL, digest, zeros ? Py_True : Py_False};
        args[0] = PyLong_FromLongLong(chunk_offset);
        args[1] = PyLong_FromLongLong(size);
        args[2] = PyLong_FromLongLong(start);
        args[3] = PyLong_FromLongLong(stop);
        PyObject *ref = NULL;
        if (args[0] && args[1] && args[2] && args[3]) {
            ref = PyObject_Vectorcall(chunk_ref, args, 6, NULL);
        }
        for (int a = 0; a < 4; a++) {
            Py_XDECREF(args[a]);
        }
        Py_DECREF(digest);
        if (ref == NULL || PyList_Append(out, ref) < 0) {
            Py_XDECREF(ref);
            goto fail;
        }
        Py_DECREF(ref);
    }
    if (total != head_size) {
        goto fail;
    }
    Py_DECREF(head_digest);
    return out;
fail:
    PyErr_Clear();
    Py_DECREF(head_digest);
    Py_XDECREF(out);
    return NULL;
}

PyDoc_STRVAR(index_doc,
"index(entries, data_end, clean, FileInfo, ChunkRef) -> dict or None\n\n"
"tocindex.index_entries for the common case; None where the Python must run (clean is\n"
"called for names the C does not clean itself).");

static PyObject *
tocindex_index(PyObject *module, PyObject *const *argv, Py_ssize_t argc)
{
    if (argc != 5 || !PyList_CheckExact(argv[0]) || !PyLong_Check(argv[1])) {
        PyErr_SetString(PyExc_TypeError, "index(entries, data_end, clean, FileInfo, ChunkRef)");
        return NULL;
    }
    PyObject *entries = argv[0], *clean = argv[2], *file_info = argv[3], *chunk_ref = argv[4];
    long long data_end = PyLong_AsLongLong(argv[1]);
    if (data_end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    /* the list is not changed while indexed: we hold the GIL and call no code of the
     * caller's that could (clean and the two types are ours) */
    Py_INCREF(entries);
    Py_ssize_t n = PyList_GET_SIZE(entries);
    PyObject **items = PySequence_Fast_ITEMS(entries);
    PyObject *files = PyDict_New();
    PyObject *current = NULL; /* the name of the regular file chunks may follow */
    if (files == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = items[i];
        int kind = entry_kind(e);
        if (kind < 0) {
            goto give_up;
        }
        PyObject *name = PyObject_GetAttr(e, s_name);
        if (name == NULL || !PyUnicode_Check(name)) {
            Py_XDECREF(name);
            goto give_up;
        }
        if (kind == K_CHUNK) {
            int same = current != NULL && PyUnicode_Compare(name, current) == 0;
            Py_DECREF(name);
            if (!same) {
                goto give_up;
            }
            continue;
        }
        PyObject *key = fast_clean(name);
        if (key == NULL) {
            key = PyObject_CallOneArg(clean, name);
            if (key == NULL || !PyUnicode_Check(key)) {
                Py_XDECREF(key);
                Py_DECREF(name);
                goto give_up;
            }
        }
        if (!path_ok(key, kind)) {
            Py_DECREF(key);
            Py_DECREF(name);
            goto give_up;
        }
        PyObject *info = PyObject_Vectorcall(file_info, &e, 1, NULL);
        if (info == NULL) {
            Py_DECREF(key);
            Py_DECREF(name);
            goto give_up;
        }
        PyObject *was = PyDict_SetDefault(files, key, info);
        Py_DECREF(key);
        if (was != info) { /* a duplicate path, or an error */
            Py_DECREF(info);
            Py_DECREF(name);
            goto give_up;
        }
        Py_CLEAR(current);
        if (kind == K_REG) {
            current = name;
            long long size = int_attr(e, s_size);
            if (size < 0) {
                Py_DECREF(info);
                goto give_up;
            }
            if (size > 0) {
                PyObject *chunks = chunks_of(items, n, i, data_end, chunk_ref);
                if (chunks == NULL || PyObject_SetAttr(info, s_chunks, chunks) < 0) {
                    Py_XDECREF(chunks);
                    Py_DECREF(info);
                    goto give_up;
                }
                Py_DECREF(chunks);
            }
        } else {
            Py_DECREF(name);
        }
        Py_DECREF(info);
    }
    Py_XDECREF(current);
    Py_DECREF(entries);
    return files;
give_up:
    PyErr_Clear();
    Py_XDECREF(current);
    Py_XDECREF(files);
    Py_DECREF(entries);
    Py_RETURN_NONE;
error:
    Py_DECREF(entries);
    return NULL;
}

/* No NUL, no surrogate code point (a lone surrogate: a paired one decodes to one code
 * point above U+FFFF). */
static int
name_ok(PyObject *s)
{
    if (!PyUnicode_Check(s)) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (kind == PyUnicode_1BYTE_KIND) {
        return memchr(data, 0, (size_t)n) == NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == 0 || (c >= 0xD800 && c <= 0xDFFF)) {
            return 0;
        }
    }
    return 1;
}

static int
digest_ok(PyObject *d)
{
    if (!PyUnicode_Check(d)) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(d);
    if (n == 0) {
        return 1;
    }
    if (n != 71 || !PyUnicode_IS_ASCII(d)) {
        return 0;
    }
    const char *s = (const char *)PyUnicode_DATA(d);
    if (memcmp(s, "sha256:", 7) != 0) {
        return 0;
    }
    for (int i = 7; i < 71; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

static int
attr_check(PyObject *e, PyObject *name, int (*ok)(PyObject *))
{
    PyObject *v = PyObject_GetAttr(e, name);
    if (v == NULL) {
        PyErr_Clear();
        return 0;
    }
    int r = ok(v);
    Py_DECREF(v);
    return r;
}

PyDoc_STRVAR(strings_ok_doc,
"strings_ok(entries, names=True) -> bool\n\n"
"format.strings_ok: no name holds a NUL or a surrogate (names checked only when names\n"
"is true), every digest is empty or sha256:<64 lowercase hex>.");

static PyObject *
tocindex_strings_ok(PyObject *module, PyObject *const *argv, Py_ssize_t argc)
{
    if (argc < 1 || argc > 2) {
        PyErr_SetString(PyExc_TypeError, "strings_ok(entries, names=True)");
        return NULL;
    }
    PyObject *entries = argv[0];
    int names = argc < 2 ? 1 : PyObject_IsTrue(argv[1]);
    if (names < 0) {
        return NULL;
    }
    if (!PyList_CheckExact(entries)) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t n = PyList_GET_SIZE(entries);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(entries, i);
        if (!attr_check(e, s_digest, digest_ok) || !attr_check(e, s_chunk_digest, digest_ok)) {
            Py_RETURN_FALSE;
        }
        if (!names) {
            continue;
        }
        if (!attr_check(e, s_name, name_ok) || !attr_check(e, s_link_name, name_ok)) {
            Py_RETURN_FALSE;
        }
        PyObject *x = PyObject_GetAttr(e, s_xattrs);
        if (x == NULL) {
            PyErr_Clear();
            Py_RETURN_FALSE;
        }
        if (x != Py_None) {
            if (!PyDict_Check(x)) {
                Py_DECREF(x);
                Py_RETURN_FALSE;
            }
            PyObject *k, *v;
            Py_ssize_t pos = 0;
            while (PyDict_Next(x, &pos, &k, &v)) {
                if (!name_ok(k)) {
                    Py_DECREF(x);
                    Py_RETURN_FALSE;
                }
            }
        }
        Py_DECREF(x);
    }
    Py_RETURN_TRUE;
}

/* ------------------------------------------------------------------------------------------ */
/* A tar-split's file against its TOC entry                                                    */
/* ------------------------------------------------------------------------------------------ */

static Py_ssize_t
cstring_len(const unsigned char *p, Py_ssize_t n)
{
    const unsigned char *z = memchr(p, 0, (size_t)n);
    return z == NULL ? n : z - p;
}

/* A TOC time as consistency._t(e.mtime) sees it: 0 for none (None, Go's zero time, the
 * epoch); -1 when the Python must judge (not an int, beyond 64 bits, a zero time that is
 * not the shared GO_ZERO value). */
static int
toc_time(PyObject *e, PyObject *attr, PyObject *go_zero, long long *out)
{
    PyObject *v = PyObject_GetAttr(e, attr);
    if (v == NULL) {
        PyErr_Clear();
        return -1;
    }
    int r = 0;
    *out = 0;
    if (v != Py_None && v != go_zero) {
        int overflow = 0;
        long long x = PyLong_Check(v) ? PyLong_AsLongLongAndOverflow(v, &overflow) : -1;
        if (!PyLong_Check(v) || overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            r = -1;
        } else {
            *out = x;
        }
    }
    Py_DECREF(v);
    return r;
}

static int
same_str(PyObject *e, PyObject *attr, PyObject *want)
{
    PyObject *v = PyObject_GetAttr(e, attr);
    if (v == NULL) {
        PyErr_Clear();
        return 0;
    }
    int same = PyUnicode_Check(v) && PyUnicode_Compare(v, want) == 0;
    if (PyErr_Occurred()) {
        PyErr_Clear();
        same = 0;
    }
    Py_DECREF(v);
    return same;
}

static const char *const toc_types[7] = {"reg", "hardlink", "symlink", "char", "block", "dir",
                                         "fifo"};

PyDoc_STRVAR(tar_entry_matches_doc,
"tar_entry_matches(gap, prev_payload, entry, ts_name, ts_name_raw, ts_size, go_zero) -> int\n\n"
"consistency.check_pair for the common case: the bytes before a file are the padding of\n"
"the payload before and one lone header of plain octal fields, which says what the TOC\n"
"entry says, as does the tar-split line. The payload size that follows the header, or -1\n"
"where the Python must judge (it then accepts or tells why not).");

static PyObject *
tocindex_tar_entry_matches(PyObject *module, PyObject *const *argv, Py_ssize_t argc)
{
    if (argc != 7) {
        PyErr_SetString(PyExc_TypeError, "tar_entry_matches takes 7 arguments");
        return NULL;
    }
    PyObject *e = argv[2], *ts_name = argv[3], *ts_name_raw = argv[4], *go_zero = argv[6];
    long long prev = PyLong_AsLongLong(argv[1]), ts_size = PyLong_AsLongLong(argv[5]);
    if ((prev == -1 || ts_size == -1) && PyErr_Occurred()) {
        PyErr_Clear();
        return PyLong_FromLong(-1);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return PyLong_FromLong(-1);
    }
    long long result = -1;
    PyObject *name = NULL, *link = NULL;
    long long pad = prev < 0 ? -1 : (512 - prev % 512) % 512;
    const unsigned char *b = (const unsigned char *)view.buf + (pad < 0 ? 0 : pad);
    if (pad < 0 || view.len != pad + 512 || ts_name_raw != Py_None || !PyUnicode_Check(ts_name)) {
        goto done;
    }
    unsigned char flag = b[156];
    if (flag == 'x' || flag == 'g' || flag == 'L' || flag == 'K' || !tar_checksum_ok(b)) {
        goto done; /* extended records, or a block the Python must read */
    }
    long long mode = tar_octal(b + 100, 8), uid = tar_octal(b + 108, 8),
              gid = tar_octal(b + 116, 8), size = tar_octal(b + 124, 12),
              mtime = tar_octal(b + 136, 12);
    if (mode < 0 || uid < 0 || gid < 0 || size < 0 || mtime < 0 ||
        mtime > INT64_MAX / 1000000000) {
        goto done;
    }
    long long dev_major = 0, dev_minor = 0;
    const unsigned char *prefix = NULL;
    Py_ssize_t prefix_len = 0;
    int ustar = memcmp(b + 257, "ustar\0", 6) == 0;
    int gnu = memcmp(b + 257, "ustar ", 6) == 0 && memcmp(b + 263, " \0", 2) == 0;
    if (ustar || gnu) {
        dev_major = tar_octal(b + 329, 8);
        dev_minor = tar_octal(b + 337, 8);
        if (dev_major < 0 || dev_minor < 0) {
            goto done;
        }
        if (ustar) {
            if (memcmp(b + 508, "tar\0", 4) == 0) {
                goto done; /* STAR, with its times */
            }
            prefix = b + 345;
            prefix_len = cstring_len(prefix, 155);
        } else if (b[345] || b[357]) {
            goto done; /* GNU atime and ctime */
        }
    }
    Py_ssize_t name_len = cstring_len(b, 100);
    char full[100 + 1 + 155];
    Py_ssize_t full_len = 0;
    if (prefix_len) {
        memcpy(full, prefix, (size_t)prefix_len);
        full[prefix_len] = '/';
        full_len = prefix_len + 1;
    }
    memcpy(full + full_len, b, (size_t)name_len);
    full_len += name_len;
    if (flag == '\0') {
        flag = (full_len && full[full_len - 1] == '/') ? '5' : '0';
    }
    if (flag < '0' || flag > '6') {
        goto done;
    }
    name = PyUnicode_DecodeUTF8(full, full_len, "surrogateescape");
    link = PyUnicode_DecodeUTF8((const char *)b + 157, cstring_len(b + 157, 100),
                                "surrogateescape");
    if (name == NULL || link == NULL) {
        PyErr_Clear();
        goto done;
    }
    long long tm, ta, tc;
    if (!same_str(e, s_name, name) || PyUnicode_Compare(ts_name, name) != 0 ||
        ts_size != size) {
        goto done;
    }
    PyObject *want_type = PyUnicode_FromString(toc_types[flag - '0']);
    int type_ok = want_type != NULL && same_str(e, s_type, want_type);
    Py_XDECREF(want_type);
    if (!type_ok || !same_str(e, s_link_name, link) || int_attr(e, s_mode) != mode ||
        int_attr(e, s_size) != size || int_attr(e, s_uid) != uid || int_attr(e, s_gid) != gid ||
        int_attr(e, s_dev_major) != dev_major || int_attr(e, s_dev_minor) != dev_minor ||
        toc_time(e, s_modtime, go_zero, &tm) < 0 || toc_time(e, s_accesstime, go_zero, &ta) < 0 ||
        toc_time(e, s_changetime, go_zero, &tc) < 0 || tm != mtime * 1000000000 || ta || tc) {
        goto done;
    }
    PyObject *x = PyObject_GetAttr(e, s_xattrs);
    if (x == NULL) {
        PyErr_Clear();
        goto done;
    }
    int no_xattrs = x == Py_None || (PyDict_Check(x) && PyDict_GET_SIZE(x) == 0);
    Py_DECREF(x);
    if (no_xattrs) {
        result = flag == '0' ? size : 0;
    }
done:
    PyErr_Clear();
    Py_XDECREF(name);
    Py_XDECREF(link);
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(result);
}

static PyMethodDef tocindex_methods[] = {
    {"index", (PyCFunction)(void (*)(void))tocindex_index, METH_FASTCALL, index_doc},
    {"strings_ok", (PyCFunction)(void (*)(void))tocindex_strings_ok, METH_FASTCALL,
     strings_ok_doc},
    {"tar_entry_matches", (PyCFunction)(void (*)(void))tocindex_tar_entry_matches, METH_FASTCALL,
     tar_entry_matches_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef tocindex_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "chunked.format._tocindex",
    .m_doc = "The TOC index and string checks in C (see chunked/format/tocindex.py).",
    .m_size = -1,
    .m_methods = tocindex_methods,
};

PyMODINIT_FUNC
PyInit__tocindex(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&s_type, "type"}, {&s_name, "name"}, {&s_link_name, "link_name"},
        {&s_xattrs, "xattrs"}, {&s_size, "size"}, {&s_digest, "digest"},
        {&s_offset, "offset"}, {&s_end_offset, "end_offset"}, {&s_chunk_size, "chunk_size"},
        {&s_chunk_digest, "chunk_digest"}, {&s_chunk_offset, "chunk_offset"},
        {&s_chunk_type, "chunk_type"}, {&s_chunks, "chunks"}, {&s_mode, "mode"},
        {&s_uid, "uid"}, {&s_gid, "gid"}, {&s_dev_major, "dev_major"},
        {&s_dev_minor, "dev_minor"}, {&s_modtime, "modtime"}, {&s_accesstime, "accesstime"},
        {&s_changetime, "changetime"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&tocindex_module);
}
