# The compiled kernels: rolling checksum, CRC-64, SHA-256 of batches (chunked/_native.c);
# the TOC index and tar-split check (chunked/_tocindex.c); the verified per-file work of
# partial pulls (chunked/_pullio.c). SHA-256 comes from OpenSSL's libcrypto. setuptools
# needs a setup.py to declare C extensions.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("chunked._native", ["chunked/_native.c"], extra_compile_args=["-O3"],
                  libraries=["crypto"], depends=["chunked/_tarheader.h"]),
        Extension("chunked._tocindex", ["chunked/_tocindex.c"], extra_compile_args=["-O2"],
                  depends=["chunked/_tarheader.h"]),
        Extension("chunked._pullio", ["chunked/_pullio.c"], extra_compile_args=["-O2"],
                  libraries=["crypto"]),
    ]
)
