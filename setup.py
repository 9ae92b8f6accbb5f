# The compiled kernels: rolling checksum, CRC-64, SHA-256 of batches (chunked/_native.c);
# the TOC index and tar-split check (chunked/format/_tocindex.c); the verified per-file
# work of partial pulls (chunked/puller/_pullio.c). SHA-256 comes from OpenSSL's
# libcrypto. setuptools needs a setup.py to declare C extensions.
#
# Each extension is optional: where one cannot be built (no compiler, no libcrypto
# headers) the install goes on without it and the package uses its Python twin, slower
# and otherwise the same (the tests run both). CHUNKED_REQUIRE_NATIVE=1 makes a failed
# build an error instead, for the test command, where a silent fallback would hide a
# broken kernel.
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class optional_build_ext(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - the compiler's failure, of any kind
            self._skip("the C extensions", exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(ext.name, exc)

    def _skip(self, what: str, exc: Exception) -> None:
        if os.environ.get("CHUNKED_REQUIRE_NATIVE") == "1":
            raise exc
        print(f"chunked: WARNING: {what} not built ({exc}); the Python code will be used",
              file=sys.stderr)


setup(
    cmdclass={"build_ext": optional_build_ext},
    ext_modules=[
        Extension("chunked._native", ["chunked/_native.c"], extra_compile_args=["-O3"],
                  libraries=["crypto"], depends=["chunked/_tarheader.h"]),
        Extension("chunked.format._tocindex", ["chunked/format/_tocindex.c"],
                  extra_compile_args=["-O2"], include_dirs=["chunked"],
                  depends=["chunked/_tarheader.h"]),
        Extension("chunked.puller._pullio", ["chunked/puller/_pullio.c"],
                  extra_compile_args=["-O2"], libraries=["crypto"]),
    ],
)
