"""Build zstd:chunked container layers and read them lazily."""

__version__ = "0.1.0"
