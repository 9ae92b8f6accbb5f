"""``chunked.build``: a tar in, a zstd:chunked layer out, optionally as a one-layer image
in an OCI layout or pushed to a registry."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from chunked import format as fmt
from chunked.api.types import Descriptor
from chunked.builder import DEFAULT_LEVEL, BuildResult, build_blob

__all__ = ["DEFAULT_LEVEL", "FORMATS", "MAX_LEVEL", "build"]
from chunked.errors import InputError
from chunked.oci.layout import OciLayout, OciRef, write_image

PathLike = str | os.PathLike[str]

MAX_LEVEL = 22
FORMATS = tuple(sorted(fmt.VARIANTS))  # current, old


def variant_of(format: str) -> fmt.Variant:
    try:
        return fmt.VARIANTS[format]
    except KeyError:
        raise InputError(f"format {format!r}: not one of {', '.join(sorted(fmt.VARIANTS))}"
                         ) from None


def check_level(level: int) -> int:
    if not 1 <= level <= MAX_LEVEL:
        raise InputError(f"level {level}: must be between 1 and {MAX_LEVEL}")
    return level


def open_tar(src: PathLike) -> tuple[BinaryIO, int | None]:
    """The tar at ``src`` opened, and its size when it is a regular file."""
    path = os.fspath(src)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a tar") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    st = os.fstat(f.fileno())
    return f, st.st_size if stat.S_ISREG(st.st_mode) else None


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, renamed over it only if the block succeeds: a
    failed build never leaves a partial blob under the name asked for."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except OSError as exc:
        raise InputError(f"{path}: cannot write here: {exc.strerror}") from None
    f = os.fdopen(fd, "w+b")
    try:
        yield f
        f.flush()
        os.fchmod(f.fileno(), 0o644)
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _descriptor(result: BuildResult) -> Descriptor:
    d = result.descriptor()
    return Descriptor(d["mediaType"], d["digest"], d["size"], d["annotations"], result.diff_id)


def build(src: PathLike | BinaryIO, dst: PathLike | None = None, *, image: str | None = None,
          level: int = DEFAULT_LEVEL, format: str = "current", threads: int | None = None,
          old_keys: bool = True, tls_verify: bool = True, creds: str | None = None,
          authfile: str | None = None,
          progress: Callable[[int], None] | None = None) -> Descriptor:
    """Build a zstd:chunked layer from the tar ``src`` (a path or a binary file object).

    The blob goes to ``dst`` (renamed into place once complete); ``image`` also writes a
    one-layer image, ``oci:DIR[:TAG]``, or pushes it, ``docker://HOST/REPO[:TAG]`` (with
    the registry options). One of the two is needed. ``format`` is ``"current"``
    (containers/storage >= 1.54) or ``"old"`` (1.43, podman 4.3); ``old_keys`` also
    writes the old annotation keys on a current-format layer, so podman 4.3 pulls it
    partially too. ``threads`` defaults to one per core; ``progress(n)`` gets the tar
    bytes read so far. Returns the layer's descriptor, with its DiffID.
    """
    if dst is None and image is None:
        raise InputError("say where the layer goes: a destination path and/or an image")
    variant = variant_of(format)
    check_level(level)
    if threads is not None and threads < 1:
        raise InputError(f"threads {threads}: must be at least 1")

    def run(source: BinaryIO, out: BinaryIO) -> BuildResult:
        return build_blob(source, out, level=level, variant=variant, threads=threads,
                          extra_old_keys=old_keys, progress=progress)

    if image is not None and image.startswith("docker://"):
        from chunked.api.push import push

        # built into a temporary layout, then pushed from it: the registry gets the blob
        # only once it is complete and its digest known
        with tempfile.TemporaryDirectory(prefix="chunked-build-") as tmp:
            desc = build(src, dst, image=f"oci:{tmp}:latest", level=level, format=format,
                         threads=threads, old_keys=old_keys, progress=progress)
            push(f"oci:{tmp}:latest", image, tls_verify=tls_verify, creds=creds,
                 authfile=authfile)
            return desc
    with contextlib.ExitStack() as stack:
        if isinstance(src, str | os.PathLike):
            source, _size = open_tar(src)
            stack.enter_context(source)
        else:
            source = src
        if image is None:
            assert dst is not None
            with atomic_output(os.fspath(dst)) as out:
                return _descriptor(run(source, out))
        ref = OciRef.parse(image)
        layout = OciLayout(ref.path)
        try:
            layout.init()
        except OSError as exc:
            raise InputError(f"{ref.path}: cannot create the image layout: "
                             f"{exc.strerror}") from None
        with layout.new_blob() as out:
            result = run(source, out)
            if dst is not None:
                out.seek(0)
                with atomic_output(os.fspath(dst)) as copy:
                    while piece := out.read(1 << 20):
                        copy.write(piece)
        layout.commit_blob(result.digest)
        write_image(layout, ref.tag, [(result.descriptor(), result.diff_id)])
        return _descriptor(result)
