"""Markup to prose: reStructuredText, Markdown and HTML documentation turned into plain paragraphs.

Used by :mod:`datamodules.pypi_docs` to build a corpus from projects' documentation. Each function
returns paragraphs (one string each, whitespace normalised) with code, tables, directives that hold no
prose, link targets and markup removed; what reads as code is dropped by the same heuristic as the
embedded corpus (:func:`datamodules.corpus.clean_docstring`), and :func:`is_prose` keeps paragraphs
that read as English sentences.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from datamodules.corpus import clean_docstring

__all__ = ["html_paragraphs", "inline_text", "is_prose", "markdown_paragraphs", "rst_paragraphs"]

# Directives whose body is prose (kept, dedented); every other directive's body (code, tables, math,
# images, toctrees, autodoc, plots, includes) is dropped with it.
_PROSE_DIRECTIVES = frozenset(
    "admonition attention caution danger deprecated epigraph error hint important note rubric seealso sidebar "
    "tip topic versionadded versionchanged versionremoved warning container".split()
)
_DIRECTIVE_RE = re.compile(r"^(\s*)\.\.\s+([A-Za-z][\w:-]*)::\s*(.*)$")
_COMMENT_RE = re.compile(r"^(\s*)\.\.(\s|$)")  # comments, targets (.. _x:), footnotes, substitutions
_TABLE_RE = re.compile(r"^\s*(\+[-=+]{3,}|\|.*\|\s*$|={3,}(\s+={3,})+\s*$|-{3,}(\s+-{3,})+\s*$)")
_FIELD_RE = re.compile(r"^\s*:[\w ]+:\s*$")  # a bare field marker (":orphan:", ":Author:")

# Inline markup, in the order applied.
_ROLE_RE = re.compile(r":[\w:+-]+:`(~?)([^`<]*?)\s*(?:<[^`>]*>)?`")
_LINK_RE = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
_REF_RE = re.compile(r"`([^`]+)`__?")
_LITERAL_RE = re.compile(r"``([^`]+)``")
_EMPH_RE = re.compile(r"(?<![\w*])\*{1,2}([^*\s][^*]*?)\*{1,2}(?![\w*])")
_FOOTNOTE_RE = re.compile(r"\s?\[(?:#\w*|\*|\d+)\]_")
_SUBST_RE = re.compile(r"\|[\w -]+\|_?")
# Markdown.
_MD_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_CODE_RE = re.compile(r"`([^`]+)`")
_URL_RE = re.compile(r"https?://\S+")

# Frequent English function words: prose is full of them, identifiers and lists of names are not.
_FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for from with as is are was be been it its this that these those and or but not "
    "if then than when which who can may must will should would there they we you do does has have".split()
)


def _role_text(match: re.Match) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    return target.rsplit(".", 1)[-1] if tilde else target


def _inline(text: str) -> str:
    text = _ROLE_RE.sub(_role_text, text)
    text = _LINK_RE.sub(r"\1", text)
    text = _LITERAL_RE.sub(r"\1", text)
    text = _REF_RE.sub(r"\1", text)
    text = _FOOTNOTE_RE.sub("", text)
    text = _SUBST_RE.sub("", text)
    text = _EMPH_RE.sub(r"\1", text)
    return _URL_RE.sub("", text)


def inline_text(paragraph: str) -> str:
    """A paragraph without inline reST (roles, literals, links, emphasis) or Markdown (code spans, links,
    bold), as it reads when rendered; whitespace normalised."""
    text = _MD_LINK_RE.sub(r"\1", _inline(paragraph))
    return " ".join(_MD_CODE_RE.sub(r"\1", text).replace("**", "").split())


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _drop_rst_blocks(lines: list[str]) -> list[str]:
    """Remove directives without prose (and their indented bodies), comments, targets and tables; keep the
    bodies of prose directives (notes, warnings, version notes) as ordinary paragraphs."""
    out: list[str] = []
    skip_deeper_than: int | None = None
    for line in lines:
        if skip_deeper_than is not None:
            if not line.strip() or _indent(line) > skip_deeper_than:
                continue
            skip_deeper_than = None
        directive = _DIRECTIVE_RE.match(line)
        if directive:
            indent, name, argument = directive.groups()
            if name.lower() in _PROSE_DIRECTIVES:
                out += ["", indent + argument] if argument and name.lower() != "container" else [""]
            else:
                skip_deeper_than = len(indent)
            continue
        if _COMMENT_RE.match(line) and not line.strip().startswith("..."):
            skip_deeper_than = _indent(line)
            continue
        if _TABLE_RE.match(line) or _FIELD_RE.match(line):
            out.append("")  # a table row or a bare field ends the paragraph it is in and is not kept
            continue
        out.append(line)
    return out


def _dedent_prose(lines: list[str]) -> list[str]:
    """Bodies of notes and list items are indented; de-indent lines that do not follow a ``::``
    paragraph, so the code heuristic (indented + code-like) judges them as prose. Literal blocks stay
    indented and are dropped by :func:`clean_docstring`."""
    out: list[str] = []
    literal_at: int | None = None
    previous = ""
    for line in lines:
        if not line.strip():
            out.append("")
            continue
        if literal_at is not None and _indent(line) > literal_at:
            out.append(line)
            continue
        literal_at = None
        if previous.rstrip().endswith("::") and not out[-1].strip():
            literal_at = _indent(previous)
            out.append(line)
            continue
        stripped = line.strip()
        out.append(stripped)
        previous = stripped
        if stripped.endswith("::"):
            previous = line
    return out


def rst_paragraphs(text: str) -> list[str]:
    """Paragraphs of prose in a reStructuredText document (also Sphinx ``.txt`` sources)."""
    lines = _drop_rst_blocks(text.expandtabs(4).splitlines())
    body = clean_docstring("\n".join(_dedent_prose(lines)))
    return [p for p in (" ".join(_inline(par).split()) for par in body.split("\n\n")) if p]


def markdown_paragraphs(text: str) -> list[str]:
    """Paragraphs of prose in a Markdown document: fenced code, tables, HTML and headings' marks removed."""
    lines: list[str] = []
    fenced = False
    for line in text.expandtabs(4).splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            lines.append("")
            continue
        if fenced or line.lstrip().startswith(("|", "<")) or re.match(r"^\s*[-:| ]{3,}\s*$", line):
            lines.append("")
            continue
        line = re.sub(r"^\s*#{1,6}\s+", "", line)
        lines.append(line if line.startswith("    ") else line.lstrip())
    body = clean_docstring("\n".join(lines))
    paragraphs = []
    for par in body.split("\n\n"):
        par = _MD_CODE_RE.sub(r"\1", _MD_LINK_RE.sub(r"\1", par))
        paragraphs.append(" ".join(_URL_RE.sub("", par.replace("**", "")).split()))
    return [p for p in paragraphs if p]


class _HtmlText(HTMLParser):
    _BLOCKS = frozenset("p div li ul ol br note important h1 h2 h3 h4 h5 h6 dt dd dl table tr pre examples".split())
    _DROPPED = frozenset({"pre", "table", "script", "style", "examples"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.dropping = 0

    def handle_starttag(self, tag, attrs) -> None:
        if tag in self._DROPPED:
            self.dropping += 1
        if tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag) -> None:
        if tag in self._DROPPED and self.dropping:
            self.dropping -= 1
        if tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data) -> None:
        if not self.dropping:
            self.parts.append(data)


def html_paragraphs(text: str) -> list[str]:
    """Paragraphs of prose in an HTML fragment (API reference strings): block tags end paragraphs,
    ``pre``/``table``/``examples`` are dropped, inline tags keep their text."""
    if "<" not in text:
        return [p for p in (" ".join(html.unescape(par).split()) for par in text.split("\n\n")) if p]
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return [p for p in (" ".join(par.split()) for par in "".join(parser.parts).split("\n\n")) if p]


def is_prose(paragraph: str, min_words: int = 6) -> bool:
    """Whether a paragraph reads as English prose: at least ``min_words`` words, mostly letters, and English
    function words among them (lists of names, signatures, numbers and tables have none)."""
    tokens = paragraph.split()
    words = [t for t in tokens if any(ch.isalpha() for ch in t)]
    if len(words) < min_words or not paragraph.isascii() and _ascii_share(paragraph) < 0.95:
        return False
    letters = sum(ch.isalpha() for ch in paragraph)
    if letters < 0.6 * sum(not ch.isspace() for ch in paragraph):
        return False
    function_words = sum(1 for t in tokens if t.strip(",.;:()\"'").lower() in _FUNCTION_WORDS)
    return function_words >= max(1, 0.08 * len(tokens))


def _ascii_share(text: str) -> float:
    return sum(ch.isascii() for ch in text) / max(1, len(text))
