"""Read-only FUSE filesystem over zstd:chunked images (see issue 3)."""
