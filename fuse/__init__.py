"""Read-only FUSE filesystem over zstd:chunked images (see issue 3), installed as
``chunked.fuse``."""

if __name__ == "fuse":
    # `fuse` is fusepy's (and python-fuse's) module name: this folder must never answer
    # to it, even from a checkout's root where the folder is on sys.path.
    raise ImportError("this is chunked.fuse, not a module named 'fuse'", name="fuse")
