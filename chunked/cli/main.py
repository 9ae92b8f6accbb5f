"""The ``chunked`` command line. Every error becomes one line on stderr and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import msgspec

from chunked import __version__
from chunked import format as fmt
from chunked.builder import DEFAULT_LEVEL, BuildResult, build_blob
from chunked.cache.chunks import default_cache_dir
from chunked.cli.malloc import tune_malloc
from chunked.cli.progress import progress_bar, progress_bars
from chunked.errors import ChunkedError, FormatError, InputError, VerifyError
from chunked.oci.layout import OciLayout, OciRef, write_image
from chunked.oci.manifest import MAX_MANIFEST_SIZE, Descriptor, parse_descriptor
from chunked.read.image import Image, LayerPolicy, open_image
from chunked.read.layer import Layer, clean_name
from chunked.read.source import FileSource


def _open_input(path: str) -> tuple[BinaryIO, int | None]:
    if path == "-":
        return sys.stdin.buffer, None
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
def _atomic_output(path: str) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, renamed over it only if the block succeeds."""
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


def _build(args: argparse.Namespace, src: BinaryIO, out: BinaryIO, total: int | None
           ) -> BuildResult:
    variant = fmt.VARIANTS[args.format]
    with progress_bar("building", total, enabled=not args.quiet) as advance:
        return build_blob(src, out, level=args.level, variant=variant, threads=args.threads,
                          extra_old_keys=not args.no_old_keys, progress=advance)


def _client(args: argparse.Namespace, host: str) -> Any:
    from chunked.oci import registriesconf
    from chunked.oci.registry import RegistryClient, parse_creds

    return RegistryClient(host, tls_verify=registriesconf.tls_verify(host, "", args.tls_verify),
                          creds=parse_creds(args.creds), authfile=args.authfile)


def _push(args: argparse.Namespace, src: OciRef, dest_text: str) -> dict[str, Any]:
    from chunked.oci.push import push_image
    from chunked.oci.reference import DockerRef

    dest = DockerRef.parse(dest_text)
    try:
        manifest = OciLayout(src.path).manifest(src.tag)
        total: int | None = manifest.config.size + sum(d.size for d in manifest.layers)
    except ChunkedError:
        total = None  # an index, or trouble the push itself reports

    with _client(args, dest.host) as client, progress_bar(
            "pushing", total, enabled=not getattr(args, "quiet", False)) as advance:
        done = 0

        def pushed(n: int) -> None:
            nonlocal done
            done += n
            if advance:
                advance(done)

        return push_image(src, dest, client, pushed)


def cmd_push(args: argparse.Namespace) -> int:
    summary = _push(args, OciRef.parse(args.source), args.dest)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"pushed {args.dest} ({summary['digest']}): {summary['blobs_uploaded']} blobs "
              f"uploaded ({summary['bytes_uploaded']} bytes), {summary['blobs_skipped']} "
              f"already there, {summary.get('blobs_mounted', 0)} mounted")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    if not args.output and not args.image:
        raise InputError("say where the layer goes: -o FILE and/or --image oci:DIR[:TAG]")
    if args.image and args.image.startswith("docker://"):
        # build into a temporary layout, then push it
        with tempfile.TemporaryDirectory(prefix="chunked-build-") as tmp:
            layout_ref = f"oci:{tmp}:latest"
            args_oci = argparse.Namespace(**{**vars(args), "image": layout_ref})
            with contextlib.redirect_stdout(sys.stderr):
                cmd_build(args_oci)
            layout = OciLayout(tmp)
            manifest = layout.manifest("latest")
            _push(args, OciRef.parse(layout_ref), args.image)
            doc = msgspec.to_builtins(manifest.layers[0])
            doc["diffID"] = layout.read_json(manifest.config.digest)["rootfs"]["diff_ids"][0]
            print(json.dumps(doc, indent=2))
        return 0
    ref = OciRef.parse(args.image) if args.image else None
    src, total = _open_input(args.input)
    with src:
        if ref is None:
            with _atomic_output(args.output) as out:
                result = _build(args, src, out, total)
        else:
            layout = OciLayout(ref.path)
            try:
                layout.init()
            except OSError as exc:
                raise InputError(f"{ref.path}: cannot create the image layout: "
                                 f"{exc.strerror}") from None
            with layout.new_blob() as out:
                result = _build(args, src, out, total)
                if args.output:
                    out.seek(0)
                    with _atomic_output(args.output) as copy:
                        while piece := out.read(1 << 20):
                            copy.write(piece)
            layout.commit_blob(result.digest)
            write_image(layout, ref.tag, [(result.descriptor(), result.diff_id)])
    doc: dict[str, Any] = result.descriptor()
    doc["diffID"] = result.diff_id
    print(json.dumps(doc, indent=2))
    return 0


def _load_descriptor(path: str | None) -> tuple[dict[str, str], Descriptor | None]:
    """The annotations a descriptor file gives (as `chunked build` prints it, or a bare
    annotations object), and the descriptor itself when the file is one."""
    if not path:
        return {}, None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_SIZE + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        raise InputError(f"{path}: not a JSON descriptor") from None
    if isinstance(doc, dict) and "digest" in doc:
        desc = parse_descriptor(raw, path)
        return desc.annotations, desc
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise InputError(f"{path}: not a descriptor or an annotations object")
    return doc, None


@contextlib.contextmanager
def _open_layer(args: argparse.Namespace) -> Iterator[tuple[Layer, Descriptor | None]]:
    annotations, desc = _load_descriptor(args.descriptor)
    with FileSource(args.blob) as source:
        if desc is not None and desc.size != source.size:
            raise VerifyError(f"{args.blob}: blob is {source.size} bytes, its descriptor "
                              f"says {desc.size}")
        yield Layer.open(source, annotations), desc


def _blob_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return "sha256:" + h.hexdigest()


def _mode_string(e: fmt.TocEntry) -> str:
    kind = {"dir": "d", "symlink": "l", "char": "c", "block": "b", "fifo": "p",
            "hardlink": "h"}.get(e.type, "-")
    return kind + stat.filemode(e.mode & 0o7777)[1:]


def _is_image_ref(target: str) -> bool:
    return target.startswith(("oci:", "docker://"))


@contextlib.contextmanager
def _open_image(args: argparse.Namespace, policy: LayerPolicy | None = None
                ) -> Iterator[Image]:
    image = open_image(args.blob, tls_verify=args.tls_verify, creds=args.creds,
                       authfile=args.authfile, platform=args.platform,
                       policy=policy or LayerPolicy())
    try:
        for il in image.unchecked:
            _warn(f"layer {il.descriptor.digest} has no tar-split: its TOC is served as it "
                  "is, unchecked against the layer's tar")
        yield image
    finally:
        image.close()


def _policy(args: argparse.Namespace, *, whole: bool = False) -> LayerPolicy:
    return LayerPolicy(require_tarsplit=getattr(args, "require_tarsplit", False),
                       whole_if_unchecked=whole)


def _warn(text: str) -> None:
    print(f"chunked: warning: {text}", file=sys.stderr)


def _entry_line(e: fmt.TocEntry, extra: str, name: str) -> str:
    mtime = fmt.format_time(e.mtime) if e.mtime is not None else "-"
    target = f" -> {e.link_name}" if e.link_name else ""
    size = f"{e.dev_major},{e.dev_minor}" if e.type in ("char", "block") else str(e.size)
    return (f"{_mode_string(e)} {e.uid:>5}:{e.gid:<5} {size:>12} {extra:>4} {mtime:<30} "
            f"{name}{target}")


def _inspect_image(args: argparse.Namespace) -> int:
    with _open_image(args) as image:
        view = image.merged()
        if args.json:
            # streamed: a TOC of millions of entries is never held as one document
            out = sys.stdout
            layers = [{"digest": il.descriptor.digest, "format": il.layer.variant.name,
                       "entries": len(il.layer.entries)} for il in image.layers]
            out.write('{"layers": ' + json.dumps(layers) + ',\n "entries": [')
            for n, m in enumerate(view.entries.values()):
                extra = f',"path":{json.dumps(m.path)},"layer":{m.layer_index}}}'
                out.write((",\n  " if n else "\n  ") + m.info.entry.encode(fmt.CURRENT)[:-1]
                          + extra)
            out.write("\n]}\n")
            return 0
        print(f"layers: {len(image.layers)}   paths: {len(view.entries)}   (layer column: "
              "the layer a path comes from, 0 = bottom)")
        for path in sorted(view.entries):
            m = view.entries[path]
            print(_entry_line(m.info.entry, str(m.layer_index), path))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if _is_image_ref(args.blob):
        return _inspect_image(args)
    with _open_layer(args) as (layer, _desc):
        if args.json:
            out = sys.stdout
            out.write(f'{{"format": {json.dumps(layer.variant.name)},\n'
                      f' "tocChecksum": {json.dumps(layer.checksum)},\n'
                      f' "tarSplitDigest": {json.dumps(layer.toc.tarsplit_digest or None)},\n'
                      f' "tarSplitChecked": {json.dumps(layer.tarsplit_checked)},\n'
                      ' "entries": [')
            for n, e in enumerate(layer.toc.entries):
                out.write((",\n  " if n else "\n  ") + e.encode(fmt.CURRENT))
            out.write("\n]}\n")
            return 0
        print(f"format: {layer.variant.name}   entries: {len(layer.entries)}   "
              f"TOC verified against annotation: {'yes' if layer.checksum else 'no'}   "
              f"against the tar-split: {'yes' if layer.tarsplit_checked else 'no'}")
        for e in layer.entries:
            chunks = ""
            if e.type == fmt.TYPE_REG and e.size:
                chunks = str(len(layer.files[clean_name(e.name)].chunks))
            print(_entry_line(e, chunks, e.name))
    return 0


def _verify_image(args: argparse.Namespace) -> int:
    # one display for every layer's bar: rich allows one live display at a time
    with _open_image(args) as image, progress_bars(enabled=not args.quiet) as add:
        def bar(i: int) -> Callable[[int], None] | None:
            il = image.layers[i]
            total = sum(e.size for e in il.layer.entries if e.type == fmt.TYPE_REG)
            return _accumulate(add(f"layer {i}", total) if add else None)

        reports = image.verify(progress=bar)
        results = [{"digest": il.descriptor.digest, "files": r.files, "chunks": r.chunks,
                    "bytes": r.bytes, "diffID": r.diff_id, "tarSplitChecked": r.tarsplit_checked}
                   for il, r in zip(image.layers, reports, strict=True)]
    if args.json:
        print(json.dumps({"layers": results}, indent=2))
    else:
        for i, r in enumerate(results):
            print(f"ok: layer {i} {r['digest']}: {r['files']} files, {r['chunks']} chunks "
                  f"verified; TOC matches the layer's tar; diffID matches the config")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if _is_image_ref(args.blob):
        return _verify_image(args)
    with _open_layer(args) as (layer, desc):
        total = sum(e.size for e in layer.entries if e.type == fmt.TYPE_REG)
        with progress_bar("verifying", total, enabled=not args.quiet) as advance:
            report = layer.verify(progress=_accumulate(advance))
        if desc is not None and _blob_digest(args.blob) != desc.digest:
            raise VerifyError(f"{args.blob}: blob does not match its descriptor's digest")
        doc = {
            "blob": args.blob,
            "format": layer.variant.name,
            "tocChecksum": report.toc_checked_against or None,
            "tarSplitChecked": report.tarsplit_checked,
            "files": report.files,
            "chunks": report.chunks,
            "bytes": report.bytes,
            "diffID": report.diff_id,
        }
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            toc = (f"TOC matches {report.toc_checked_against}" if report.toc_checked_against
                   else "TOC read from the footer (no descriptor given to check it against)")
            ts = "tar-split matches the TOC and the data" if report.tarsplit_checked \
                else "no tar-split"
            print(f"ok: {report.files} files, {report.chunks} chunks, {report.bytes} bytes "
                  f"verified; {toc}; the TOC matches the layer's tar; {ts}; "
                  f"diffID {report.diff_id}")
    return 0


def _accumulate(advance: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """A progress callback taking increments, for a bar that takes totals."""
    if advance is None:
        return None
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        advance(done)
    return step


def cmd_cat(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        if _is_image_ref(args.blob):
            image = stack.enter_context(_open_image(args, _policy(args)))
            layer, info = image.merged().lookup(args.path)
        else:
            layer, _ = stack.enter_context(_open_layer(args))
            if not layer.tarsplit_checked:
                if args.require_tarsplit:
                    raise FormatError(f"{args.blob} has no tar-split, so its TOC cannot be "
                                      "checked against its tar (refused: --require-tarsplit)")
                _warn(f"{args.blob} has no tar-split: its TOC is served as it is, unchecked "
                      "against the layer's tar")
            info = layer.lookup(args.path)
        out = sys.stdout.buffer
        for data in layer.iter_file(info):
            out.write(data)
        out.flush()
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    import functools

    from chunked.fuse.mount import mount_background, serve

    run = functools.partial(
        serve, args.blob, args.mountpoint, tls_verify=args.tls_verify, creds=args.creds,
        authfile=args.authfile, platform=args.platform, cache_bytes=args.cache_size << 20,
        prefetch=args.prefetch, cache_dir=args.cache, policy=_policy(args))
    if not args.foreground:
        return mount_background(run, args.mountpoint)
    run()
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from chunked.converter import convert

    with progress_bars(enabled=not args.quiet) as bar:
        summary = convert(args.source, args.dest, add_compression=args.add_compression,
                          platform=args.platform, level=args.level,
                          variant=fmt.VARIANTS[args.format], tls_verify=args.tls_verify,
                          creds=args.creds, authfile=args.authfile, cache_dir=args.cache,
                          progress=bar)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
        return 0
    s = summary
    print(f"converted {args.source} into {args.dest} ({s.digest}) in {s.seconds:.2f} s: "
          f"{s.layers_converted} layers converted, {s.layers_reused} reused, {s.layers_kept} "
          f"already zstd:chunked; {s.bytes_read} bytes read, {s.bytes_written} written")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    import functools

    from chunked.fuse.mount import mount_background, serve_store

    run = functools.partial(
        serve_store, args.mountpoint, tls_verify=args.tls_verify, creds=args.creds,
        authfile=args.authfile, platform=args.platform, cache_bytes=args.cache_size << 20,
        prefetch=args.prefetch, cache_dir=args.cache)
    if not args.foreground:
        return mount_background(run, args.mountpoint)
    run()
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from chunked.cache.chunks import ContentCache
    from chunked.puller.pull import pull_image

    cache = ContentCache(args.cache) if args.cache else None
    # a layer whose TOC cannot be checked is fetched whole: a pull writes the plain tar
    with _open_image(args, _policy(args, whole=True)) as image:
        # the total comes from the pull itself, which knows the merged tree
        with progress_bar("pulling", None, enabled=not args.quiet) as advance:
            summary = pull_image(image, args.dest, cache=cache, hardlink=args.hardlink,
                                 progress=advance)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        s = summary
        print(f"pulled into {args.dest} in {s.seconds:.2f} s: {s.bytes_fetched} bytes fetched, "
              f"{s.bytes_reused} reused locally; {s.files_fetched} files fetched, "
              f"{s.files_reused} reused")
    for name in summary.skipped:
        print(f"chunked: skipped {name!r} (devices need root)", file=sys.stderr)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from chunked.cli.cache import cmd_cache_prune, cmd_cache_show

    if args.action == "show":
        return cmd_cache_show(args.cache, args.json)
    return cmd_cache_prune(args.cache, args.max_size << 20, args.json)


def cmd_stats(args: argparse.Namespace) -> int:
    from chunked.fuse.mount import read_stats

    stats = read_stats(args.mountpoint)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for i, layer in enumerate(stats["layers"]):
        users = f", {layer['refs']} users" if "refs" in layer else ""
        print(f"layer {i} {layer['digest']}: {layer.get('bytesFetched', 0)} bytes in "
              f"{layer.get('chunksFetched', 0)} chunks of {layer.get('filesFetched', 0)} "
              f"files fetched{users}")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from chunked.fuse.mount import unmount

    unmount(args.mountpoint)
    return 0


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _registry_options(p: argparse.ArgumentParser, platform: bool = True) -> None:
    p.add_argument("--tls-verify", type=_bool, default=True, metavar="BOOL",
                   help="require HTTPS and verify certificates (default true; a registry "
                   "registries.conf calls insecure is not verified either)")
    p.add_argument("--creds", metavar="USER:PASS", help="registry credentials")
    p.add_argument("--authfile", help="auth.json with registry credentials")
    if platform:
        p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                       help="which image of a multi-platform index (default: this host)")


def _serving_options(p: argparse.ArgumentParser) -> None:
    """What `mount` and `store` share: how they serve, and where fetched chunks go."""
    p.add_argument("--foreground", action="store_true",
                   help="serve in this process until unmounted")
    p.add_argument("--cache-size", type=int, default=1024, metavar="MIB",
                   help="memory for fetched chunks (default 1024 MiB)")
    p.add_argument("--prefetch", action="store_true",
                   help="fetch the rest in the background; reads keep priority")
    p.add_argument("--cache", default=default_cache_dir(), metavar="DIR",
                   help="shared on-disk cache of verified chunks "
                   f"(default {default_cache_dir()})")
    p.add_argument("--no-cache", dest="cache", action="store_const", const=None,
                   help="keep fetched chunks in memory only")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunked", description=__doc__)
    p.add_argument("--version", action="version", version=f"chunked {__version__}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log registry requests and fetches to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="turn a tar into a zstd:chunked layer")
    b.add_argument("input", help="tar file, or - for stdin")
    b.add_argument("-o", "--output", help="write the layer blob here")
    b.add_argument("--image", metavar="oci:DIR[:TAG]|docker://REF",
                   help="also write a one-layer OCI image layout, or push it to a registry")
    b.add_argument("--level", type=int, default=DEFAULT_LEVEL,
                   help=f"zstd level, 1-19 (default {DEFAULT_LEVEL})")
    b.add_argument("--format", choices=sorted(fmt.VARIANTS), default="current",
                   help="current (containers/storage >= 1.54) or old (1.43, podman 4.3)")
    b.add_argument("--threads", type=int, default=None,
                   help="compression threads (default: one per core)")
    b.add_argument("--no-old-keys", action="store_true",
                   help="omit the io.containers.* annotation keys podman 4.3 reads")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_build)

    pu = sub.add_parser("push", help="push an OCI layout image to a registry")
    pu.add_argument("source", metavar="oci:DIR[:TAG]")
    pu.add_argument("dest", metavar="docker://HOST/REPO[:TAG]")
    pu.add_argument("--json", action="store_true", help="machine-readable output")
    pu.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for parser in (b, pu):
        _registry_options(parser, platform=False)
    pu.set_defaults(func=cmd_push)

    ca = sub.add_parser("cache", help="show or prune the on-disk cache")
    ca.add_argument("action", choices=["show", "prune"])
    ca.add_argument("--cache", default=default_cache_dir(), metavar="DIR")
    ca.add_argument("--max-size", type=int, default=0, metavar="MIB",
                    help="prune: keep at most this much (default 0: empty it)")
    ca.add_argument("--json", action="store_true", help="machine-readable output")
    ca.set_defaults(func=cmd_cache)

    st = sub.add_parser("stats", help="what a mount or store has fetched so far, per layer")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_stats)

    cv = sub.add_parser("convert", help="rebuild an image's layers as zstd:chunked; with "
                        "--add-compression, publish both compressions in one index")
    cv.add_argument("source", metavar="SRC", help="docker://HOST/REPO[:TAG|@DIGEST] or "
                    "oci:DIR[:TAG]")
    cv.add_argument("dest", metavar="DST", help="docker://HOST/REPO[:TAG] or oci:DIR[:TAG]")
    cv.add_argument("--add-compression", action="store_true",
                    help="DST becomes an index listing each original manifest first, then "
                    "its zstd:chunked twin: old clients keep getting gzip")
    which = cv.add_mutually_exclusive_group()
    which.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                       help="convert only this platform's image of an index")
    which.add_argument("--all", action="store_true",
                       help="convert every platform of an index (the default)")
    cv.add_argument("--level", type=int, default=DEFAULT_LEVEL,
                    help=f"zstd level, 1-19 (default {DEFAULT_LEVEL})")
    cv.add_argument("--format", choices=sorted(fmt.VARIANTS), default="current",
                    help="current (containers/storage >= 1.54) or old (1.43, podman 4.3)")
    _registry_options(cv, platform=False)
    cv.add_argument("--cache", default=default_cache_dir(), metavar="DIR",
                    help="where the record of converted layers is kept (default "
                    f"{default_cache_dir()})")
    cv.add_argument("--no-cache", dest="cache", action="store_const", const=None)
    cv.add_argument("--json", action="store_true", help="machine-readable summary")
    cv.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    cv.set_defaults(func=cmd_convert)

    so = sub.add_parser("store", help="serve registry images' zstd:chunked layers to podman "
                        "and CRI-O as an additional layer store, fetching files as they "
                        "are read")
    so.add_argument("mountpoint")
    _registry_options(so)
    _serving_options(so)
    so.set_defaults(func=cmd_store)

    u = sub.add_parser("umount", help="unmount what chunked mount or chunked store mounted")
    u.add_argument("mountpoint")
    u.set_defaults(func=cmd_umount)

    for name, func, helptext in (
        ("pull", cmd_pull, "write an image's root filesystem into DEST, fetching only what "
                           "is not already here"),
        ("mount", cmd_mount, "mount an image read-only, fetching files as they are read"),
        ("inspect", cmd_inspect, "list a layer's TOC"),
        ("verify", cmd_verify, "check every digest in a layer"),
        ("cat", cmd_cat, "write one file of a layer to stdout"),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("blob", metavar="TARGET",
                       help="a zstd:chunked layer blob, or an image: oci:DIR[:TAG] or "
                            "docker://HOST/REPO[:TAG|@DIGEST] (its merged root filesystem)")
        _registry_options(c)
        if name == "cat":
            c.add_argument("path", help="path of the file in the layer")
        if name == "pull":
            c.add_argument("dest")
            c.add_argument("--cache", default=default_cache_dir(), metavar="DIR",
                           help="local store: the mount's verified chunks and the record of "
                           f"earlier pulls (default {default_cache_dir()})")
            c.add_argument("--no-cache", dest="cache", action="store_const", const=None)
            c.add_argument("--hardlink", action="store_true",
                           help="where no reflink is possible, hard-link files an earlier "
                           "pull wrote when their metadata match, instead of copying them; "
                           "the trees then share those inodes")
            c.add_argument("--json", action="store_true", help="machine-readable summary")
            c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        if name == "mount":
            c.add_argument("mountpoint")
            _serving_options(c)
        if name not in ("mount", "pull"):
            c.add_argument("--descriptor", metavar="FILE",
                           help="layer descriptor JSON (as `chunked build` prints) whose "
                                "annotations locate and verify the TOC")
        if name in ("inspect", "verify"):
            c.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("pull", "mount", "cat"):
            c.add_argument("--require-tarsplit", action="store_true",
                           help="refuse zstd:chunked layers without a tar-split (the old "
                           "format), whose TOC cannot be checked against the tar; without "
                           "it, pull fetches them whole and mount and cat serve them with a "
                           "warning")
        if name == "verify":
            c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        c.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    # names come from images: a byte that is not UTF-8 (or a terminal that takes none)
    # must print escaped, not end the command
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    args = _parser().parse_args(argv)
    tune_malloc()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="chunked: %(name)s: %(message)s")
    # httpx/httpcore debug lines would drown ours
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "level", None) is not None and not 1 <= args.level <= 22:
        print("chunked: error: --level must be between 1 and 22", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ChunkedError as exc:
        print(f"chunked: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # a reader like `head` went away; not an error of ours
        with contextlib.suppress(OSError):
            sys.stdout = None  # type: ignore[assignment]
        return 0
    except KeyboardInterrupt:
        print("chunked: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"chunked: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
