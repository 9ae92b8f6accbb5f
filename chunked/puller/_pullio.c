/* The per-file work of a partial pull, a batch per call, without the GIL.
 *
 * A pull writes tens of thousands of small files. Done from Python, each costs a dozen
 * system calls plus the interpreter work around them, all serialised by the GIL; here a
 * whole batch runs in C with the GIL released, so the cores spend their time in the file
 * system. Every file is created under a temporary name in its directory (an open
 * descriptor the caller made without following symlinks), gets its owner, mode and times,
 * and is renamed into place only when complete and verified.
 *
 * copy_files: files an earlier pull wrote. Open the source (never following a symlink),
 * check it is a regular file of the expected size; clone it (FICLONE) where the
 * destination's file system can (remembered per file system), else hard-link it if asked
 * and its metadata match, else copy it while hashing; compare the SHA-256 with the TOC's.
 * A source that is gone, changed or unreadable is a miss: nothing is left behind and the
 * caller fetches instead.
 *
 * chunked/puller/pullio_spec.py is the executable spec of this module: the same entry
 * points, job records, results and errors in plain Python, and tests/test_pullio.py runs
 * every test on both. A change here is a change there first.
 *
 * write_files: files from chunks already fetched and verified, holes left as holes; a
 * file of several chunks is hashed whole as well.
 *
 * A failure writing the destination is an error, reported with its errno and stage.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

enum { MISS = 0, COPIED = 1, CLONED = 2, LINKED = 3, WRITTEN = 1, FAILED = -1, MISMATCH = -2 };

/* What became of one file; the first member of every job, so one function reports both
   kinds. */
typedef struct {
    int status, err;
    const char *stage;
} result_t;

#define BUF_SIZE (1 << 20)

typedef struct {
    result_t r;
    char *src, *tmp, *name;
    int dirfd;
    long long size;
    unsigned int mode, uid, gid;
    long long atime, mtime;
    int chown, chmod, link;
    unsigned char expected[32];
} job_t;

/* File systems (st_dev of a job's directory) that said they cannot clone at all (ext4,
   tmpfs): their files are copied or linked from then on without asking again. Remembered
   per file system, not per process, as one process may pull into two. A source on another
   device (EXDEV) or an unclonable file (EINVAL) only makes that one file a copy. Past
   NO_CLONE_MAX file systems the table is full: the others are asked once per file, which
   is slower but still right. */
#define NO_CLONE_MAX 64
static dev_t no_clone[NO_CLONE_MAX];
static int n_no_clone;
static pthread_mutex_t no_clone_lock = PTHREAD_MUTEX_INITIALIZER;

static int can_clone(dev_t dev) {
    int yes = 1;
    pthread_mutex_lock(&no_clone_lock);
    for (int i = 0; i < n_no_clone; i++)
        if (no_clone[i] == dev) yes = 0;
    pthread_mutex_unlock(&no_clone_lock);
    return yes;
}

static void cannot_clone(dev_t dev) {
    pthread_mutex_lock(&no_clone_lock);
    int known = 0;
    for (int i = 0; i < n_no_clone; i++)
        if (no_clone[i] == dev) known = 1;
    if (!known && n_no_clone < NO_CLONE_MAX) no_clone[n_no_clone++] = dev;
    pthread_mutex_unlock(&no_clone_lock);
}

/* The file system of a job's directory and whether it can clone, asked once per run of
   jobs in one directory (the caller holds each descriptor open for the whole call): no
   lock or fstat per file. */
typedef struct {
    int valid, dirfd, clonable;
    dev_t dev;
} devcache_t;

static int dest_dev(int dirfd, devcache_t *c) {
    if (!c->valid || c->dirfd != dirfd) {
        struct stat st;
        if (fstat(dirfd, &st) < 0) return -1;
        c->valid = 1;
        c->dirfd = dirfd;
        c->dev = st.st_dev;
        c->clonable = can_clone(st.st_dev);
    }
    return 0;
}

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

/* Owner, mode and times of a complete file, then its final name. */
static int finish(int dirfd, int fd, const char *tmp, const char *name, int do_chown,
                  int do_chmod, unsigned int uid, unsigned int gid, unsigned int mode,
                  long long atime, long long mtime, result_t *r) {
    /* chmod after chown, which clears setuid bits */
    if (do_chown && fchown(fd, uid, gid) < 0) {
        r->err = errno;
        r->stage = "chown";
        return -1;
    }
    if (do_chmod && fchmod(fd, mode & 07777) < 0) {
        r->err = errno;
        r->stage = "chmod";
        return -1;
    }
    struct timespec ts[2] = {to_timespec(atime), to_timespec(mtime)};
    if (futimens(fd, ts) < 0) {
        r->err = errno;
        r->stage = "utimens";
        return -1;
    }
    if (renameat(dirfd, tmp, dirfd, name) < 0) {
        r->err = errno;
        r->stage = "rename";
        return -1;
    }
    return 0;
}

/* Whether sharing the source's inode would show exactly the entry's metadata (only
   entries without xattrs come here, so the source must have none either). */
static int same_meta(int sfd, const struct stat *st, const job_t *j) {
    struct timespec m = to_timespec(j->mtime);
    return (st->st_mode & 07777) == (j->mode & 07777) && st->st_uid == j->uid &&
           st->st_gid == j->gid && st->st_mtim.tv_sec == m.tv_sec &&
           st->st_mtim.tv_nsec == m.tv_nsec && flistxattr(sfd, NULL, 0) == 0;
}

/* A hard link to the verified source: the very inode hashed, through /proc/self/fd, under
   the temporary name first so an existing file is replaced atomically. */
static void run_link(job_t *j, int sfd, unsigned char *buf, EVP_MD_CTX *ctx) {
    unsigned char md[32];
    char path[64];
    if (digest_fd(sfd, j->size, buf, ctx, md) < 0 || memcmp(md, j->expected, 32) != 0) {
        j->r.status = MISS;
        return;
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", sfd);
    if (linkat(AT_FDCWD, path, j->dirfd, j->tmp, AT_SYMLINK_FOLLOW) < 0) {
        j->r.err = errno;
        j->r.stage = "link";
        j->r.status = FAILED;
        return;
    }
    if (renameat(j->dirfd, j->tmp, j->dirfd, j->name) < 0) {
        j->r.err = errno;
        j->r.stage = "rename";
        j->r.status = FAILED;
        unlinkat(j->dirfd, j->tmp, 0);
        return;
    }
    j->r.status = LINKED;
}

static void run_job(job_t *j, unsigned char *buf, EVP_MD_CTX *ctx, devcache_t *devs) {
    unsigned char md[32];
    struct stat st;
    int how = COPIED;
    /* O_NONBLOCK: a fifo put there since is a miss, not an open that waits for a writer */
    int sfd = open(j->src, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (sfd < 0) {
        j->r.status = MISS;
        return;
    }
    if (fstat(sfd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != j->size) {
        close(sfd);
        j->r.status = MISS;
        return;
    }
    if (dest_dev(j->dirfd, devs) < 0) {
        j->r.err = errno;
        j->r.stage = "stat";
        j->r.status = FAILED;
        close(sfd);
        return;
    }
    /* a reflink where the file system can, else a hard link when asked and the metadata
       allow, else a copy */
    int clonable = devs->clonable;
    int linkable = j->link && same_meta(sfd, &st, j);
    if (linkable && !clonable) {
        run_link(j, sfd, buf, ctx);
        close(sfd);
        return;
    }
    int dfd = openat(j->dirfd, j->tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     j->mode & 0777);
    if (dfd < 0) {
        j->r.err = errno;
        j->r.stage = "create";
        j->r.status = FAILED;
        close(sfd);
        return;
    }
    int miss = 0;
    if (clonable && ioctl(dfd, FICLONE, sfd) == 0) {
        how = CLONED;
        /* check what the clone holds, not what the source held before */
        miss = digest_fd(dfd, j->size, buf, ctx, md) < 0;
    } else {
        if (clonable && (errno == EOPNOTSUPP || errno == ENOTTY || errno == ENOSYS)) {
            cannot_clone(devs->dev);
            devs->clonable = 0;
        }
        if (linkable) {
            close(dfd);
            unlinkat(j->dirfd, j->tmp, 0);
            run_link(j, sfd, buf, ctx);
            close(sfd);
            return;
        }
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
                j->r.err = errno;
                j->r.stage = "write";
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
        j->r.status = MISS;
        return;
    }
    if (finish(j->dirfd, dfd, j->tmp, j->name, j->chown, j->chmod, j->uid, j->gid, j->mode,
               j->atime, j->mtime, &j->r) < 0)
        goto failed;
    close(dfd);
    j->r.status = how;
    return;
failed:
    if (sfd >= 0) close(sfd);
    close(dfd);
    unlinkat(j->dirfd, j->tmp, 0);
    j->r.status = FAILED;
}

/* [(status, errno, stage), ...] for n jobs of stride bytes, each starting with its
   result_t. */
static PyObject *result_list(const char *jobs, size_t stride, Py_ssize_t n) {
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const result_t *r = (const result_t *)(jobs + (size_t)i * stride);
        PyObject *t = Py_BuildValue("(iiz)", r->status, r->err, r->stage);
        if (t == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static void free_jobs(job_t *jobs, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        free(jobs[i].src);
        free(jobs[i].tmp);
        free(jobs[i].name);
    }
    free(jobs);
}

/* "O&" converter for a uid, gid or mode: a Python int in 0..2^32-2 (uid_t, whose -1 means
   "leave unchanged" to chown). "I" would wrap 2^32 to 0 silently: a file the caller gives
   to uid 4294967296 would become root's. */
static int to_id(PyObject *o, void *out) {
    unsigned long v = PyLong_AsUnsignedLong(o);
    if (v == (unsigned long)-1 && PyErr_Occurred()) return 0;
    if (v > 0xFFFFFFFEUL) {
        PyErr_SetString(PyExc_OverflowError, "uid, gid or mode out of range");
        return 0;
    }
    *(unsigned int *)out = (unsigned int)v;
    return 1;
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
"sha256: bytes, link: bool). status is 2 (cloned), 3 (hard-linked: no clone possible,\n"
"link asked, and the source's mode, owner, mtime and xattrs match), 1 (copied), 0 (miss:\n"
"nothing written) or -1 (writing the destination failed with errno at stage).\n"
"Whether a file system can clone is remembered per file system (st_dev of dirfd).");

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
        int chown_, chmod_, link_;
        job_t *j = &jobs[i];
        if (!PyTuple_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "copy_files: a job must be a tuple");
            goto error;
        }
        if (!PyArg_ParseTuple(t, "SiSSLO&O&O&LLppy#p", &src, &j->dirfd, &tmp, &name,
                              &j->size, to_id, &j->mode, to_id, &j->uid, to_id, &j->gid,
                              &j->atime, &j->mtime, &chown_, &chmod_, &digest, &dlen, &link_))
            goto error;
        j->link = link_;
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
    devcache_t devs = {0, -1, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        run_job(&jobs[i], buf, ctx, &devs);
        if (jobs[i].r.status == FAILED) {
            /* a failing destination fails the pull: stop here */
            for (Py_ssize_t k = i + 1; k < n; k++) jobs[k].r.status = MISS;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    free(buf);
    EVP_MD_CTX_free(ctx);

    PyObject *out = result_list((const char *)jobs, sizeof(job_t), n);
    free_jobs(jobs, n);
    return out;
error:
    Py_XDECREF(seq);
    free_jobs(jobs, n);
    return NULL;
}


/* ---------------------------------------------------------------- writing fetched files */

typedef struct {
    result_t r;
    int dirfd;
    char *tmp, *name;
    long long size;
    unsigned int mode, uid, gid;
    long long atime, mtime;
    int chown, chmod, check;
    unsigned char expected[32];
    Py_ssize_t npieces;
    const char **data; /* NULL: a hole of len bytes */
    Py_ssize_t *len;
} wjob_t;

static const unsigned char zeros[1 << 16];

static void run_wjob(wjob_t *j, EVP_MD_CTX *ctx) {
    int fd = openat(j->dirfd, j->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    j->mode & 0777);
    if (fd < 0) {
        j->r.err = errno;
        j->r.stage = "create";
        j->r.status = FAILED;
        return;
    }
    if (j->check) EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    int hole_last = 0;
    for (Py_ssize_t i = 0; i < j->npieces; i++) {
        if (j->data[i] == NULL) {
            /* a hole, as upstream writes it */
            if (lseek(fd, (off_t)j->len[i], SEEK_CUR) < 0) {
                j->r.err = errno;
                j->r.stage = "seek";
                goto failed;
            }
            if (j->check)
                for (Py_ssize_t left = j->len[i]; left > 0; left -= (Py_ssize_t)sizeof zeros)
                    EVP_DigestUpdate(ctx, zeros,
                                     left < (Py_ssize_t)sizeof zeros ? (size_t)left : sizeof zeros);
            hole_last = 1;
        } else {
            if (write_all(fd, (const unsigned char *)j->data[i], (size_t)j->len[i]) < 0) {
                j->r.err = errno;
                j->r.stage = "write";
                goto failed;
            }
            if (j->check) EVP_DigestUpdate(ctx, j->data[i], (size_t)j->len[i]);
            hole_last = 0;
        }
    }
    if (hole_last && ftruncate(fd, (off_t)j->size) < 0) {
        j->r.err = errno;
        j->r.stage = "truncate";
        goto failed;
    }
    if (j->check) {
        unsigned char md[32];
        EVP_DigestFinal_ex(ctx, md, NULL);
        if (memcmp(md, j->expected, 32) != 0) {
            close(fd);
            unlinkat(j->dirfd, j->tmp, 0);
            j->r.status = MISMATCH;
            return;
        }
    }
    if (finish(j->dirfd, fd, j->tmp, j->name, j->chown, j->chmod, j->uid, j->gid, j->mode,
               j->atime, j->mtime, &j->r) < 0)
        goto failed;
    close(fd);
    j->r.status = WRITTEN;
    return;
failed:
    close(fd);
    unlinkat(j->dirfd, j->tmp, 0);
    j->r.status = FAILED;
}

static void free_wjobs(wjob_t *jobs, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        free(jobs[i].tmp);
        free(jobs[i].name);
        free(jobs[i].data);
        free(jobs[i].len);
    }
    free(jobs);
}

PyDoc_STRVAR(write_files_doc,
"write_files(jobs) -> list of (status, errno, stage)\n\n"
"Each job is (dirfd: int, tmp: bytes, name: bytes, size: int, mode: int, uid: int,\n"
"gid: int, atime_ns: int, mtime_ns: int, chown: bool, chmod: bool, pieces: list,\n"
"sha256: bytes), a piece being the bytes of a verified chunk or the int length of a\n"
"hole; sha256 is empty or the whole file's digest to check. status is 1 (written),\n"
"-2 (the pieces do not add up to sha256) or -1 (errno at stage); nothing is left\n"
"behind but a written file.");

static PyObject *write_files(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "write_files expects a list of jobs");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    wjob_t *jobs = calloc(n ? (size_t)n : 1, sizeof(wjob_t));
    if (jobs == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    /* The caller keeps the job list, and so every chunk's bytes, alive during the call;
       bytes objects are immutable, so their buffers may be read without the GIL. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *tmp, *name, *pieces;
        const char *digest;
        Py_ssize_t dlen;
        int chown_, chmod_;
        wjob_t *j = &jobs[i];
        if (!PyTuple_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "write_files: a job must be a tuple");
            goto error;
        }
        if (!PyArg_ParseTuple(t, "iSSLO&O&O&LLppO!y#", &j->dirfd, &tmp, &name, &j->size,
                              to_id, &j->mode, to_id, &j->uid, to_id, &j->gid, &j->atime,
                              &j->mtime, &chown_, &chmod_, &PyList_Type, &pieces, &digest,
                              &dlen))
            goto error;
        if (dlen != 0 && dlen != 32) {
            PyErr_SetString(PyExc_ValueError, "sha256 must be empty or 32 bytes");
            goto error;
        }
        j->check = dlen == 32;
        if (j->check) memcpy(j->expected, digest, 32);
        j->chown = chown_;
        j->chmod = chmod_;
        if ((j->tmp = dup_bytes(tmp)) == NULL || (j->name = dup_bytes(name)) == NULL)
            goto error;
        j->npieces = PyList_GET_SIZE(pieces);
        j->data = calloc(j->npieces ? (size_t)j->npieces : 1, sizeof(char *));
        j->len = calloc(j->npieces ? (size_t)j->npieces : 1, sizeof(Py_ssize_t));
        if (j->data == NULL || j->len == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        for (Py_ssize_t k = 0; k < j->npieces; k++) {
            PyObject *p = PyList_GET_ITEM(pieces, k);
            if (PyBytes_Check(p)) {
                j->data[k] = PyBytes_AS_STRING(p);
                j->len[k] = PyBytes_GET_SIZE(p);
            } else {
                j->len[k] = PyLong_AsSsize_t(p);
                if (j->len[k] < 0) {
                    if (!PyErr_Occurred())
                        PyErr_SetString(PyExc_ValueError, "a hole must not be negative");
                    goto error;
                }
            }
        }
    }

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        free_wjobs(jobs, n);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        run_wjob(&jobs[i], ctx);
        if (jobs[i].r.status < 0) {
            for (Py_ssize_t k = i + 1; k < n; k++) jobs[k].r.status = MISS;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    EVP_MD_CTX_free(ctx);
    Py_DECREF(seq);

    PyObject *out = result_list((const char *)jobs, sizeof(wjob_t), n);
    free_wjobs(jobs, n);
    return out;
error:
    Py_DECREF(seq);
    free_wjobs(jobs, n);
    return NULL;
}

/* ------------------------------------------------------- hashing the tree as written */

/* The DiffID check reads every file of the tree back, in the layer's tar order, into one
   SHA-256 with the tar-split's header bytes between them. Done from Python that is four
   system calls and a few generator steps per file, each taking the GIL back from the
   copiers; here a batch of files is one call without the GIL. */
typedef struct {
    PyObject_HEAD
    EVP_MD_CTX *ctx;
    int busy;
} TreeHash;

static int TreeHash_init(TreeHash *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, ":TreeHash", kwlist)) return -1;
    if (self->ctx == NULL && (self->ctx = EVP_MD_CTX_new()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (!EVP_DigestInit_ex(self->ctx, EVP_sha256(), NULL)) {
        PyErr_SetString(PyExc_RuntimeError, "SHA-256 init failed");
        return -1;
    }
    return 0;
}

static void TreeHash_dealloc(TreeHash *self) {
    EVP_MD_CTX_free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

typedef struct {
    const char *data; /* bytes to hash as they are, or NULL: a file */
    Py_ssize_t len;
    int dirfd;
    char *name;
    long long size;
} titem_t;

/* Hash one file: regular, exactly size bytes, read through; -1 with *err (0: not a regular
   file of that size, or shorter than it) and *stage on failure. */
static int hash_file(EVP_MD_CTX *ctx, const titem_t *it, unsigned char *buf, int *err,
                     const char **stage) {
    struct stat st;
    int fd = openat(it->dirfd, it->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *err = errno;
        *stage = "open";
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        *err = errno;
        *stage = "stat";
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size != it->size) {
        *err = 0;
        *stage = "size";
        close(fd);
        return -1;
    }
    long long off = 0;
    while (off < it->size) {
        size_t want = it->size - off < BUF_SIZE ? (size_t)(it->size - off) : BUF_SIZE;
        ssize_t n = pread(fd, buf, want, off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            *err = n < 0 ? errno : 0;
            *stage = n < 0 ? "read" : "size";
            close(fd);
            return -1;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)n);
        off += n;
    }
    close(fd);
    return 0;
}

PyDoc_STRVAR(TreeHash_update_doc,
"update(items) -> None or (index, errno, stage)\n\n"
"Hash each item in order: bytes as they are, or a file (dirfd: int, name: bytes,\n"
"size: int) read from its directory without following a symlink, which must be a\n"
"regular file of exactly size bytes. On the first file that is not, stops and returns\n"
"its index, the errno (0: not a regular file of that size) and the stage; the hash is\n"
"then of no further use.");

static PyObject *TreeHash_update(TreeHash *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "update expects a list");
    if (seq == NULL) return NULL;
    if (self->busy) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_RuntimeError, "TreeHash used from two threads at once");
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    titem_t *items = calloc(n ? (size_t)n : 1, sizeof(titem_t));
    unsigned char *buf = NULL;
    PyObject *out = NULL;
    if (items == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int files = 0;
    /* the list (held by seq) keeps every bytes object alive during the call, and bytes
       are immutable: their buffers may be read without the GIL */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        titem_t *it = &items[i];
        if (PyBytes_Check(o)) {
            it->data = PyBytes_AS_STRING(o);
            it->len = PyBytes_GET_SIZE(o);
            continue;
        }
        PyObject *name;
        if (!PyTuple_Check(o)) {
            PyErr_SetString(PyExc_TypeError, "an item is bytes or (dirfd, name, size)");
            goto done;
        }
        if (!PyArg_ParseTuple(o, "iSL", &it->dirfd, &name, &it->size)) goto done;
        if (it->size < 0) {
            PyErr_SetString(PyExc_ValueError, "a file size must not be negative");
            goto done;
        }
        if ((it->name = dup_bytes(name)) == NULL) goto done;
        files = 1;
    }
    if (files && (buf = malloc(BUF_SIZE)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t failed = -1;
    int err = 0;
    const char *stage = NULL;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (items[i].data != NULL || items[i].name == NULL) {
            EVP_DigestUpdate(self->ctx, items[i].data, (size_t)items[i].len);
        } else if (hash_file(self->ctx, &items[i], buf, &err, &stage) < 0) {
            failed = i;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (failed < 0) {
        out = Py_NewRef(Py_None);
    } else {
        out = Py_BuildValue("(niz)", failed, err, stage);
    }
done:
    if (items != NULL)
        for (Py_ssize_t i = 0; i < n; i++) free(items[i].name);
    free(items);
    free(buf);
    Py_DECREF(seq);
    return out;
}

static PyObject *TreeHash_hexdigest(TreeHash *self, PyObject *Py_UNUSED(ignored)) {
    unsigned char md[32];
    char hex[65];
    EVP_MD_CTX *copy = EVP_MD_CTX_new();
    if (copy == NULL) return PyErr_NoMemory();
    /* a copy, so the hash may still be fed after */
    if (!EVP_MD_CTX_copy_ex(copy, self->ctx) || !EVP_DigestFinal_ex(copy, md, NULL)) {
        EVP_MD_CTX_free(copy);
        PyErr_SetString(PyExc_RuntimeError, "SHA-256 final failed");
        return NULL;
    }
    EVP_MD_CTX_free(copy);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return PyUnicode_FromStringAndSize(hex, 64);
}

static PyMethodDef TreeHash_methods[] = {
    {"update", (PyCFunction)TreeHash_update, METH_O, TreeHash_update_doc},
    {"hexdigest", (PyCFunction)TreeHash_hexdigest, METH_NOARGS,
     "The SHA-256 of everything hashed so far, in hex."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TreeHashType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "chunked.puller._pullio.TreeHash",
    .tp_basicsize = sizeof(TreeHash),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("TreeHash(): one SHA-256 over bytes and files of a tree, in order."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TreeHash_init,
    .tp_dealloc = (destructor)TreeHash_dealloc,
    .tp_methods = TreeHash_methods,
};

static PyMethodDef copy_methods[] = {
    {"write_files", write_files, METH_O, write_files_doc},
    {"copy_files", copy_files, METH_O, copy_files_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef copy_module = {
    PyModuleDef_HEAD_INIT, "chunked.puller._pullio",
    "The per-file work of a partial pull, a batch per call, without the GIL.", -1,
    copy_methods,
};

PyMODINIT_FUNC PyInit__pullio(void) {
    if (PyType_Ready(&TreeHashType) < 0) return NULL;
    PyObject *m = PyModule_Create(&copy_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "TreeHash", (PyObject *)&TreeHashType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
