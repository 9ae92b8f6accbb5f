/* A tar header's plain numbers, shared by chunked/_native.c (tar_numbers) and
 * chunked/format/_tocindex.c (tar_entry_matches); their Python specification is
 * chunked/_native_spec.py (tar_numbers). */
#ifndef CHUNKED_TARHEADER_H
#define CHUNKED_TARHEADER_H

#include <Python.h>

/* A plain octal field as Go's archive/tar reads it: spaces and NULs trimmed from both ends,
 * then octal digits only. -1 when it is anything else (base-256, a stray byte, too long):
 * the caller then takes the Python path, which knows every case. */
static inline long long
tar_octal(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t a = 0, b = n;
    while (a < b && (p[a] == ' ' || p[a] == '\0')) {
        a++;
    }
    while (b > a && (p[b - 1] == ' ' || p[b - 1] == '\0')) {
        b--;
    }
    if (b - a > 21) {
        return -1;
    }
    long long x = 0;
    for (Py_ssize_t i = a; i < b; i++) {
        if (p[i] < '0' || p[i] > '7') {
            return -1;
        }
        x = (x << 3) | (p[i] - '0');
    }
    return x;
}

/* Whether a 512-byte header's checksum field is plain octal and matches its bytes, summed
 * unsigned or signed (some old writers summed signed chars; Go accepts either). */
static inline int
tar_checksum_ok(const unsigned char *b)
{
    long long stored = tar_octal(b + 148, 8);
    long long unsigned_sum = 8 * 32, signed_sum = 8 * 32;
    for (int i = 0; i < 512; i++) {
        if (i >= 148 && i < 156) {
            continue;
        }
        unsigned_sum += b[i];
        signed_sum += (signed char)b[i];
    }
    return stored >= 0 && (stored == unsigned_sum || stored == signed_sum);
}

#endif
