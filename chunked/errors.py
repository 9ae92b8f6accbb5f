"""The errors chunked raises. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class ChunkedError(Exception):
    """Base of every error a user can act on; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InputError(ChunkedError):
    """The input given to us is missing, unreadable or not what it claims (e.g. not a tar)."""

    exit_code = 2


class UnsupportedError(InputError):
    """Valid input that zstd:chunked (or upstream) cannot represent."""


class FormatError(ChunkedError):
    """A blob is not a well-formed zstd:chunked layer (bad footer, TOC, offsets)."""

    exit_code = 3


class VerifyError(FormatError):
    """Bytes do not match the digest that covers them."""

    exit_code = 4


class NotFoundError(ChunkedError):
    """A path asked for is not in the layer."""

    exit_code = 5


class MountError(ChunkedError):
    """A mount or the layer store could not be started, served or unmounted."""
