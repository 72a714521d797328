"""The ``tcm`` command line (``tcm --help``; also ``python -m tcm.cli``)."""

from tcm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
