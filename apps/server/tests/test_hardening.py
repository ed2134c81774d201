"""The server against hostile clients: half-sent requests, invalid Unicode, foreign Host
headers, made-up tokens, other keys' stored responses, control characters in the log."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from mlx_harmony.server import ServerSettings, create_app
from mlx_harmony.server.admission import FairQueue, QueueFullError, client_key, match_key
from mlx_harmony.server.cli import build_parser, uvicorn_options
from mlx_harmony.server.limits import ConnectionLimits, limited_h11, raise_open_files_limit
from mlx_harmony.server.middleware import printable
from mlx_harmony.server.routes import find_invalid_text

USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def limited(tmp_path: Path, echo: Any) -> Iterator[Callable[..., tuple[str, int]]]:
    """``limited(limits, **settings)``: a server run with the CLI's uvicorn options (our h11
    protocol) on a free port; (url, port)."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**settings: Any) -> tuple[str, int]:
        settings.setdefault("log_file", str(tmp_path / "requests.log"))
        app_settings = ServerSettings(**settings)
        generator = echo()
        app = create_app(app_settings, loader=lambda entry: generator)
        options = uvicorn_options(app_settings, log_level="warning")
        options["port"] = 0
        server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **options))  # type: ignore[arg-type]
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
            time.sleep(0.01)
        servers.append((server, thread))
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", port

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)


def _half_sent(port: int, n: int) -> list[socket.socket]:
    """`n` connections that each send the first line of a request and stop."""
    sockets = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sockets.append(sock)
    return sockets


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (it reads EOF, a reset, or a 503 then EOF)."""
    sock.settimeout(0.01)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


def _health_seconds(url: str) -> float:
    started = time.perf_counter()
    response = httpx.get(f"{url}/v1/health", timeout=10)
    assert response.status_code == 200
    return time.perf_counter() - started


# -- connections ------------------------------------------------------------------------------


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_half_sent_requests_are_closed_after_the_header_timeout(
    limited: Callable[..., tuple[str, int]],
) -> None:
    url, port = limited(header_timeout_s=1.0)
    sockets = _half_sent(port, 50)
    try:
        assert _health_seconds(url) < 1.0
        time.sleep(1.6)
        closed = sum(_closed(sock) for sock in sockets)
        assert closed == 50, f"{closed} of 50 half-sent requests were closed"
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_stalled_body_is_closed_after_the_body_timeout(
    limited: Callable[..., tuple[str, int]],
) -> None:
    url, port = limited(body_timeout_s=1.0)
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"messages"'
        )
        time.sleep(1.6)
        assert _closed(sock)
        assert _health_seconds(url) < 1.0
    finally:
        sock.close()


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_health_answers_beyond_the_connection_cap(
    limited: Callable[..., tuple[str, int]],
) -> None:
    """300 idle connections against a cap of 100: the oldest idle ones make room, health
    answers at once."""
    url, port = limited(max_connections=100, header_timeout_s=30.0)
    sockets = _half_sent(port, 300)
    try:
        times = [_health_seconds(url) for _ in range(5)]
        assert max(times) < 1.0, times
        time.sleep(0.2)
        assert sum(_closed(sock) for sock in sockets) >= 200  # the oldest made room
    finally:
        for sock in sockets:
            sock.close()


def test_keep_alive_connections_still_work(limited: Callable[..., tuple[str, int]]) -> None:
    url, _ = limited(header_timeout_s=1.0)
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(f"{url}/v1/health").status_code == 200
        response = client.post(f"{url}/v1/chat/completions", json={"messages": USER})
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "You said: Hi"


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        raised = raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
        assert raised >= min(hard, 10240) or raised == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connection_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="header_timeout_s"):
        ConnectionLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="max_connections"):
        ConnectionLimits(max_connections=0)
    assert limited_h11(ConnectionLimits(max_connections=3)).limits.max_connections == 3  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--header-timeout", "0"])


# -- invalid Unicode --------------------------------------------------------------------------

_SURROGATE_CHAT = b'{"messages": [{"role": "user", "content": "bad \\ud800 text"}]}'


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", _SURROGATE_CHAT, "messages[0].content"),
        (
            "/v1/chat/completions",
            b'{"stream": true, "messages": [{"role": "user", "content": "x\\udfff"}]}',
            "messages[0].content",
        ),
        ("/v1/tokenize", _SURROGATE_CHAT, "messages[0].content"),
        ("/v1/responses", b'{"input": "\\ud800"}', "input"),
        (
            "/v1/responses",
            b'{"input": [{"type": "message", "role": "user", "content": '
            b'[{"type": "input_text", "text": "ok \\ud83d"}]}]}',
            "input[0].content[0].text",
        ),
        ("/v1/chat/completions", b'{"messages": [], "metadata": {"\\ud800": "k"}}', "metadata"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(
    server: Any, path: str, body: bytes, param: str
) -> None:
    response = httpx.post(
        f"{server.url}{path}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] == "invalid_unicode"
    assert param in error["message"]
    assert httpx.get(f"{server.url}/v1/health").status_code == 200  # still serving


def test_find_invalid_text_walks_everything() -> None:
    assert find_invalid_text({"a": [1, "ok", {"b": "é"}]}) is None
    assert find_invalid_text({"a": [1, "ok", {"b": "\ud800"}]}) == "a[2].b"
    assert find_invalid_text("\udc80") == "body"


# -- the queue --------------------------------------------------------------------------------


def test_one_clients_burst_leaves_room_for_another() -> None:
    queue: FairQueue[int] = FairQueue(8, per_client=4)
    for n in range(4):
        queue.put(n, "host:a")
    with pytest.raises(QueueFullError, match="limit per client is 4"):
        queue.put(99, "host:a")
    queue.put(100, "host:b")  # another client still gets in
    assert [queue.get(0) for _ in range(3)] == [0, 100, 1]


def test_the_default_per_client_share_is_below_the_queue() -> None:
    assert FairQueue(64).per_client == 32
    assert FairQueue(1).per_client == 1
    with pytest.raises(ValueError, match="per_client"):
        FairQueue(4, per_client=5)


def test_made_up_tokens_do_not_buy_queue_shares() -> None:
    """Without server keys a bearer token is nobody: the line is the address."""
    lines = {client_key(match_key(f"Bearer t{n}", ()), "10.0.0.1") for n in range(20)}
    assert lines == {"host:10.0.0.1"}
    keys = ("k1", "k2")
    assert client_key(match_key("Bearer k1", keys), "10.0.0.1") != client_key(
        match_key("Bearer k2", keys), "10.0.0.1"
    )
    assert client_key(match_key("Bearer k3", keys), "10.0.0.9") == "host:10.0.0.9"


def test_a_burst_from_one_client_does_not_503_another(
    start_server: Any, wait_for: Any, echo: Any
) -> None:
    generator = echo(hold_after=1)
    server = start_server(generator, max_concurrency=1, max_queue=4, api_keys=("a", "b"))
    results: list[int] = []

    def call(key: str) -> None:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"messages": USER},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        results.append(response.status_code)

    burst = [threading.Thread(target=call, args=("a",)) for _ in range(5)]
    for thread in burst:
        thread.start()
    assert wait_for(lambda: server.worker.waiting >= 2 and results.count(503) >= 2)
    other = threading.Thread(target=call, args=("b",))
    other.start()
    assert wait_for(lambda: server.worker.waiting == 3)
    generator.release()
    for thread in [*burst, other]:
        thread.join(30)
    assert results.count(200) == 4
    assert results.count(503) == 2


# -- exposure ---------------------------------------------------------------------------------


def test_a_foreign_host_header_is_a_400(start_server: Any) -> None:
    server = start_server()
    for host in ("evil.example", "evil.example:8000", "127.0.0.2"):
        response = httpx.get(f"{server.url}/v1/models", headers={"Host": host})
        assert response.status_code == 400, host
        assert response.json()["error"]["code"] == "invalid_host"
    for host in ("localhost", "LOCALHOST:1234", "127.0.0.1:9", "[::1]:80"):
        assert httpx.get(f"{server.url}/v1/models", headers={"Host": host}).status_code == 200
    assert any("invalid_host" in line for line in server.log_lines())


def test_allowed_hosts_star_and_lists(start_server: Any) -> None:
    anyone = start_server(allowed_hosts=("*",))
    assert httpx.get(f"{anyone.url}/v1/models", headers={"Host": "x.test"}).status_code == 200
    listed = start_server(allowed_hosts=("api.test",))
    assert httpx.get(f"{listed.url}/v1/models", headers={"Host": "api.test"}).status_code == 200
    assert httpx.get(f"{listed.url}/v1/models").status_code == 400  # 127.0.0.1 is not listed
    assert build_parser().parse_args(["--allowed-hosts", "a.test, B.test"]).allowed_hosts == (
        "a.test",
        "b.test",
    )


def test_with_a_key_every_route_but_health_needs_it(start_server: Any) -> None:
    server = start_server(api_key="s3cret")
    for path in ("/openapi.json", "/docs", "/redoc", "/v1/models", "/nope"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "invalid_api_key"
    auth = {"Authorization": "Bearer s3cret"}
    assert httpx.get(f"{server.url}/openapi.json", headers=auth).status_code == 200
    assert httpx.get(f"{server.url}/v1/health").status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_stored_response_belongs_to_its_key(start_server: Any) -> None:
    server = start_server(api_key="alice", api_keys=("bob",))

    def call(method: str, path: str, key: str, body: Any = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{server.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )

    created = call("POST", "/v1/responses", "alice", {"input": "Hello there"})
    assert created.status_code == 200
    rid = created.json()["id"]
    assert call("GET", f"/v1/responses/{rid}", "bob").status_code == 404
    follow = call("POST", "/v1/responses", "bob", {"input": "x", "previous_response_id": rid})
    assert follow.status_code == 404
    assert call("DELETE", f"/v1/responses/{rid}", "bob").status_code == 404
    assert call("GET", f"/v1/responses/{rid}", "alice").status_code == 200
    assert call("DELETE", f"/v1/responses/{rid}", "alice").status_code == 200


def test_the_request_log_escapes_control_characters(start_server: Any, wait_for: Any) -> None:
    server = start_server(api_key="k")
    httpx.get(f"{server.url}/v1/x%0a2026-01-01 00:00:00,000 forged GET /v1/models 200%1b[31m")
    assert wait_for(lambda: server.log_lines())  # written once the response is sent
    lines = server.log_lines()
    assert len(lines) == 1, lines
    assert "\\n2026-01-01" in lines[0]
    assert "\\x1b[31m" in lines[0]
    assert " 401 " in lines[0]
    assert printable("a\tb\u2028c") == "a\\tb\\u2028c"


def test_server_settings_refuse_bad_hardening_values() -> None:
    with pytest.raises(ValueError, match="max_queue_per_client"):
        ServerSettings(max_queue=4, max_queue_per_client=5)
    with pytest.raises(ValueError, match="header_timeout_s"):
        ServerSettings(header_timeout_s=0)
    assert ServerSettings(host="0.0.0.0").hosts is None
    assert ServerSettings().hosts == ("localhost", "127.0.0.1", "::1")
    assert json.loads(json.dumps(ServerSettings(api_key="a", api_keys=("b",)).keys)) == ["a", "b"]
