/* Copying files an earlier pull wrote into a new tree, verified, without the GIL.
 *
 * An update of a large image copies (or clones) tens of thousands of small files. Done
 * from Python, each costs a dozen system calls plus the interpreter work around them, all
 * serialised by the GIL; here a whole batch runs in C with the GIL released, so the two
 * cores spend their time in the file system. Per file: open the source (never following a
 * symlink), check it is a regular file of the expected size, create a temporary file in
 * the destination directory, clone it (FICLONE) or copy it while hashing, compare the
 * SHA-256 with the TOC's, then owner, mode, times and the rename to the final name.
 *
 * A source that is gone, changed or unreadable is a miss (the caller fetches instead and
 * nothing is left behind); a failure writing the destination is an error it reports.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

enum { MISS = 0, COPIED = 1, CLONED = 2, FAILED = -1 };

#define BUF_SIZE (1 << 20)

typedef struct {
    char *src, *tmp, *name;
    int dirfd;
    long long size;
    unsigned int mode, uid, gid;
    long long atime, mtime;
    int chown, chmod;
    unsigned char expected[32];
    int status, err;
    const char *stage;
} job_t;

/* Once a file system refuses a clone, copy from then on (ext4, tmpfs, across devices). */
static volatile int can_clone = 1;

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* SHA-256 of the first size bytes of fd; -1 on a read error or a short file. */
static int digest_fd(int fd, long long size, unsigned char *buf, EVP_MD_CTX *ctx,
                     unsigned char out[32]) {
    long long off = 0;
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    while (off < size) {
        size_t want = size - off < BUF_SIZE ? (size_t)(size - off) : BUF_SIZE;
        ssize_t n = pread(fd, buf, want, off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        EVP_DigestUpdate(ctx, buf, (size_t)n);
        off += n;
    }
    EVP_DigestFinal_ex(ctx, out, NULL);
    return 0;
}

static struct timespec to_timespec(long long ns) {
    struct timespec ts;
    long long sec = ns / 1000000000LL, rem = ns % 1000000000LL;
    if (rem < 0) { /* before 1970: nanoseconds are never negative */
        sec -= 1;
        rem += 1000000000LL;
    }
    ts.tv_sec = (time_t)sec;
    ts.tv_nsec = (long)rem;
    return ts;
}

static void run_job(job_t *j, unsigned char *buf, EVP_MD_CTX *ctx) {
    unsigned char md[32];
    struct stat st;
    int how = COPIED;
    int sfd = open(j->src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (sfd < 0) {
        j->status = MISS;
        return;
    }
    if (fstat(sfd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != j->size) {
        close(sfd);
        j->status = MISS;
        return;
    }
    int dfd = openat(j->dirfd, j->tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     j->mode & 0777);
    if (dfd < 0) {
        j->err = errno;
        j->stage = "create";
        j->status = FAILED;
        close(sfd);
        return;
    }
    int miss = 0;
    if (can_clone && ioctl(dfd, FICLONE, sfd) == 0) {
        how = CLONED;
        /* check what the clone holds, not what the source held before */
        miss = digest_fd(dfd, j->size, buf, ctx, md) < 0;
    } else {
        if (errno == EOPNOTSUPP || errno == ENOTTY || errno == EXDEV || errno == EINVAL ||
            errno == ENOSYS)
            can_clone = 0;
        long long off = 0;
        EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
        while (off < j->size) {
            size_t want = j->size - off < BUF_SIZE ? (size_t)(j->size - off) : BUF_SIZE;
            ssize_t n = pread(sfd, buf, want, off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                miss = 1;
                break;
            }
            /* the bytes hashed are exactly the bytes written */
            EVP_DigestUpdate(ctx, buf, (size_t)n);
            if (write_all(dfd, buf, (size_t)n) < 0) {
                j->err = errno;
                j->stage = "write";
                goto failed;
            }
            off += n;
        }
        EVP_DigestFinal_ex(ctx, md, NULL);
    }
    close(sfd);
    sfd = -1;
    if (miss || memcmp(md, j->expected, 32) != 0) {
        close(dfd);
        unlinkat(j->dirfd, j->tmp, 0);
        j->status = MISS;
        return;
    }
    /* chmod after chown, which clears setuid bits */
    if (j->chown && fchown(dfd, j->uid, j->gid) < 0) {
        j->err = errno;
        j->stage = "chown";
        goto failed;
    }
    if (j->chmod && fchmod(dfd, j->mode & 07777) < 0) {
        j->err = errno;
        j->stage = "chmod";
        goto failed;
    }
    struct timespec ts[2] = {to_timespec(j->atime), to_timespec(j->mtime)};
    if (futimens(dfd, ts) < 0) {
        j->err = errno;
        j->stage = "utimens";
        goto failed;
    }
    if (renameat(j->dirfd, j->tmp, j->dirfd, j->name) < 0) {
        j->err = errno;
        j->stage = "rename";
        goto failed;
    }
    close(dfd);
    j->status = how;
    return;
failed:
    if (sfd >= 0) close(sfd);
    close(dfd);
    unlinkat(j->dirfd, j->tmp, 0);
    j->status = FAILED;
}

static void free_jobs(job_t *jobs, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        free(jobs[i].src);
        free(jobs[i].tmp);
        free(jobs[i].name);
    }
    free(jobs);
}

static char *dup_bytes(PyObject *b) {
    char *s;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(b, &s, &len) < 0) return NULL;
    if ((Py_ssize_t)strlen(s) != len) {
        PyErr_SetString(PyExc_ValueError, "embedded NUL in a path");
        return NULL;
    }
    char *out = strdup(s);
    if (out == NULL) PyErr_NoMemory();
    return out;
}

PyDoc_STRVAR(copy_files_doc,
"copy_files(jobs) -> list of (status, errno, stage)\n\n"
"Each job is (src: bytes, dirfd: int, tmp: bytes, name: bytes, size: int, mode: int,\n"
"uid: int, gid: int, atime_ns: int, mtime_ns: int, chown: bool, chmod: bool,\n"
"sha256: bytes). status is 2 (cloned), 1 (copied), 0 (miss: nothing written) or -1\n"
"(writing the destination failed with errno at stage; nothing left behind).");

static PyObject *copy_files(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "copy_files expects a list of jobs");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    job_t *jobs = calloc(n ? (size_t)n : 1, sizeof(job_t));
    if (jobs == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *src, *tmp, *name;
        const char *digest;
        Py_ssize_t dlen;
        int chown_, chmod_;
        job_t *j = &jobs[i];
        if (!PyArg_ParseTuple(t, "SiSSLIIILLppy#", &src, &j->dirfd, &tmp, &name, &j->size,
                              &j->mode, &j->uid, &j->gid, &j->atime, &j->mtime, &chown_,
                              &chmod_, &digest, &dlen))
            goto error;
        if (dlen != 32) {
            PyErr_SetString(PyExc_ValueError, "sha256 must be 32 bytes");
            goto error;
        }
        memcpy(j->expected, digest, 32);
        j->chown = chown_;
        j->chmod = chmod_;
        if ((j->src = dup_bytes(src)) == NULL || (j->tmp = dup_bytes(tmp)) == NULL ||
            (j->name = dup_bytes(name)) == NULL)
            goto error;
    }
    Py_DECREF(seq);
    seq = NULL;

    unsigned char *buf = malloc(BUF_SIZE);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (buf == NULL || ctx == NULL) {
        free(buf);
        EVP_MD_CTX_free(ctx);
        free_jobs(jobs, n);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        run_job(&jobs[i], buf, ctx);
        if (jobs[i].status == FAILED) {
            /* a failing destination fails the pull: stop here */
            for (Py_ssize_t k = i + 1; k < n; k++) jobs[k].status = MISS;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    free(buf);
    EVP_MD_CTX_free(ctx);

    PyObject *out = PyList_New(n);
    if (out == NULL) {
        free_jobs(jobs, n);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = Py_BuildValue("(iiz)", jobs[i].status, jobs[i].err, jobs[i].stage);
        if (r == NULL) {
            Py_DECREF(out);
            free_jobs(jobs, n);
            return NULL;
        }
        PyList_SET_ITEM(out, i, r);
    }
    free_jobs(jobs, n);
    return out;
error:
    Py_XDECREF(seq);
    free_jobs(jobs, n);
    return NULL;
}

static PyMethodDef copy_methods[] = {
    {"copy_files", copy_files, METH_O, copy_files_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef copy_module = {
    PyModuleDef_HEAD_INIT, "chunked._copy",
    "Verified copies of files from earlier pulls, a batch per call, without the GIL.", -1,
    copy_methods,
};

PyMODINIT_FUNC PyInit__copy(void) { return PyModule_Create(&copy_module); }
