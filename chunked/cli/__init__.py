"""The ``chunked`` command line: argument parsing and printing over the library."""

from chunked.cli.main import main

__all__ = ["main"]
