"""The gpt-oss `browser` tool (`search`, `open`, `find`) over plain HTTP(S) with httpx.

Pages are shown the way OpenAI's reference browser shows them, because that is what gpt-oss
learned: a cursor in brackets, a title line, a "viewing lines" bar, then numbered lines
(``L12: ...``), with links written as ``【id†text】`` (``【id†text†domain】`` for other sites).
Every display gets the next cursor, so the model can cite ``【cursor†L3-L5】``, scroll with
`open` without `id`, and follow link ids of any earlier display.

`search` needs a search endpoint (`search_url`, a URL template with ``{query}``); there is no
default, because every public engine needs a key or forbids scripts. A SearxNG instance with
``format=json`` works well; an HTML result page works too (its links become the results).
Without one, `search` is left out of the declaration and refused when called.

By default only public addresses are opened: a URL whose host is (or resolves to) a loopback,
private, link-local or reserved address is refused, redirects included. The check sits in the
socket layer: each connection resolves its host once, checks every address, and connects to
the checked address (TLS still verifies the original name), so a name that resolves
differently a moment later (DNS rebinding) cannot reach a local service. Every redirect hop
opens its own connection and is checked the same way. Proxies from the environment are not
used, since a proxy would connect on its own.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload
from urllib.parse import quote_plus, urlsplit

import httpcore
import httpx
from openai_harmony import ToolNamespaceConfig

from ._html import extract_html, get_domain
from .base import ToolDeclarations, ToolResult

__all__ = ["BrowserError", "BrowserTool", "Link", "Page", "Resolver", "system_resolver"]

Resolver = Callable[[str, int], Sequence[str]]
"""Host name and port to IP address strings (`system_resolver` asks the system)."""


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `getaddrinfo` gives for `host` (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_USER_AGENT = "Mozilla/5.0 (compatible; mlx-harmony-browser/0.1)"
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


class BrowserError(Exception):
    """A browser call that cannot be done; the message goes back to the model."""


@dataclass(frozen=True)
class Link:
    """A link target; `line` is where to open (find results, search snippets)."""

    url: str
    line: int | None = None


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    lines: tuple[str, ...]
    links: Mapping[int, Link] = field(default_factory=dict)
    kind: str = "page"  # "page", "search", "find" or "source"


def _wrap(text: str, width: int) -> tuple[str, ...]:
    out: list[str] = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
        else:
            out.extend(textwrap.wrap(line, width, break_on_hyphens=False) or [""])
    return tuple(out)


class BrowserTool:
    """State (the page stack) lives here; `reset()` forgets it for a new conversation."""

    def __init__(
        self,
        *,
        search_url: str | None = None,
        timeout_s: float = 15.0,
        max_bytes: int = 2_000_000,
        view_lines: int = 50,
        line_width: int = 80,
        max_search_results: int = 10,
        allow_private: bool = False,
        user_agent: str = _USER_AGENT,
        resolver: Resolver = system_resolver,
        network_backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        """`resolver` and `network_backend` (the sockets under the address check) exist for
        tests and unusual networks; the defaults are the system's."""
        if search_url is not None and "{query}" not in search_url:
            raise ValueError(
                f"search_url must contain '{{query}}' where the query goes, got {search_url!r}"
            )
        if view_lines < 1:
            raise ValueError(f"view_lines must be >= 1, got {view_lines}")
        self.search_url = search_url
        self.max_bytes = max_bytes
        self.view_lines = view_lines
        self.line_width = line_width
        self.max_search_results = max_search_results
        self.allow_private = allow_private
        backend = _CheckedBackend(
            resolver, allow_private=allow_private, inner=network_backend or httpcore.SyncBackend()
        )
        self._client = httpx.Client(
            transport=_CheckedTransport(backend),
            timeout=timeout_s,
            follow_redirects=True,
            max_redirects=5,
            headers={"User-Agent": user_agent},
            trust_env=False,  # a proxy would connect to the name itself, unchecked
        )
        self.stack: list[Page] = []
        self._cache: dict[str, Page] = {}

    # -- tool protocol ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return "browser"

    def handles(self, recipient: str) -> bool:
        return recipient == "browser" or recipient.startswith("browser.")

    def declarations(self) -> ToolDeclarations:
        config = ToolNamespaceConfig.browser()
        if self.search_url is None:
            config = ToolNamespaceConfig(
                name=config.name,
                description=(config.description or "")
                + "\nThere is no search: open URLs directly with `open`.",
                tools=[tool for tool in config.tools if tool.name != "search"],
            )
        return ToolDeclarations(system=(config,))

    def execute(self, recipient: str, arguments: str) -> ToolResult:
        function = recipient.partition(".")[2]
        try:
            args = _parse_arguments(arguments)
            if function == "search":
                text = self.search(
                    _arg(args, "query", str, required=True),
                    topn=_arg(args, "topn", int, default=self.max_search_results),
                )
            elif function == "open":
                text = self.open(
                    args.get("id", -1),
                    cursor=_arg(args, "cursor", int, default=-1),
                    loc=_arg(args, "loc", int, default=-1),
                    num_lines=_arg(args, "num_lines", int, default=-1),
                    view_source=_arg(args, "view_source", bool, default=False),
                )
            elif function == "find":
                text = self.find(
                    _arg(args, "pattern", str, required=True),
                    cursor=_arg(args, "cursor", int, default=-1),
                )
            else:
                raise BrowserError(
                    f"unknown browser function {function!r}; use browser.search, browser.open "
                    "or browser.find"
                )
        except BrowserError as error:
            return ToolResult(name=recipient, content=str(error), error=True)
        return ToolResult(name=recipient, content=text)

    def reset(self) -> None:
        self.stack.clear()
        self._cache.clear()

    def close(self) -> None:
        self._client.close()

    # -- the three functions ----------------------------------------------------------------
    def search(self, query: str, *, topn: int = 10) -> str:
        if self.search_url is None:
            raise BrowserError(
                "search is off: no search endpoint is configured. Open URLs directly with "
                "browser.open (the user can set a search URL template to turn search on)."
            )
        topn = max(1, min(topn, self.max_search_results))
        url = self.search_url.replace("{query}", quote_plus(query)).replace("{topn}", str(topn))
        body, content_type, final_url = self._fetch(url)
        title = f"Search results for `{query}`"
        if "json" in content_type:
            page = self._search_page_from_json(body, final_url, title, topn)
        else:
            page = self._make_page(body, content_type, final_url)
            page = Page(final_url, title, page.lines, page.links, kind="search")
        return self._show(page, loc=0, num_lines=-1)

    def open(
        self,
        id: int | str = -1,
        *,
        cursor: int = -1,
        loc: int = -1,
        num_lines: int = -1,
        view_source: bool = False,
    ) -> str:
        if isinstance(id, str) and id.strip().lstrip("-").isdigit():
            id = int(id)
        if isinstance(id, float) and id.is_integer():
            id = int(id)
        if isinstance(id, str):
            page = self._load(id.strip(), view_source=view_source, refresh=True)
            return self._show(page, loc=max(loc, 0), num_lines=num_lines)
        if not isinstance(id, int) or isinstance(id, bool):
            raise BrowserError(f"`id` must be a link id (a number) or a URL, got {id!r}")
        current = self._page(cursor)
        if id < 0:  # scroll the page at `cursor`
            if view_source and current.kind != "source":
                current = self._load(current.url, view_source=True, refresh=False)
            return self._show(current, loc=max(loc, 0), num_lines=num_lines)
        link = current.links.get(id)
        if link is None:
            known = f"0-{max(current.links)}" if current.links else "none"
            raise BrowserError(
                f"invalid link id `{id}` for cursor {self._cursor_of(cursor)} (its links: {known})"
            )
        page = self._load(link.url, view_source=view_source, refresh=False)
        if loc < 0 and link.line is not None:
            loc = link.line - 4 if link.line > 4 else 0
        return self._show(page, loc=max(loc, 0), num_lines=num_lines)

    def find(self, pattern: str, *, cursor: int = -1) -> str:
        page = self._page(cursor)
        if page.kind in ("search", "find"):
            raise BrowserError(
                "cannot run `find` on a search or find results page; open a result first"
            )
        needle = pattern.lower()
        if not needle:
            raise BrowserError("`pattern` is empty; give the text to look for")
        chunks: list[str] = []
        links: dict[int, Link] = {}
        index = 0
        plain = [_strip_links(line) for line in page.lines]
        while index < len(plain) and len(chunks) < 50:
            if needle in plain[index].lower():
                match = len(chunks)
                snippet = "\n".join(plain[index : index + 4])
                chunks.append(f"# 【{match}†match at L{index}】\n{snippet}")
                links[match] = Link(page.url, line=index)
                index += 4
            else:
                index += 1
        text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
        result = Page(
            url=f"{page.url}/find?pattern={quote_plus(pattern)}",
            title=f"Find results for text: `{pattern}` in `{page.title}`",
            lines=_wrap(text, self.line_width),
            links=links,
            kind="find",
        )
        return self._show(result, loc=0, num_lines=-1)

    # -- display ----------------------------------------------------------------------------
    def _show(self, page: Page, *, loc: int, num_lines: int) -> str:
        total = len(page.lines)
        if total and loc >= total:
            raise BrowserError(f"invalid location `{loc}`: the page has lines 0-{total - 1}")
        count = self.view_lines if num_lines <= 0 else num_lines
        end = min(loc + count, total)
        self.stack.append(page)
        cursor = len(self.stack) - 1
        body = "\n".join(f"L{i}: {page.lines[i]}" for i in range(loc, end))
        header = page.title + (f" ({page.url})" if page.url else "")
        bar = f"viewing lines [{loc} - {max(end - 1, loc)}] of {max(total - 1, 0)}"
        return f"[{cursor}] {header}\n**{bar}**\n\n{body}"

    def _cursor_of(self, cursor: int) -> int:
        return len(self.stack) - 1 if cursor < 0 else cursor

    def _page(self, cursor: int) -> Page:
        if not self.stack:
            raise BrowserError("no page is open yet; use browser.open with a URL first")
        if cursor < 0:
            return self.stack[-1]
        if cursor >= len(self.stack):
            raise BrowserError(
                f"cursor `{cursor}` is out of range; valid cursors are 0-{len(self.stack) - 1}"
            )
        return self.stack[cursor]

    # -- fetching ---------------------------------------------------------------------------
    def _load(self, url: str, *, view_source: bool, refresh: bool) -> Page:
        key = ("view-source:" if view_source else "") + url
        if not refresh and key in self._cache:
            return self._cache[key]
        body, content_type, final_url = self._fetch(url)
        if view_source:
            text = body.decode("utf-8", errors="replace")
            page = Page(
                f"view-source:{final_url}", final_url, _wrap(text, self.line_width), {}, "source"
            )
        else:
            page = self._make_page(body, content_type, final_url)
        self._cache[key] = page
        return page

    def _make_page(self, body: bytes, content_type: str, url: str) -> Page:
        text = _decode(body, content_type)
        if content_type.startswith(_HTML_TYPES) or (
            not content_type and "<html" in text[:2000].lower()
        ):
            extracted = extract_html(text, url)
            links = {i: Link(link) for i, link in enumerate(extracted.links)}
            title = extracted.title or get_domain(url) or url
            return Page(url, title, _wrap(extracted.text, self.line_width), links)
        return Page(url, get_domain(url) or url, _wrap(text, self.line_width), {})

    def _search_page_from_json(self, body: bytes, url: str, title: str, topn: int) -> Page:
        try:
            data = json.loads(body)
        except json.JSONDecodeError as error:
            raise BrowserError(f"the search endpoint sent invalid JSON ({error})") from None
        results = data.get("results") if isinstance(data, dict) else data
        if not isinstance(results, list):
            raise BrowserError("the search endpoint's JSON has no `results` list")
        lines: list[str] = []
        links: dict[int, Link] = {}
        for item in results:
            if len(links) >= topn:
                break
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                continue
            link_id = len(links)
            links[link_id] = Link(item["url"])
            name = str(item.get("title") or item["url"]).replace("†", "‡")
            lines.append(f"# 【{link_id}†{name}†{get_domain(item['url'])}】")
            snippet = str(item.get("content") or item.get("snippet") or "").strip()
            if snippet:
                lines.extend(_wrap(snippet, self.line_width))
            lines.append("")
        if not links:
            lines = ["No results."]
        return Page(url, title, tuple(lines), links, kind="search")

    def _fetch(self, url: str) -> tuple[bytes, str, str]:
        """Body (cut at `max_bytes`), lower-case content type and final URL."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise BrowserError(f"only http and https URLs can be opened, got {url!r}")
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise BrowserError(
                        f"HTTP {response.status_code} {response.reason_phrase} for {url}"
                    )
                content_type = response.headers.get("content-type", "").lower()
                if content_type and not content_type.startswith(_TEXT_TYPES):
                    raise BrowserError(
                        f"cannot show {url}: its content type is {content_type}, not text"
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk[: self.max_bytes - size])
                    size += len(chunks[-1])
                    if size >= self.max_bytes:
                        break
                charset = response.charset_encoding
                final_url = str(response.url)
        except httpx.HTTPError as error:
            raise BrowserError(
                f"could not fetch {url}: {error.__class__.__name__}: {error}"
            ) from None
        if charset and "charset=" not in content_type:
            content_type += f"; charset={charset}"
        return b"".join(chunks), content_type, final_url


class _CheckedBackend(httpcore.NetworkBackend):
    """Resolves once, checks every address, and connects to a checked address (the pin)."""

    def __init__(
        self, resolver: Resolver, *, allow_private: bool, inner: httpcore.NetworkBackend
    ) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._inner = inner

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to try for `host`; `httpcore.ConnectError` when any is refused."""
        try:
            found = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            try:
                found = list(self._resolver(host, port))
            except OSError as error:
                raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from None
            if not found:
                raise httpcore.ConnectError(f"cannot resolve {host}: no addresses") from None
        if not self._allow_private:
            for text in found:
                address = ipaddress.ip_address(text)
                if not address.is_global or address.is_multicast:
                    raise httpcore.ConnectError(
                        f"refused: {host} is a local or private address ({address}); "
                        "the browser opens public addresses only"
                    )
        return found

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        error: httpcore.ConnectError | None = None
        for address in self.addresses(host, port):
            try:
                return self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as failed:
                error = failed
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("the browser does not open Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _CheckedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool that connects through `_CheckedBackend`."""

    def __init__(self, backend: _CheckedBackend) -> None:
        super().__init__()
        # httpx offers no network_backend argument; its pool is rebuilt with ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=10,
            max_keepalive_connections=5,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


def _decode(body: bytes, content_type: str) -> str:
    charset = "utf-8"
    if "charset=" in content_type:
        charset = content_type.split("charset=", 1)[1].split(";")[0].strip().strip('"')
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _strip_links(line: str) -> str:
    """`【3†text†domain】` -> `text`, for `find`."""
    out = []
    rest = line
    while (start := rest.find("【")) >= 0 and (end := rest.find("】", start)) >= 0:
        out.append(rest[:start])
        parts = rest[start + 1 : end].split("†")
        out.append(parts[1] if len(parts) > 1 else parts[0])
        rest = rest[end + 1 :]
    out.append(rest)
    return "".join(out)


def _parse_arguments(arguments: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as error:
        raise BrowserError(
            f'arguments must be a JSON object, e.g. {{"query": "..."}} ({error})'
        ) from None
    if not isinstance(value, dict):
        raise BrowserError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


_T = TypeVar("_T")


def _integral(value: object) -> object:
    """An integral float or digit text as the int it names; anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


@overload
def _arg(args: Mapping[str, Any], name: str, kind: type[_T], *, required: Literal[True]) -> _T: ...
@overload
def _arg(args: Mapping[str, Any], name: str, kind: type[_T], *, default: _T) -> _T: ...
def _arg(
    args: Mapping[str, Any],
    name: str,
    kind: type[_T],
    *,
    default: _T | None = None,
    required: bool = False,
) -> _T | None:
    """Argument `name` of JSON ``args`` as a `kind` (an integral float or digit text counts as
    an int); `default` when absent or null, a `BrowserError` when `required` and absent."""
    if name not in args or args[name] is None:
        if required:
            raise BrowserError(f"`{name}` is required")
        return default
    value = _integral(args[name]) if kind is int else args[name]
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise BrowserError(f"`{name}` must be a {kind.__name__}, got {value!r}")
