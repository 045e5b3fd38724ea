"""Tables read by their structure (rows and cells), for the tests that compare a document's table with what the
code computes: reStructuredText simple tables and list-tables (rtd/, docstrings) and Markdown pipe tables
(results.md, ladder.md). A table is found by its header row, never by the text around it or a line offset."""

from __future__ import annotations

import re

_BORDER = re.compile(r"^ *=+( +=+)* *$")


def _columns(border: str) -> list[int]:
    """Where each column of a simple table starts, from one of its ``=== ===`` border lines."""
    return [m.start() for m in re.finditer(r"=+", border)]


def _cells(line: str, starts: list[int]) -> list[str]:
    """A simple table's row, cut at the columns' starts (the last column runs to the end of the line)."""
    ends = starts[1:] + [len(line)]
    return [line[a:b].strip() for a, b in zip(starts, ends)]


def simple_tables(text: str) -> list[tuple[list[str] | None, list[list[str]]]]:
    """Every reStructuredText simple table of ``text`` as (header row or None, body rows), each row a list of
    cells. A table is a top border, rows (one line each), an optional border under the header, and a bottom
    border, the borders' column runs all alike."""
    lines = text.splitlines()
    tables, i = [], 0
    while i < len(lines):
        if not _BORDER.match(lines[i]):
            i += 1
            continue
        starts, borders, rows, j = _columns(lines[i]), [], [], i + 1
        while j < len(lines) and lines[j].strip():
            if _BORDER.match(lines[j]) and _columns(lines[j]) == starts:
                borders.append(len(rows))
            else:
                rows.append(_cells(lines[j], starts))
            j += 1
        if borders and borders[-1] == len(rows) and rows:  # closed by a border after at least one row
            if len(borders) >= 2 and borders[0] > 0:
                tables.append((rows[0] if borders[0] == 1 else None, rows[borders[0]:]))
            else:
                tables.append((None, rows))
        i = j
    return tables


def simple_table(text: str, header: list[str]) -> list[list[str]]:
    """The body rows of the one simple table of ``text`` whose header row is ``header``."""
    matching = [rows for head, rows in simple_tables(text) if head == header]
    assert len(matching) == 1, f"{len(matching)} simple tables with the header {header}"
    return matching[0]


def list_tables(text: str) -> list[list[list[str]]]:
    """Every reStructuredText ``list-table`` of ``text``, as rows (the header row first when it has one) of
    cells: each row starts with ``* -``, each further cell with ``-`` under it."""
    tables, rows, inside = [], [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(".. list-table::"):
            rows, inside = [], True
            tables.append(rows)
        elif inside and stripped.startswith("* - "):
            rows.append([stripped[4:]])
        elif inside and stripped.startswith("- ") and rows:
            rows[-1].append(stripped[2:])
        elif inside and stripped and not stripped.startswith(":") and not line.startswith("   "):
            inside = False  # text after the table
    return tables


def list_table(text: str, header: list[str]) -> list[list[str]]:
    """The rows (lists of cells) under the header of the one ``list-table`` of ``text`` whose header row is
    ``header``."""
    matching = [t for t in list_tables(text) if t and t[0] == header]
    assert len(matching) == 1, f"{len(matching)} list-tables with the header {header}"
    return matching[0][1:]


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown pipe table of ``text`` as (header cells, body rows of cells)."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2 and all(set(c) <= set("-: ") for c in block[1]):
            tables.append((block[0], block[2:]))
        block = []
    return tables


def markdown_rows(text: str, first: str) -> list[dict[str, str]]:
    """The rows, as {column: cell}, of every Markdown table of ``text`` whose first header cell is ``first``."""
    return [dict(zip(head, row)) for head, rows in markdown_tables(text) if head and head[0] == first for row in rows]
