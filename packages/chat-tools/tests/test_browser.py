import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest

from mlx_harmony.tools import BrowserTool, ToolRegistry
from mlx_harmony.tools._html import extract_html

LONG_PAGE = (
    "<html><head><title>Long page</title><style>p {color: red}</style>"
    "<script>var hidden = 'script text';</script></head><body>"
    "<h1>Heading</h1><p>Intro with a <a href='/other'>link to other</a> and an "
    "<a href='https://example.org/ext'>external one</a>.</p>"
    + "".join(f"<p>paragraph {i}</p>" for i in range(100))
    + "<p>The needle is here.</p></body></html>"
)
PAGES = {
    "/long": ("text/html; charset=utf-8", LONG_PAGE),
    "/other": (
        "text/html",
        "<html><title>Other</title><body><p>Other page, another needle.</p></body></html>",
    ),
    "/plain.txt": ("text/plain", "first line\nsecond line\n"),
    "/image.png": ("image/png", "\x89PNG"),
    "/big": ("text/plain", "word " * 20_000),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/other")
            self.end_headers()
            return
        if parts.path == "/search.json":
            query = parse_qs(parts.query)["q"][0]
            results = [
                {
                    "url": f"{self.server.base}/other",
                    "title": f"Other for {query}",
                    "content": "snippet one",
                },
                {"url": f"{self.server.base}/long", "title": "Long", "content": "snippet two"},
            ]
            self._send("application/json", json.dumps({"results": results}))
            return
        if parts.path not in PAGES:
            self.send_error(404)
            return
        self._send(*PAGES[parts.path])

    def _send(self, content_type: str, body: str) -> None:
        data = body.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.base = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.base  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(base: str) -> Iterator[BrowserTool]:
    tool = BrowserTool(
        allow_private=True, view_lines=10, search_url=f"{base}/search.json?q={{query}}"
    )
    yield tool
    tool.close()


def call(tool: BrowserTool, function: str, **args: object) -> str:
    result = tool.execute(f"browser.{function}", json.dumps(args))
    assert not result.error, result.content
    assert result.name == f"browser.{function}"
    return result.content


def test_open_shows_numbered_lines_with_cursor_and_links(browser: BrowserTool, base: str) -> None:
    text = call(browser, "open", id=f"{base}/long")
    lines = text.splitlines()
    assert lines[0] == f"[0] Long page ({base}/long)"
    assert lines[1] == "**viewing lines [0 - 9] of 103**"
    assert lines[3] == "L0: # Heading"
    assert "L2: Intro with a 【0†link to other】 and an 【1†external one†example.org】." in lines
    assert lines[-1] == "L9: paragraph 6"
    assert "script text" not in text
    assert "color" not in text


def test_open_a_link_id_then_scroll_by_cursor(browser: BrowserTool, base: str) -> None:
    call(browser, "open", id=f"{base}/long")
    other = call(browser, "open", id=0)
    assert other.splitlines()[0] == f"[1] Other ({base}/other)"
    assert "L0: Other page, another needle." in other
    scrolled = call(browser, "open", cursor=0, loc=50, num_lines=3)
    assert scrolled.splitlines()[:2] == [
        f"[2] Long page ({base}/long)",
        "**viewing lines [50 - 52] of 103**",
    ]
    assert scrolled.splitlines()[3:] == [
        "L50: paragraph 47",
        "L51: paragraph 48",
        "L52: paragraph 49",
    ]


def test_find_lists_matches_that_open_at_their_line(browser: BrowserTool, base: str) -> None:
    call(browser, "open", id=f"{base}/long")
    found = call(browser, "find", pattern="NEEDLE")
    assert found.splitlines()[0].startswith("[1] Find results for text: `NEEDLE` in `Long page`")
    assert "L0: # 【0†match at L103】" in found
    assert "L1: The needle is here." in found
    opened = call(browser, "open", id=0)
    assert "**viewing lines [99 - 103] of 103**" in opened
    missing = call(browser, "find", pattern="absent words", cursor=0)
    assert "No `find` results for pattern: `absent words`" in missing


def test_search_through_a_json_endpoint(browser: BrowserTool, base: str) -> None:
    text = call(browser, "search", query="needle things")
    assert text.splitlines()[0] == "[0] Search results for `needle things` (" + (
        f"{base}/search.json?q=needle+things)"
    )
    assert f"L0: # 【0†Other for needle things†127.0.0.1:{base.rsplit(':', 1)[1]}】" in text
    assert "L1: snippet one" in text
    opened = call(browser, "open", id=1)
    assert opened.splitlines()[0] == f"[1] Long page ({base}/long)"


def test_search_is_off_without_an_endpoint(base: str) -> None:
    tool = BrowserTool(allow_private=True)
    result = tool.execute("browser.search", '{"query": "x"}')
    assert result.error
    assert "no search endpoint is configured" in result.content
    (namespace,) = tool.declarations().system
    assert [t.name for t in namespace.tools] == ["open", "find"]
    assert "There is no search" in (namespace.description or "")
    tool.close()
    searching = BrowserTool(search_url=f"{base}/s?q={{query}}")
    with_search = searching.declarations().system[0]
    searching.close()
    assert [t.name for t in with_search.tools] == ["search", "open", "find"]


def test_local_addresses_are_refused_unless_allowed(base: str) -> None:
    tool = BrowserTool()
    result = tool.execute("browser.open", json.dumps({"id": f"{base}/long"}))
    assert result.error
    assert "127.0.0.1 is a local or private address" in result.content
    assert tool.stack == []
    tool.close()


def test_redirects_are_followed_and_text_pages_shown(browser: BrowserTool, base: str) -> None:
    assert f"[0] Other ({base}/other)" in call(browser, "open", id=f"{base}/redirect")
    plain = call(browser, "open", id=f"{base}/plain.txt")
    assert plain.splitlines()[3:] == ["L0: first line", "L1: second line", "L2: "]


def test_size_cap_and_content_types(base: str) -> None:
    tool = BrowserTool(allow_private=True, max_bytes=1000, line_width=100)
    text = call(tool, "open", id=f"{base}/big")
    assert "**viewing lines [0 - 9] of 9**" in text  # 1000 bytes in lines of 100 characters
    image = tool.execute("browser.open", json.dumps({"id": f"{base}/image.png"}))
    assert image.error
    assert "image/png" in image.content
    missing = tool.execute("browser.open", json.dumps({"id": f"{base}/nope"}))
    assert missing.error
    assert "HTTP 404" in missing.content
    scheme = tool.execute("browser.open", json.dumps({"id": "file:///etc/passwd"}))
    assert scheme.error
    assert "only http and https" in scheme.content


@pytest.mark.parametrize(
    ("function", "arguments", "fragment"),
    [
        ("open", '{"id": 3}', "no page is open yet"),
        ("find", '{"pattern": "x"}', "no page is open yet"),
        ("open", "not json", "must be a JSON object"),
        ("search", "{}", "`query` is required"),
        ("fly", "{}", "unknown browser function"),
    ],
)
def test_mistakes_come_back_as_error_results(
    browser: BrowserTool, function: str, arguments: str, fragment: str
) -> None:
    result = browser.execute(f"browser.{function}", arguments)
    assert result.error
    assert fragment in result.content


def test_bad_link_ids_and_cursors_name_the_valid_range(browser: BrowserTool, base: str) -> None:
    call(browser, "open", id=f"{base}/long")
    bad_link = browser.execute("browser.open", '{"id": 9}')
    assert bad_link.error
    assert "its links: 0-1" in bad_link.content
    bad_cursor = browser.execute("browser.find", '{"pattern": "x", "cursor": 7}')
    assert bad_cursor.error
    assert "valid cursors are 0-0" in bad_cursor.content


def test_reset_forgets_the_pages(browser: BrowserTool, base: str) -> None:
    call(browser, "open", id=f"{base}/long")
    browser.reset()
    assert browser.execute("browser.open", '{"id": 0}').error


def test_html_extraction_keeps_structure_and_escapes_marker_brackets() -> None:
    page = extract_html(
        "<title> A  title </title><ul><li>one</li><li>two 【x】</li></ul>"
        "<pre>  keep\n    indent</pre><p>a <a href='#top'>local</a> <img alt='cat'></p>"
        "<a href='mailto:x@y'>mail</a> <a href='/same'>same</a> <a href='/same'>again</a>",
        "https://site.test/page",
    )
    assert page.title == "A title"
    assert page.text.splitlines() == [
        "* one",
        "* two 〖x〗",
        "  keep",
        "    indent",
        "a local [Image: cat]",
        "mail 【0†same】 【0†again】",
    ]
    assert page.links == ("https://site.test/same",)


def test_registry_routes_browser_recipients(base: str) -> None:
    with ToolRegistry.from_flags(browser=True, browser_allow_private=True) as registry:
        assert registry.handles("browser.open")
        assert not registry.handles("python")
        result = registry.execute(_Call("browser.open", json.dumps({"id": f"{base}/other"})))
    assert not result.error
    assert "Other page" in result.content


class _Call:
    def __init__(self, recipient: str, arguments: str) -> None:
        self.recipient = recipient
        self.arguments = arguments


class _Server:
    """A local HTTP server that answers every path with one response and counts requests."""

    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.requests: list[str] = []
        owner = self

        class OneAnswer(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(f"{self.headers['Host']}{self.path}")
                data = body.encode()
                self.send_response(status)
                for name, value in {"Content-Type": "text/plain", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), OneAnswer)
        self.port = self.http.server_port
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


PUBLIC_IP = "8.8.8.8"  # stands for "some public server"; never really contacted


class _LoopbackForPublic(httpcore.NetworkBackend):
    """Sockets where connecting to PUBLIC_IP lands on a local test server (no real traffic)."""

    def __init__(self, public_port: int) -> None:
        self.public_port = public_port
        self.connected: list[tuple[str, int]] = []
        self._real = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.NetworkStream:
        self.connected.append((host, port))
        if host == PUBLIC_IP:
            return self._real.connect_tcp("127.0.0.1", self.public_port, timeout)
        return self._real.connect_tcp(host, port, timeout)


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_name_that_rebinds_to_loopback_cannot_reach_the_local_server() -> None:
    public = _Server(200, {}, "PUBLIC PAGE")
    secret = _Server(200, {}, "LOCAL SECRET")
    answers = iter([[PUBLIC_IP], ["127.0.0.1"], ["127.0.0.1"]])
    asked: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return next(answers)  # public when checked, loopback on any later look-up

    sockets = _LoopbackForPublic(public.port)
    tool = BrowserTool(resolver=rebinding, network_backend=sockets)
    try:
        result = tool.execute(
            "browser.open", json.dumps({"id": f"http://rebind.test:{secret.port}/"})
        )
    finally:
        tool.close()
        public.close()
        secret.close()
    assert not result.error, result.content
    assert "PUBLIC PAGE" in result.content
    assert secret.requests == []
    assert asked == ["rebind.test"]  # one look-up: the checked address is the one used
    assert sockets.connected == [(PUBLIC_IP, secret.port)]
    assert public.requests == [f"rebind.test:{secret.port}/"]  # the original Host header


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_redirect_to_a_private_address_is_refused() -> None:
    secret = _Server(200, {}, "LOCAL SECRET")
    public = _Server(302, {"Location": f"http://127.0.0.1:{secret.port}/admin"}, "moved")
    sockets = _LoopbackForPublic(public.port)
    tool = BrowserTool(resolver=lambda host, port: [PUBLIC_IP], network_backend=sockets)
    try:
        result = tool.execute("browser.open", json.dumps({"id": "http://public.test/start"}))
        # A redirect to a name that resolves to a private address is refused the same way.
        private_name = BrowserTool(
            resolver=lambda host, port: ["10.0.0.5"] if host == "intranet.test" else [PUBLIC_IP],
            network_backend=sockets,
        )
        public_to_name = _Server(302, {"Location": "http://intranet.test/"}, "moved")
        sockets.public_port = public_to_name.port
        named = private_name.execute("browser.open", json.dumps({"id": "http://public.test/"}))
        private_name.close()
        public_to_name.close()
    finally:
        tool.close()
        public.close()
        secret.close()
    assert result.error
    assert "127.0.0.1 is a local or private address" in result.content
    assert secret.requests == []
    assert named.error
    assert "intranet.test is a local or private address (10.0.0.5)" in named.content
    assert ("10.0.0.5", 80) not in sockets.connected
