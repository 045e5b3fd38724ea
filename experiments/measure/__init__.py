"""The measuring tools: ``isoflop bench`` (a training step against the plain loop) and the studies
behind the documentation's tables (``python -m experiments.measure.<name>``)."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from datamodules.cache import write_atomic


def write_rows(path: str | Path, columns: list[str], rows) -> None:
    """A study's rows as a CSV file, written whole and renamed into place: rewritten after every run, so a
    long study keeps what it measured."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def run_study(study, prog: str, doc: str, argv: list[str] | None) -> int:
    """A study's command line: its function's typed arguments are the options, parsed as every isoflop
    command is (:func:`experiments.config.parse_args`); a mistake in them is one line and exit code 2."""
    from experiments.config import new_parser, parse_args
    from experiments.errors import UsageError, say

    parser = new_parser(prog, doc.split("\n\n")[0])
    parser.add_function_arguments(study, as_group=False)
    try:
        return study(**parse_args(parser, list(argv) if argv is not None else sys.argv[1:]).as_dict())
    except UsageError as err:
        say(f"{prog}: error: {err}")
        return 2
