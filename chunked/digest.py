"""Content digests, parsed once where they enter.

A :class:`Digest` is text already known to be ``sha256:`` and 64 lowercase hex digits, so
code that holds one never checks it again: it reads ``.hex`` (a safe file name) or ``.raw``.
Only sha256 is accepted, as containers/storage accepts only sha256 for zstd:chunked layers
(their TOC, chunk and tar-split digests) and this project reads and writes nothing else.

It is a ``str`` so JSON output, dict keys and comparisons with plain text keep working;
msgspec encodes it only with ``enc_hook=str`` (see :func:`enc_hook`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from chunked.errors import ChunkedError, FormatError

ALGORITHM = "sha256"
PREFIX = "sha256:"
HEX_LENGTH = 64
LENGTH = len(PREFIX) + HEX_LENGTH
HEX_DIGITS = frozenset("0123456789abcdef")
_HEX = HEX_DIGITS


def is_sha256(text: object) -> bool:
    """Whether ``text`` is ``sha256:`` and 64 lowercase hex digits, exactly."""
    return isinstance(text, str) and len(text) == LENGTH and text.startswith(PREFIX) \
        and _HEX.issuperset(text[7:])


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Digest(str):
    """``sha256:<64 lowercase hex>``, checked when made. Build one with :meth:`parse`
    (text from outside), :meth:`of` (bytes), :meth:`from_hex` or :meth:`from_hash`."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: object, what: str = "digest",
              error: type[ChunkedError] = FormatError) -> Digest:
        """``text`` as a Digest, else ``error`` (FormatError unless the caller says the text
        came from the user) in one line naming ``what`` it is."""
        if type(text) is cls:
            return text  # type: ignore[return-value]
        if not is_sha256(text):
            raise error(f"{what} is {_shown(text)}, not a sha256 digest "
                        f"(sha256:<{HEX_LENGTH} lowercase hex digits>; only sha256 is supported)")
        return str.__new__(cls, text)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Digest:
        """The sha256 of ``data``."""
        return str.__new__(cls, PREFIX + hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hash(cls, h: Any) -> Digest:  # noqa: ANN401 - hashlib's objects have no public type
        """The digest a finished ``hashlib.sha256()`` object holds."""
        if h.name != ALGORITHM:
            raise ValueError(f"a {h.name} hash is not a sha256 digest")
        return str.__new__(cls, PREFIX + h.hexdigest())

    @classmethod
    def from_hex(cls, hexd: str, what: str = "digest",
                 error: type[ChunkedError] = FormatError) -> Digest:
        """``sha256:`` + ``hexd`` (64 lowercase hex digits), else ``error``."""
        return cls.parse(PREFIX + hexd if isinstance(hexd, str) else hexd, what, error)

    @classmethod
    def trusted(cls, text: str) -> Digest:
        """Text already checked by :func:`is_sha256` (a TOC's, in one pass in C)."""
        return str.__new__(cls, text)

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    @property
    def hex(self) -> str:
        """The 64 lowercase hex digits: safe as a file name."""
        return self[7:]

    @property
    def raw(self) -> bytes:
        """The 32 bytes of the hash."""
        return bytes.fromhex(self[7:])

    def __repr__(self) -> str:
        return f"Digest({str.__repr__(self)})"


def raw_of(text: str) -> bytes:
    """The 32 bytes of a digest already checked (a TOC entry's), without wrapping it."""
    return bytes.fromhex(text[7:])


def dec_hook(kind: type, obj: object) -> object:
    """msgspec's hook for a :class:`Digest` field: a ValueError msgspec reports with the
    field's path."""
    if kind is Digest:
        if not is_sha256(obj):
            raise ValueError(f"{_shown(obj)} is not a sha256 digest (sha256:<{HEX_LENGTH} "
                             "lowercase hex digits>; only sha256 is supported)")
        return str.__new__(Digest, obj)
    raise NotImplementedError


def enc_hook(obj: object) -> object:
    """msgspec's hook to encode a :class:`Digest` (as its text)."""
    if isinstance(obj, str):
        return str(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")
