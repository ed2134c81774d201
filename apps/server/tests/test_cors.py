"""``--allowed-origins``: CORS for browser front ends, off by default."""

from __future__ import annotations

from typing import Any

import httpx

PREFLIGHT = {
    "Origin": "https://app.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_without_allowed_origins_there_are_no_cors_headers(server: Any) -> None:
    preflight = httpx.options(f"{server.url}/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    models = httpx.get(f"{server.url}/v1/models", headers={"Origin": "https://app.example.com"})
    assert models.status_code == 200
    assert "access-control-allow-origin" not in models.headers


def test_an_allowed_origins_preflight_gets_the_cors_headers(start_server: Any) -> None:
    server = start_server(allowed_origins=("https://app.example.com",), api_key="sekrit")
    preflight = httpx.options(f"{server.url}/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200  # no API key needed for the browser's preflight
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}]},
        headers={"Origin": "https://app.example.com", "Authorization": "Bearer sekrit"},
        timeout=30,
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://app.example.com"


def test_an_origin_not_allowed_gets_no_cors_headers(start_server: Any) -> None:
    server = start_server(allowed_origins=("https://app.example.com",))
    other = {**PREFLIGHT, "Origin": "https://evil.example.net"}
    preflight = httpx.options(f"{server.url}/v1/chat/completions", headers=other)
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
