"""The ``chunked`` command line. Every error becomes one line on stderr and an exit code.

Each command parses its arguments, calls the public API (:mod:`chunked`) and prints what
it returns; the behaviour, and every check, is the library's."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

import chunked
from chunked import __version__
from chunked.api.build import DEFAULT_LEVEL, FORMATS, MAX_LEVEL
from chunked.cli.malloc import tune_malloc
from chunked.cli.progress import progress_bar, progress_bars
from chunked.errors import ChunkedError, InputError


def _registry(args: argparse.Namespace, platform: bool = True) -> dict[str, Any]:
    """The registry options, as every API call takes them."""
    opts: dict[str, Any] = {"tls_verify": args.tls_verify, "creds": args.creds,
                            "authfile": args.authfile}
    if platform:
        opts["platform"] = args.platform
    return opts


def _is_image_ref(target: str) -> bool:
    return target.startswith(("oci:", "docker://"))


def _warn(text: str) -> None:
    print(f"chunked: warning: {text}", file=sys.stderr)


def _warn_unchecked(image: chunked.Image, name: str) -> None:
    for il in image.layers:
        if not il.tarsplit_checked:
            what = f"layer {il.descriptor.digest}" if image.manifest is not None else name
            _warn(f"{what} has no tar-split: its TOC is served as it is, unchecked against "
                  "the layer's tar")


def _open(args: argparse.Namespace, **options: Any) -> chunked.Image:
    return chunked.open_image(args.blob, descriptor=getattr(args, "descriptor", None),
                              **_registry(args), **options)


def cmd_build(args: argparse.Namespace) -> int:
    if not args.output and not args.image:
        raise InputError("say where the layer goes: -o FILE and/or --image oci:DIR[:TAG]")
    src: Any = sys.stdin.buffer if args.input == "-" else args.input
    total = None
    if args.input != "-":
        with contextlib.suppress(OSError):
            st = os.stat(args.input)
            total = st.st_size if stat.S_ISREG(st.st_mode) else None
    with progress_bar("building", total, enabled=not args.quiet) as advance:
        desc = chunked.build(src, args.output, image=args.image, level=args.level,
                             format=args.format, threads=args.threads,
                             old_keys=not args.no_old_keys, progress=advance,
                             **_registry(args, platform=False))
    print(json.dumps(desc.to_dict(), indent=2))
    return 0


def _report(args: argparse.Namespace, doc: object, text: Callable[[], str]) -> int:
    """A command's result: ``doc`` as JSON with ``--json``, else the line ``text`` makes."""
    print(json.dumps(doc, indent=2) if args.json else text())
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from chunked.api.push import push_size

    with progress_bar("pushing", push_size(args.source),
                      enabled=not getattr(args, "quiet", False)) as advance:
        s = chunked.push(args.source, args.dest, progress=advance,
                         **_registry(args, platform=False))
    return _report(args, s.as_dict(), lambda: (
        f"pushed {args.dest} ({s.digest}): {s.blobs_uploaded} blobs uploaded "
        f"({s.bytes_uploaded} bytes), {s.blobs_skipped} already there, "
        f"{s.blobs_mounted} mounted"))


def _mode_string(e: chunked.Entry) -> str:
    kind = {"dir": "d", "symlink": "l", "char": "c", "block": "b", "fifo": "p",
            "hardlink": "h"}.get(e.type, "-")
    return kind + stat.filemode(e.mode & 0o7777)[1:]


def _entry_line(e: chunked.Entry, extra: str) -> str:
    target = f" -> {e.linkname}" if e.linkname else ""
    size = f"{e.dev_major},{e.dev_minor}" if e.type in ("char", "block") else str(e.size)
    return (f"{_mode_string(e)} {e.uid:>5}:{e.gid:<5} {size:>12} {extra:>4} "
            f"{e.mtime_text():<30} {e.path}{target}")


def _inspect_image(args: argparse.Namespace) -> int:
    with _open(args) as image:
        _warn_unchecked(image, args.blob)
        if args.json:
            # streamed: a TOC of millions of entries is never held as one document
            out = sys.stdout
            layers = [{"digest": il.descriptor.digest, "format": il.format,
                       "entries": len(il)} for il in image.layers]
            out.write('{"layers": ' + json.dumps(layers) + ',\n "entries": [')
            for n, e in enumerate(image.walk()):
                extra = f',"path":{json.dumps(e.path)},"layer":{e.layer}}}'
                out.write((",\n  " if n else "\n  ") + e.toc_json()[:-1] + extra)
            out.write("\n]}\n")
            return 0
        entries = sorted(image.walk(), key=lambda e: e.path)
        print(f"layers: {len(image.layers)}   paths: {len(entries)}   (layer column: "
              "the layer a path comes from, 0 = bottom)")
        for e in entries:
            print(_entry_line(e, str(e.layer)))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if _is_image_ref(args.blob):
        return _inspect_image(args)
    with _open(args) as image:
        (layer,) = image.layers
        if args.json:
            out = sys.stdout
            out.write(f'{{"format": {json.dumps(layer.format)},\n'
                      f' "tocChecksum": {json.dumps(layer.toc_checksum)},\n'
                      f' "tarSplitDigest": {json.dumps(layer.tarsplit_digest)},\n'
                      f' "tarSplitChecked": {json.dumps(layer.tarsplit_checked)},\n'
                      ' "entries": [')
            for n, e in enumerate(layer.entries()):
                out.write((",\n  " if n else "\n  ") + e.toc_json())
            out.write("\n]}\n")
            return 0
        print(f"format: {layer.format}   entries: {len(layer)}   "
              f"TOC verified against annotation: {'yes' if layer.toc_checksum else 'no'}   "
              f"against the tar-split: {'yes' if layer.tarsplit_checked else 'no'}")
        for e in layer.entries():
            print(_entry_line(e, str(e.chunks) if e.type == "reg" and e.size else ""))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    is_image = _is_image_ref(args.blob)
    # one display for every layer's bar: rich allows one live display at a time
    with progress_bars(enabled=not args.quiet) as add:
        def bar(i: int, total: int) -> Callable[[int], None] | None:
            return add(f"layer {i}" if is_image else "verifying", total) if add else None

        report = chunked.verify(args.blob, descriptor=args.descriptor, progress=bar,
                                **_registry(args))
    if is_image:
        results = [{"digest": r.digest, "files": r.files, "chunks": r.chunks,
                    "bytes": r.bytes, "diffID": r.diff_id,
                    "tarSplitChecked": r.tarsplit_checked} for r in report.layers]
        return _report(args, {"layers": results}, lambda: "\n".join(
            f"ok: layer {i} {r['digest']}: {r['files']} files, {r['chunks']} chunks "
            "verified; TOC matches the layer's tar; diffID matches the config"
            for i, r in enumerate(results)))
    (r,) = report.layers
    doc = {"blob": args.blob, "format": r.format, "tocChecksum": r.toc_checksum,
           "tarSplitChecked": r.tarsplit_checked, "files": r.files, "chunks": r.chunks,
           "bytes": r.bytes, "diffID": r.diff_id}
    toc = (f"TOC matches {r.toc_checksum}" if r.toc_checksum
           else "TOC read from the footer (no descriptor given to check it against)")
    ts = "tar-split matches the TOC and the data" if r.tarsplit_checked else "no tar-split"
    return _report(args, doc, lambda: (
        f"ok: {r.files} files, {r.chunks} chunks, {r.bytes} bytes verified; {toc}; "
        f"the TOC matches the layer's tar; {ts}; diffID {r.diff_id}"))


def cmd_cat(args: argparse.Namespace) -> int:
    with _open(args, require_tarsplit=args.require_tarsplit) as image:
        _warn_unchecked(image, args.blob)
        out = sys.stdout.buffer
        image.copy(args.path, out)
        out.flush()
    return 0


def _serving(args: argparse.Namespace) -> dict[str, Any]:
    return {"cache": args.cache, "cache_size": args.cache_size << 20,
            "prefetch": args.prefetch, "foreground": args.foreground, **_registry(args)}


def _mounted(m: chunked.Mounted | None) -> int:
    if m is not None:
        for line in m.warnings:
            _warn(line)
        print(f"mounted at {m.mountpoint} (pid {m.pid}, log {m.log})")
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    return _mounted(chunked.mount(args.blob, args.mountpoint,
                                  require_tarsplit=args.require_tarsplit, **_serving(args)))


def cmd_store(args: argparse.Namespace) -> int:
    return _mounted(chunked.mount_store(args.mountpoint, **_serving(args)))


def cmd_convert(args: argparse.Namespace) -> int:
    with progress_bars(enabled=not args.quiet) as bar:
        s = chunked.convert(args.source, args.dest, add_compression=args.add_compression,
                            platform=args.platform, level=args.level, format=args.format,
                            cache=args.cache, progress=bar, **_registry(args, platform=False))
    return _report(args, s.as_dict(), lambda: (
        f"converted {args.source} into {args.dest} ({s.digest}) in {s.seconds:.2f} s: "
        f"{s.layers_converted} layers converted, {s.layers_reused} reused, {s.layers_kept} "
        f"already zstd:chunked; {s.bytes_read} bytes read, {s.bytes_written} written"))


def cmd_pull(args: argparse.Namespace) -> int:
    # the total comes from the pull itself, which knows the merged tree
    with progress_bar("pulling", None, enabled=not args.quiet) as advance:
        s = chunked.pull(args.blob, args.dest, cache=args.cache, hardlink=args.hardlink,
                         require_tarsplit=args.require_tarsplit, progress=advance,
                         **_registry(args))
    _report(args, s.as_dict(), lambda: (
        f"pulled into {args.dest} in {s.seconds:.2f} s: {s.bytes_fetched} bytes fetched, "
        f"{s.bytes_reused} reused locally; {s.files_fetched} files fetched, "
        f"{s.files_reused} reused"))
    for name in s.skipped:
        print(f"chunked: skipped {name!r} (devices need root)", file=sys.stderr)
    return 0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cmd_cache(args: argparse.Namespace) -> int:
    if args.action == "show":
        st = chunked.cache_stats(args.cache)
        return _report(args, st, lambda: (
            f"{st['root']}: {st['entries']} entries, {_human(int(st['bytes']))} "
            f"(limit {_human(int(st['limit']))})"))
    if args.max_size < 0:
        raise InputError(f"--max-size must not be negative, not {args.max_size}")
    d = chunked.prune_cache(args.cache, args.max_size << 20)
    return _report(args, d, lambda: (
        f"{d['root']}: removed {d['removed']} files, freed {_human(d['freed'])}, "
        f"dropped {d['pullRecordsRemoved']} records of deleted pulls; "
        f"{d['entries']} entries, {_human(int(d['bytes']))} left"))


def cmd_stats(args: argparse.Namespace) -> int:
    stats = chunked.stats(args.mountpoint)
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
    chunked.umount(args.mountpoint)
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
    p.add_argument("--cache", default=chunked.default_cache(), metavar="DIR",
                   help="shared on-disk cache of verified chunks "
                   f"(default {chunked.default_cache()})")
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
    b.add_argument("--format", choices=FORMATS, default="current",
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
    ca.add_argument("--cache", default=chunked.default_cache(), metavar="DIR")
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
    cv.add_argument("--format", choices=FORMATS, default="current",
                    help="current (containers/storage >= 1.54) or old (1.43, podman 4.3)")
    _registry_options(cv, platform=False)
    cv.add_argument("--cache", default=chunked.default_cache(), metavar="DIR",
                    help="where the record of converted layers is kept (default "
                    f"{chunked.default_cache()})")
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
            c.add_argument("--cache", default=chunked.default_cache(), metavar="DIR",
                           help="local store: the mount's verified chunks and the record of "
                           f"earlier pulls (default {chunked.default_cache()})")
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
    if getattr(args, "level", None) is not None and not 1 <= args.level <= MAX_LEVEL:
        print(f"chunked: error: --level must be between 1 and {MAX_LEVEL}", file=sys.stderr)
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
