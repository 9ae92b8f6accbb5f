"""The record of layers converted before: source layer -> converted descriptor.

Kept in the cache directory, one small JSON file per source layer and settings (level,
format), written once the converted blob is stored, with the repositories it was stored
in. A later conversion of the same source layer asks the destination for the blob (HEAD),
links it from one of those repositories (a cross-repository mount), or, when it is gone
from all of them, converts again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import msgspec

from chunked.digest import Digest, dec_hook, enc_hook


class Converted(msgspec.Struct, rename={"diff_id": "diffID", "media_type": "mediaType"}):
    digest: Digest
    size: int
    media_type: str
    annotations: dict[str, str]
    diff_id: Digest
    locations: list[str] = []  # "host/repo" where the blob was stored

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                "annotations": dict(sorted(self.annotations.items()))}


class Record:
    def __init__(self, cache_dir: str | None):
        self.dir = os.path.join(cache_dir, "convert") if cache_dir else None

    def _path(self, source_digest: Digest, settings: str) -> str | None:
        if self.dir is None:
            return None
        hexd = Digest.parse(source_digest, "source layer digest").hex
        return os.path.join(self.dir, f"{hexd}-{settings}.json")

    def get(self, source_digest: Digest, settings: str) -> Converted | None:
        path = self._path(source_digest, settings)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return msgspec.json.decode(f.read(1 << 20), type=Converted,
                                          dec_hook=dec_hook)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None  # none, or damaged: convert again

    def put(self, source_digest: Digest, settings: str, converted: Converted,
            location: str | None) -> None:
        path = self._path(source_digest, settings)
        if path is None or self.dir is None:
            return
        old = self.get(source_digest, settings)
        if old is not None and old.digest == converted.digest:
            converted.locations = sorted(set(old.locations) | set(converted.locations))
        if location and location not in converted.locations:
            converted.locations = sorted([*converted.locations, location])
        os.makedirs(self.dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.json.encode(converted, enc_hook=enc_hook))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
