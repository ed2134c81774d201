"""Bad input, auth and failures get OpenAI-shaped errors with the right status."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.api_client import (
    AuthenticationError,
    BadRequestError,
    Client,
    NotFoundError,
    RequestTooLargeError,
    ServiceUnavailableError,
)

USER = [{"role": "user", "content": "Hi"}]


def post(url: str, body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30, **kw)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def test_malformed_json_is_a_400(server: Any) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(response, 400)
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": USER, "temperature": "hot"}, "temperature"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "top_logprobs": 50}, "top_logprobs"),
        ({}, "messages"),
    ],
)
def test_wrong_types_are_400s_that_name_the_field(server: Any, body: Any, param: str) -> None:
    error = assert_openai_error(post(server.url, body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_an_unknown_role_is_a_400_that_lists_the_roles(server: Any) -> None:
    error = assert_openai_error(
        post(server.url, {"messages": [{"role": "wizard", "content": "x"}]}), 400
    )
    assert "'wizard'" in error["message"]
    assert "assistant" in error["message"]
    assert error["code"] == "invalid_role"


def test_an_out_of_range_value_is_a_400_naming_the_field_and_range(server: Any) -> None:
    error = assert_openai_error(post(server.url, {"messages": USER, "top_p": 1.5}), 400)
    assert error["param"] == "top_p"
    assert "(0, 1]" in error["message"]
    with Client(server.url) as client, pytest.raises(BadRequestError) as raised:
        client.chat(USER, temperature=-2)
    assert raised.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="x").chat.completions.create(
            model="mlx-harmony-demo", messages=USER, presence_penalty=9
        )


def test_an_unknown_model_is_a_404_listing_the_served_ones(server: Any) -> None:
    error = assert_openai_error(post(server.url, {"messages": USER, "model": "gpt-17"}), 404)
    assert error["code"] == "model_not_found"
    assert "mlx-harmony-demo" in error["message"]
    with Client(server.url) as client, pytest.raises(NotFoundError):
        client.chat(USER, model="gpt-17")


def test_an_unknown_route_is_an_openai_shaped_404(server: Any) -> None:
    error = assert_openai_error(httpx.get(f"{server.url}/v1/nothing"), 404)
    assert error["code"] == "unknown_route"


def test_an_oversized_body_is_a_413(start_server: Any) -> None:
    server = start_server(max_body_bytes=4096)
    big = {"messages": [{"role": "user", "content": "x" * 10_000}]}
    error = assert_openai_error(post(server.url, big), 413)
    assert error["code"] == "request_too_large"

    def chunks() -> Any:  # no Content-Length: the limit is counted as the body streams
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert_openai_error(response, 413)
    with Client(server.url) as client, pytest.raises(RequestTooLargeError):
        client.chat(big["messages"])
    assert server.generator.calls == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_a_400(
    start_server: Any, echo: Any, stream: bool
) -> None:
    server = start_server(echo(context_length=1024))
    long = [{"role": "user", "content": "word " * 2000}]
    error = assert_openai_error(post(server.url, {"messages": long, "stream": stream}), 400)
    assert error["code"] == "context_length_exceeded"
    assert "max_context_tokens" in error["message"]
    assert server.generator.calls == []
    with Client(server.url) as client:  # the server is fine afterwards
        assert client.chat(USER).content == "You said: Hi"


def test_a_model_that_cannot_load_is_a_503_and_health_says_why(start_server: Any) -> None:
    def broken(entry: Any) -> Any:
        raise FileNotFoundError("no weights in /models/missing")

    server = start_server(loader=broken)
    error = assert_openai_error(post(server.url, {"messages": USER}), 503)
    assert error["code"] == "model_load_failed"
    assert "/models/missing" in error["message"]
    with Client(server.url) as client:
        with pytest.raises(ServiceUnavailableError):
            client.stream_chat(USER).until_done()
        health = client.health()
    assert health["model_loaded"] is False
    assert "no weights" in health["load_error"]


def test_a_full_queue_is_a_503_with_retry_after(
    start_server: Any, echo: Any, wait_for: Any
) -> None:
    server = start_server(echo(hold_after=8), max_queue=1)
    with Client(server.url) as client, client.stream_chat(USER) as stream:
        next(iter(stream))  # the model is busy with this one
        queued: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: queued.append(post(server.url, {"messages": USER}))
        )
        waiter.start()
        assert wait_for(lambda: server.app.state.worker.waiting == 1)  # the one queue place
        response = post(server.url, {"messages": USER})
        error = assert_openai_error(response, 503)
        assert error["code"] == "queue_full"
        assert response.headers["retry-after"] == "1"
        assert "--max-queue 1" in error["message"]
        server.generator.release()
        for _ in stream:
            pass
    waiter.join(30)
    assert queued[0].status_code == 200  # the waiting one ran once the model was free
    assert server.app.state.worker.stats.rejected == 1


def test_n_above_the_servers_cap_is_refused(server: Any) -> None:
    error = assert_openai_error(post(server.url, {"messages": USER, "n": 99}), 400)
    assert error["param"] == "n"


def test_schema_errors_from_our_client_are_bad_requests(server: Any) -> None:
    with Client(server.url) as client, pytest.raises(BadRequestError) as raised:
        client.chat([{"role": "user"}])
    assert raised.value.status_code == 400
    assert raised.value.param == "messages[0].content"


# -- auth -------------------------------------------------------------------------------------


def test_an_api_key_is_required_on_v1_routes_but_not_on_health(start_server: Any) -> None:
    server = start_server(api_key="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        error = assert_openai_error(post(server.url, {"messages": USER}, headers=headers), 401)
        assert error["code"] == "invalid_api_key"
    response = httpx.get(f"{server.url}/v1/models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/v1/health").status_code == 200
    ok = post(server.url, {"messages": USER}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    with Client(server.url, api_key="nope") as client, pytest.raises(AuthenticationError):
        client.chat(USER)
    with Client(server.url, api_key="s3cret") as client:
        assert client.chat(USER).content == "You said: Hi"
    good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret")
    assert good.chat.completions.create(model="x", messages=USER, extra_body={"model": None})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="bad").models.list()
