/*
 * Hot loops for building zstd:chunked layers: the Perkeep/containers-storage rolling checksum
 * that picks chunk boundaries, Go's hash/crc64 (ISO) that tar-split records per file, and the
 * SHA-256 of a batch of frames in one release of the GIL (libcrypto's, SHA-NI where present).
 *
 * chunked/_native_spec.py is the specification; tests/test_native.py holds the two together.
 * Both kernels must be bit-exact with the Go code, or our layers stop deduplicating against
 * (and being accepted by) containers/storage.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "_tarheader.h"

/* Below this many bytes, dropping and re-taking the GIL costs more than it lets others run. */
#define GIL_RELEASE_THRESHOLD (64 * 1024)

/* ------------------------------------------------------------------------------------------ */
/* Rolling checksum                                                                           */
/* ------------------------------------------------------------------------------------------ */

#define WINDOW_SIZE 64
#define WINDOW_MASK (WINDOW_SIZE - 1)
#define CHAR_OFFSET 31
#define SPLIT_MASK 0xFFFFu

typedef struct {
    uint32_t s1;
    uint32_t s2;
    uint32_t wofs;
    uint8_t window[WINDOW_SIZE];
} rollsum_state;

typedef struct {
    PyObject_HEAD
    rollsum_state st;
} RollSumObject;

static void
rollsum_reset(rollsum_state *st)
{
    /* Seeded as if the window held CHAR_OFFSET bytes while it actually holds zeros: that quirk
     * is inherited from Perkeep and every split position depends on it. */
    st->s1 = WINDOW_SIZE * CHAR_OFFSET;
    st->s2 = WINDOW_SIZE * (WINDOW_SIZE - 1) * CHAR_OFFSET;
    st->wofs = 0;
    memset(st->window, 0, sizeof st->window);
}

static inline void
rollsum_roll(rollsum_state *st, uint32_t b)
{
    uint32_t d = st->window[st->wofs];
    st->s1 += b - d;
    st->s2 += st->s1 - WINDOW_SIZE * (d + CHAR_OFFSET);
    st->window[st->wofs] = (uint8_t)b;
    st->wofs = (st->wofs + 1) & WINDOW_MASK;
}

/*
 * Roll data[0:len] into st, stopping right after the first byte that makes the split test fire.
 * Returns how many bytes were rolled if a split fired, or -1 if all len bytes were rolled.
 *
 * Once 64 bytes of this call's input have been rolled, the byte leaving the window is simply
 * data[i - 64], so the main loop reads it from the input instead of the ring buffer.  That
 * drops a store and a dependent load per byte; the ring is rebuilt once, on the way out.
 */
static Py_ssize_t
rollsum_scan(rollsum_state *st, const uint8_t *data, Py_ssize_t len)
{
    uint32_t s1 = st->s1, s2 = st->s2;
    const uint32_t wofs0 = st->wofs;
    Py_ssize_t head = len < WINDOW_SIZE ? len : WINDOW_SIZE;
    Py_ssize_t i = 0, found = -1;

    for (; i < head; i++) {
        uint32_t pos = (wofs0 + (uint32_t)i) & WINDOW_MASK;
        uint32_t b = data[i], d = st->window[pos];
        s1 += b - d;
        s2 += s1 - WINDOW_SIZE * (d + CHAR_OFFSET);
        st->window[pos] = (uint8_t)b;
        if ((s2 & SPLIT_MASK) == SPLIT_MASK) {
            found = ++i;
            goto done;
        }
    }
    if (i < len) {
        /* Biased registers shave instructions off every byte: with u = s1 - 64*31 the constant
         * in the s2 update disappears, and with v = s2 + 1 the split test becomes "low 16 bits
         * are zero", a single test-and-branch.  Unrolling by four was worth ~20% measured. */
        uint32_t u = s1 - WINDOW_SIZE * CHAR_OFFSET, v = s2 + 1;
        const uint8_t *p = data + i, *const end = data + len;
#define ROLLSUM_STEP                                  \
    do {                                              \
        uint32_t b_ = p[0], d_ = p[-WINDOW_SIZE];     \
        u += b_ - d_;                                 \
        v += u - WINDOW_SIZE * d_;                    \
        p++;                                          \
        if ((uint16_t)v == 0) {                       \
            goto split;                               \
        }                                             \
    } while (0)
        while (end - p >= 4) {
            ROLLSUM_STEP;
            ROLLSUM_STEP;
            ROLLSUM_STEP;
            ROLLSUM_STEP;
        }
        while (p < end) {
            ROLLSUM_STEP;
        }
#undef ROLLSUM_STEP
        i = len;
        goto unbias;
    split:
        i = found = p - data;
    unbias:
        s1 = u + WINDOW_SIZE * CHAR_OFFSET;
        s2 = v - 1;
    }

done:
    /* i bytes were rolled.  If more than a window's worth, the ring holds exactly the last 64
     * of them, each at the slot it would have reached by rolling one at a time. */
    if (i > WINDOW_SIZE) {
        for (Py_ssize_t j = i - WINDOW_SIZE; j < i; j++) {
            st->window[(wofs0 + (uint32_t)j) & WINDOW_MASK] = data[j];
        }
    }
    st->s1 = s1;
    st->s2 = s2;
    st->wofs = (wofs0 + (uint32_t)i) & WINDOW_MASK;
    return found;
}

static PyObject *
RollSum_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "RollSum() takes no arguments");
        return NULL;
    }
    RollSumObject *self = (RollSumObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        rollsum_reset(&self->st);
    }
    return (PyObject *)self;
}

PyDoc_STRVAR(RollSum_feed_doc,
"feed(buf, start=0, end=-1) -> int\n"
"\n"
"Roll buf[start:end] (end=-1: to the end of buf), testing for a split after each byte.\n"
"Return the index just past the byte that triggered the split (the state includes that\n"
"byte), or -1 if the whole range was rolled without a split.");

static PyObject *
RollSum_feed(RollSumObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buf", "start", "end", NULL};
    Py_buffer view;
    Py_ssize_t start = 0, end = -1;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|nn:feed", kwlist, &view, &start, &end)) {
        return NULL;
    }
    if (end == -1) {
        end = view.len;
    }
    if (start < 0 || start > end || end > view.len) {
        PyErr_Format(PyExc_ValueError, "invalid range [%zd:%zd] for a buffer of %zd bytes",
                     start, end, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }

    const uint8_t *data = (const uint8_t *)view.buf + start;
    Py_ssize_t len = end - start, rolled;
    if (len >= GIL_RELEASE_THRESHOLD) {
        /* Scan a private copy of the state: another thread calling feed() on this object
         * while we run without the GIL then gets a wrong answer, never memory corruption. */
        rollsum_state st = self->st;
        Py_BEGIN_ALLOW_THREADS
        rolled = rollsum_scan(&st, data, len);
        Py_END_ALLOW_THREADS
        self->st = st;
    }
    else {
        rolled = rollsum_scan(&self->st, data, len);
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(rolled < 0 ? -1 : start + rolled);
}

PyDoc_STRVAR(RollSum_roll_zeros_doc,
"roll_zeros(n) -> None\n"
"\n"
"Roll n zero bytes without testing for splits (holes in sparse files).  Runs in constant\n"
"time however large n is.");

static PyObject *
RollSum_roll_zeros(RollSumObject *self, PyObject *arg)
{
    PyObject *n_obj = PyNumber_Index(arg);
    if (n_obj == NULL) {
        return NULL;
    }
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(n_obj, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        Py_DECREF(n_obj);
        return NULL;
    }
    if (overflow < 0 || (overflow == 0 && n < 0)) {
        PyErr_Format(PyExc_ValueError, "cannot roll a negative number of bytes: %R", n_obj);
        Py_DECREF(n_obj);
        return NULL;
    }
    /* Only n mod 2**32 (for s2) and n mod 64 (for wofs) matter past the first 64 rolls, and
     * both survive truncation to 64 bits, so even a value beyond long long is handled. */
    unsigned long long n_low = PyLong_AsUnsignedLongLongMask(n_obj);
    Py_DECREF(n_obj);
    if (n_low == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }

    rollsum_state *st = &self->st;
    unsigned long long head = (overflow == 0 && n < WINDOW_SIZE) ? (unsigned long long)n
                                                                  : WINDOW_SIZE;
    for (unsigned long long k = 0; k < head; k++) {
        rollsum_roll(st, 0);
    }
    /* With the window all zeros, a zero roll leaves s1 unchanged and adds s1 - 64*31 to s2,
     * so the remaining rolls collapse into one multiply. */
    unsigned long long rest = n_low - head;
    st->s2 += (uint32_t)rest * (st->s1 - WINDOW_SIZE * CHAR_OFFSET);
    st->wofs = (uint32_t)((st->wofs + rest) & WINDOW_MASK);
    Py_RETURN_NONE;
}

static PyObject *
RollSum_copy(RollSumObject *self, PyObject *Py_UNUSED(ignored))
{
    PyTypeObject *type = Py_TYPE(self);
    RollSumObject *other = (RollSumObject *)type->tp_alloc(type, 0);
    if (other != NULL) {
        other->st = self->st;
    }
    return (PyObject *)other;
}

static PyObject *
RollSum_get_s1(RollSumObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->st.s1);
}

static PyObject *
RollSum_get_s2(RollSumObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->st.s2);
}

static PyMethodDef RollSum_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))RollSum_feed, METH_VARARGS | METH_KEYWORDS,
     RollSum_feed_doc},
    {"roll_zeros", (PyCFunction)RollSum_roll_zeros, METH_O, RollSum_roll_zeros_doc},
    {"copy", (PyCFunction)RollSum_copy, METH_NOARGS, "Return an independent copy of the state."},
    {"__copy__", (PyCFunction)RollSum_copy, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RollSum_getset[] = {
    {"s1", (getter)RollSum_get_s1, NULL, "Sum of the window bytes (mod 2**32).", NULL},
    {"s2", (getter)RollSum_get_s2, NULL, "Position-weighted sum (mod 2**32).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RollSumType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "chunked._native.RollSum",
    .tp_doc = PyDoc_STR("Rolling checksum over the last 64 bytes (containers/storage rollsum)."),
    .tp_basicsize = sizeof(RollSumObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = RollSum_new,
    .tp_methods = RollSum_methods,
    .tp_getset = RollSum_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* CRC-64 (Go hash/crc64, ISO polynomial)                                                     */
/* ------------------------------------------------------------------------------------------ */

#define CRC64_ISO 0xD800000000000000ULL

/* crc64_tables[k][b] is the CRC contribution of byte b followed by k zero bytes, so XOR-ing
 * sixteen lookups advances the register by 16 bytes at once.  Go uses slicing-by-8; slicing-by-16
 * measured ~25% faster here for 32 KiB of tables. */
#define CRC64_SLICES 16
static uint64_t crc64_tables[CRC64_SLICES][256];

static void
crc64_init_tables(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint64_t crc = i;
        for (int j = 0; j < 8; j++) {
            crc = (crc & 1) ? (crc >> 1) ^ CRC64_ISO : crc >> 1;
        }
        crc64_tables[0][i] = crc;
    }
    for (unsigned i = 0; i < 256; i++) {
        uint64_t crc = crc64_tables[0][i];
        for (int k = 1; k < CRC64_SLICES; k++) {
            crc = crc64_tables[0][crc & 0xFF] ^ (crc >> 8);
            crc64_tables[k][i] = crc;
        }
    }
}

static inline uint64_t
load_le64(const uint8_t *p)
{
    /* Byte-by-byte so it is right on big-endian hosts; compilers fuse it into one load. */
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24
           | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48
           | (uint64_t)p[7] << 56;
}

#define CRC64_FOLD8(t, w, base)                                                          \
    ((t)[(base) + 7][(w) & 0xFF] ^ (t)[(base) + 6][((w) >> 8) & 0xFF]                     \
     ^ (t)[(base) + 5][((w) >> 16) & 0xFF] ^ (t)[(base) + 4][((w) >> 24) & 0xFF]          \
     ^ (t)[(base) + 3][((w) >> 32) & 0xFF] ^ (t)[(base) + 2][((w) >> 40) & 0xFF]          \
     ^ (t)[(base) + 1][((w) >> 48) & 0xFF] ^ (t)[(base)][(w) >> 56])

/* Operates on the raw (already complemented) register. */
static uint64_t
crc64_update(uint64_t crc, const uint8_t *p, size_t len)
{
    uint64_t (*t)[256] = crc64_tables;
    while (len >= 16) {
        /* Only the first word meets the register, and it is followed by eight more bytes, so
         * its lookups use the tables for 8..15 trailing zero bytes. */
        uint64_t lo = crc ^ load_le64(p), hi = load_le64(p + 8);
        crc = CRC64_FOLD8(t, lo, 8) ^ CRC64_FOLD8(t, hi, 0);
        p += 16;
        len -= 16;
    }
    if (len >= 8) {
        crc ^= load_le64(p);
        crc = CRC64_FOLD8(t, crc, 0);
        p += 8;
        len -= 8;
    }
    while (len--) {
        crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    }
    return crc;
}

/*
 * Carry-less multiplication folds 16 bytes per step instead of looking up sixteen table
 * entries: ~5x faster on CPUs with PCLMULQDQ.  The 128-bit accumulator X (the register
 * XOR-ed into the first 8 bytes, as above) is congruent to X * x^128 when replaced by
 * clmul(X.lo, K_LO) ^ clmul(X.hi, K_HI), with K_LO = x^191 mod P and K_HI = x^127 mod P in
 * the reflected domain (the exponents include the one-bit shift of a reflected product).
 * The last accumulator is reduced by running it through the table code above.
 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CRC64_CLMUL 1
#define CRC64_K_LO 0x6b70000000000001ULL
#define CRC64_K_HI 0xf500000000000001ULL

/* (K_LO, K_HI) for folding across 16 * n bytes: x^(128n + 63) and x^(128n - 1) mod P. */
#define CRC64_K_LO_32 0x1b1ab00000000001ULL
#define CRC64_K_HI_32 0xa011000000000001ULL
#define CRC64_K_LO_48 0x76db6c7000000001ULL
#define CRC64_K_HI_48 0xe145150000000001ULL
#define CRC64_K_LO_64 0x01b001b1b0000001ULL
#define CRC64_K_HI_64 0xb100010100000001ULL

__attribute__((target("pclmul,sse4.1"))) static inline __m128i
crc64_fold(__m128i x, __m128i k)
{
    return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

__attribute__((target("pclmul,sse4.1"))) static uint64_t
crc64_update_clmul(uint64_t crc, const uint8_t *p, size_t len)
{
    const __m128i k16 = _mm_set_epi64x((long long)CRC64_K_HI, (long long)CRC64_K_LO);
    __m128i x = _mm_loadu_si128((const __m128i *)p);
    x = _mm_xor_si128(x, _mm_cvtsi64_si128((long long)crc));
    if (len >= 128) {
        /* Four accumulators, 64 bytes apart, so four multiplications are in flight at once:
         * one chain alone is bound by the multiplier's latency. */
        const __m128i k64 = _mm_set_epi64x((long long)CRC64_K_HI_64, (long long)CRC64_K_LO_64);
        __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
        __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
        __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
        p += 64;
        len -= 64;
        while (len >= 64) {
            x = _mm_xor_si128(crc64_fold(x, k64), _mm_loadu_si128((const __m128i *)p));
            x1 = _mm_xor_si128(crc64_fold(x1, k64), _mm_loadu_si128((const __m128i *)(p + 16)));
            x2 = _mm_xor_si128(crc64_fold(x2, k64), _mm_loadu_si128((const __m128i *)(p + 32)));
            x3 = _mm_xor_si128(crc64_fold(x3, k64), _mm_loadu_si128((const __m128i *)(p + 48)));
            p += 64;
            len -= 64;
        }
        const __m128i k48 = _mm_set_epi64x((long long)CRC64_K_HI_48, (long long)CRC64_K_LO_48);
        const __m128i k32 = _mm_set_epi64x((long long)CRC64_K_HI_32, (long long)CRC64_K_LO_32);
        x = _mm_xor_si128(_mm_xor_si128(crc64_fold(x, k48), crc64_fold(x1, k32)),
                          _mm_xor_si128(crc64_fold(x2, k16), x3));
    }
    else {
        p += 16;
        len -= 16;
    }
    while (len >= 16) {
        x = _mm_xor_si128(crc64_fold(x, k16), _mm_loadu_si128((const __m128i *)p));
        p += 16;
        len -= 16;
    }
    uint8_t folded[16];
    _mm_storeu_si128((__m128i *)folded, x);
    return crc64_update(crc64_update(0, folded, 16), p, len);
}

static int crc64_has_clmul;
#endif

/* Below this, the table code wins (the reduction costs as much as 16 bytes of table). */
#define CRC64_CLMUL_MIN 64

static uint64_t
crc64_run(uint64_t crc, const uint8_t *p, size_t len)
{
#ifdef CRC64_CLMUL
    if (crc64_has_clmul && len >= CRC64_CLMUL_MIN) {
        return crc64_update_clmul(crc, p, len);
    }
#endif
    return crc64_update(crc, p, len);
}

PyDoc_STRVAR(crc64_doc,
"crc64(data, crc=0) -> int\n"
"\n"
"Go's crc64.Update(crc, crc64.MakeTable(crc64.ISO), data): chaining calls over pieces\n"
"gives the same value as one call over their concatenation.");

static PyObject *
native_crc64(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "crc", NULL};
    Py_buffer view;
    PyObject *crc_obj = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|O:crc64", kwlist, &view, &crc_obj)) {
        return NULL;
    }
    uint64_t crc = 0;
    if (crc_obj != NULL) {
        PyObject *idx = PyNumber_Index(crc_obj);
        if (idx == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
        crc = PyLong_AsUnsignedLongLong(idx);
        Py_DECREF(idx);
        if (crc == (uint64_t)-1 && PyErr_Occurred()) {
            /* Negative or too wide: same complaint as the reference. */
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "crc must fit in 64 unsigned bits: %R", crc_obj);
            PyBuffer_Release(&view);
            return NULL;
        }
    }

    const uint8_t *p = (const uint8_t *)view.buf;
    size_t len = (size_t)view.len;
    crc = ~crc;
    if (len >= GIL_RELEASE_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        crc = crc64_run(crc, p, len);
        Py_END_ALLOW_THREADS
    }
    else {
        crc = crc64_run(crc, p, len);
    }
    crc = ~crc;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(crc);
}

/* ------------------------------------------------------------------------------------------ */
/* Tar header numbers                                                                         */
/* ------------------------------------------------------------------------------------------ */

PyDoc_STRVAR(tar_numbers_doc,
"tar_numbers(block) -> (mode, uid, gid, size, mtime, dev_major, dev_minor) or None\n\n"
"The numeric fields of a 512-byte tar header in the common case: every one of them plain\n"
"octal, and the checksum matching (as an unsigned or a signed sum, as Go accepts).\n"
"dev_major and dev_minor are -1 when their fields are not plain octal. None for anything\n"
"else (a base-256 number, a bad checksum): the caller parses that block in Python.");

static PyObject *
native_tar_numbers(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len != 512) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    const unsigned char *b = (const unsigned char *)view.buf;
    int sum_ok = tar_checksum_ok(b);
    long long f[7];
    static const int at[7][2] = {{100, 8}, {108, 8}, {116, 8}, {124, 12}, {136, 12},
                                 {329, 8}, {337, 8}};
    for (int i = 0; i < 7; i++) {
        f[i] = tar_octal(b + at[i][0], at[i][1]);
    }
    PyBuffer_Release(&view);
    if (!sum_ok) {
        Py_RETURN_NONE;
    }
    for (int i = 0; i < 5; i++) {
        if (f[i] < 0) {
            Py_RETURN_NONE;
        }
    }
    return Py_BuildValue("(LLLLLLL)", f[0], f[1], f[2], f[3], f[4], f[5], f[6]);
}

/* ------------------------------------------------------------------------------------------ */
/* SHA-256 of many buffers                                                                    */
/* ------------------------------------------------------------------------------------------ */

PyDoc_STRVAR(sha256_many_doc,
"sha256_many(items) -> list[str]\n\n"
"\"sha256:<hex>\" of each item: a buffer, or a list or tuple of buffers hashed one after\n"
"the other (a file's pieces). One release of the GIL for the whole list: hashlib drops\n"
"and retakes it per call, and for a batch of small frames the retaking costs more than\n"
"the hashing.");

static PyObject *
native_sha256_many(PyObject *Py_UNUSED(module), PyObject *arg)
{
    PyObject *items = PySequence_Fast(arg, "sha256_many() takes a list");
    if (items == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items), nbufs = 0;
    PyObject *result = NULL;
    Py_ssize_t *ends = PyMem_Calloc((size_t)n + 1, sizeof *ends);
    Py_buffer *bufs = NULL;
    unsigned char (*md)[32] = PyMem_Malloc((size_t)(n ? n : 1) * 32);
    Py_ssize_t cap = n + 1, got = 0;
    if (ends == NULL || md == NULL || (bufs = PyMem_Calloc((size_t)cap, sizeof *bufs)) == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    /* Every buffer is taken while we hold the GIL; hashing runs without it. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(items, i);
        int is_seq = PyList_Check(item) || PyTuple_Check(item);
        Py_ssize_t parts = is_seq ? PySequence_Fast_GET_SIZE(item) : 1;
        if (nbufs + parts > cap) {
            Py_ssize_t want = (nbufs + parts) * 2;
            Py_buffer *more = PyMem_Realloc(bufs, (size_t)want * sizeof *bufs);
            if (more == NULL) {
                PyErr_NoMemory();
                goto out;
            }
            bufs = more;
            cap = want;
        }
        for (Py_ssize_t j = 0; j < parts; j++) {
            PyObject *part = is_seq ? PySequence_Fast_GET_ITEM(item, j) : item;
            if (PyObject_GetBuffer(part, &bufs[nbufs], PyBUF_SIMPLE) < 0) {
                goto out;
            }
            nbufs++;
            got = nbufs;
        }
        ends[i + 1] = nbufs;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    failed = ctx == NULL;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        failed = !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
        for (Py_ssize_t j = ends[i]; j < ends[i + 1] && !failed; j++) {
            failed = !EVP_DigestUpdate(ctx, bufs[j].buf, (size_t)bufs[j].len);
        }
        failed = failed || !EVP_DigestFinal_ex(ctx, md[i], NULL);
    }
    EVP_MD_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "sha256_many: libcrypto failed");
        goto out;
    }
    result = PyList_New(n);
    if (result == NULL) {
        goto out;
    }
    static const char hex[] = "0123456789abcdef";
    for (Py_ssize_t i = 0; i < n; i++) {
        char text[7 + 64];
        memcpy(text, "sha256:", 7);
        for (int k = 0; k < 32; k++) {
            text[7 + 2 * k] = hex[md[i][k] >> 4];
            text[8 + 2 * k] = hex[md[i][k] & 15];
        }
        PyObject *s = PyUnicode_FromStringAndSize(text, sizeof text);
        if (s == NULL) {
            Py_CLEAR(result);
            goto out;
        }
        PyList_SET_ITEM(result, i, s);
    }
out:
    for (Py_ssize_t j = 0; j < got; j++) {
        PyBuffer_Release(&bufs[j]);
    }
    PyMem_Free(bufs);
    PyMem_Free(ends);
    PyMem_Free(md);
    Py_DECREF(items);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Module                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static PyMethodDef native_methods[] = {
    {"crc64", (PyCFunction)(void (*)(void))native_crc64, METH_VARARGS | METH_KEYWORDS,
     crc64_doc},
    {"tar_numbers", (PyCFunction)native_tar_numbers, METH_O, tar_numbers_doc},
    {"sha256_many", (PyCFunction)native_sha256_many, METH_O, sha256_many_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "chunked._native",
    .m_doc = "C kernels for chunked: rolling checksum, CRC-64, tar header numbers and SHA-256 "
             "of batches (see chunked/_native_spec.py).",
    .m_size = -1,
    .m_methods = native_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (PyType_Ready(&RollSumType) < 0) {
        return NULL;
    }
    crc64_init_tables();
#ifdef CRC64_CLMUL
    __builtin_cpu_init();
    crc64_has_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "RollSum", (PyObject *)&RollSumType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
