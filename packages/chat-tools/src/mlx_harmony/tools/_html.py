"""HTML to the browser tool's text: readable lines, links as `【id†text】` markers.

Standard library only (html.parser): good enough for the text of ordinary pages, and no
dependency for a feature that is off by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

__all__ = ["ExtractedPage", "extract_html"]

_SKIP = frozenset(
    {"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "select"}
)
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "header", "main", "nav", "ol",
        "p", "section", "summary", "table", "tbody", "thead", "tfoot", "tr", "ul", "caption",
    }
)  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "wbr"})
_SPACE_RE = re.compile(r"\s+")
# Brackets that would look like our link markers are swapped for look-alikes.
_MARKER_CHARS = str.maketrans({"【": "〖", "】": "〗", "†": "‡"})


@dataclass(frozen=True)
class ExtractedPage:
    title: str
    text: str
    links: tuple[str, ...]  # link id -> absolute URL


def get_domain(url: str) -> str:
    return urlsplit(url).netloc


class _Extractor(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.domain = get_domain(base_url)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self.links: list[str] = []
        self.link_ids: dict[str, int] = {}
        self.skip_depth = 0
        self.in_title = False
        self.pre_depth = 0
        self.anchor: tuple[str | None, list[str]] | None = None  # (url, text parts)

    # -- output helpers ---------------------------------------------------------------------
    def _ends_with(self) -> str:
        for part in reversed(self.parts):
            if part:
                return part[-1]
        return "\n"

    def _emit(self, text: str) -> None:
        if self.anchor is not None:
            self.anchor[1].append(text)
            return
        if not text:
            return
        if self.pre_depth == 0 and self._ends_with() in " \n":
            text = text.lstrip(" ")
        if text:
            self.parts.append(text)

    def _break(self, count: int = 1) -> None:
        if self.anchor is not None:
            self.anchor[1].append(" ")
            return
        while self.parts and self.parts[-1].endswith(" "):
            self.parts[-1] = self.parts[-1].rstrip(" ")
        tail = "".join(self.parts[-3:])
        have = len(tail) - len(tail.rstrip("\n")) if self.parts else count
        if have < count:
            self.parts.append("\n" * (count - have))

    # -- parser callbacks -------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
            return
        if tag in _SKIP:
            if tag not in _VOID:
                self.skip_depth += 1
            return
        if self.skip_depth:
            return
        attr = dict(attrs)
        if tag in _HEADINGS:
            self._break(2)
            self._emit("#" * _HEADINGS[tag] + " ")
        elif tag == "li":
            self._break()
            self._emit("* ")
        elif tag in _BLOCK or tag == "br":
            self._break()
        elif tag == "hr":
            self._break()
            self._emit("---")
            self._break()
        elif tag == "pre":
            self._break()
            self.pre_depth += 1
        elif tag in ("td", "th"):
            self._emit(" ")
        elif tag == "img":
            alt = (attr.get("alt") or attr.get("title") or "").strip()
            if alt:
                self._emit(f"[Image: {_SPACE_RE.sub(' ', alt).translate(_MARKER_CHARS)}]")
        elif tag == "a":
            self.anchor = (attr.get("href"), [])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
            return
        if tag in _SKIP:
            if tag not in _VOID:
                self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag == "a" and self.anchor is not None:
            href, text_parts = self.anchor
            self.anchor = None
            self._emit_link(href, _SPACE_RE.sub(" ", "".join(text_parts)).strip())
        elif tag in _HEADINGS:
            self._break(2)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self._break()
        elif tag in _BLOCK or tag == "li":
            self._break()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title_parts.append(data)
            return
        if self.skip_depth:
            return
        data = data.translate(_MARKER_CHARS)
        if self.pre_depth:
            self._emit(data)
        else:
            self._emit(_SPACE_RE.sub(" ", data))

    def _emit_link(self, href: str | None, text: str) -> None:
        if not text:
            return
        if not href or href.startswith(("#", "javascript:", "mailto:", "tel:", "data:")):
            self._emit(text)
            return
        url = urljoin(self.base_url, href.strip())
        if urlsplit(url).scheme not in ("http", "https"):
            self._emit(text)
            return
        link_id = self.link_ids.get(url)
        if link_id is None:
            link_id = self.link_ids[url] = len(self.links)
            self.links.append(url)
        domain = get_domain(url)
        marker = (
            f"【{link_id}†{text}】" if domain == self.domain else f"【{link_id}†{text}†{domain}】"
        )
        self._emit(marker)


def extract_html(html: str, base_url: str) -> ExtractedPage:
    """Title, text (one paragraph per line, blank lines between blocks) and link URLs."""
    parser = _Extractor(base_url)
    parser.feed(html)
    parser.close()
    if parser.anchor is not None:  # an <a> never closed
        href, parts = parser.anchor
        parser.anchor = None
        parser._emit_link(href, _SPACE_RE.sub(" ", "".join(parts)).strip())
    lines = [line.rstrip() for line in "".join(parser.parts).split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    title = _SPACE_RE.sub(" ", "".join(parser.title_parts)).strip()
    return ExtractedPage(title=title, text="\n".join(out), links=tuple(parser.links))
