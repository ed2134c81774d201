"""``GET /metrics``: Prometheus' text format, counting requests, tokens, timings, the queue."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

USER = [{"role": "user", "content": "Hello"}]


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_tokens_and_timings(server: Any) -> None:
    chat = f"{server.url}/v1/chat/completions"
    first = httpx.post(chat, json={"messages": USER}, timeout=30).json()
    second = httpx.post(chat, json={"messages": USER}, timeout=30).json()
    assert httpx.post(chat, json={"messages": []}, timeout=30).status_code == 400
    samples = scrape(server.url)
    route = "/v1/chat/completions"
    assert samples[("mlx_harmony_requests_total", (("route", route), ("status", "200")))] == 2
    assert samples[("mlx_harmony_requests_total", (("route", route), ("status", "400")))] == 1
    prompt = first["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"]
    completion = first["usage"]["completion_tokens"] + second["usage"]["completion_tokens"]
    assert samples[("mlx_harmony_prompt_tokens_total", ())] == prompt
    assert samples[("mlx_harmony_completion_tokens_total", ())] == completion
    assert samples[("mlx_harmony_time_to_first_token_seconds_count", ())] == 2
    assert samples[("mlx_harmony_decode_tokens_per_second_count", ())] == 2
    # The second request repeats the first's prompt: its prefix comes from the prompt cache.
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    assert samples[("mlx_harmony_prompt_cache_hits_total", ())] >= 1
    assert samples[("mlx_harmony_prompt_cache_reused_tokens_total", ())] >= cached
    assert samples[("mlx_harmony_queue_depth", ())] == 0
    assert samples[("mlx_harmony_running_requests", ())] == 0


def test_a_stream_is_counted_when_it_ends(server: Any) -> None:
    body = {"messages": USER, "stream": True}
    text = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30).text
    assert text.endswith("data: [DONE]\n\n")
    samples = scrape(server.url)
    key = (("route", "/v1/chat/completions"), ("status", "200"))
    assert samples[("mlx_harmony_requests_total", key)] == 1
    assert samples[("mlx_harmony_completion_tokens_total", ())] > 0


def test_running_requests_show_while_a_turn_decodes(start_server: Any, echo: Any) -> None:
    generator = echo(hold_after=4)  # past the channel header: a delta goes out
    server = start_server(generator)
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={**{"messages": USER}, "stream": True},
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        next(lines)
        assert scrape(server.url)[("mlx_harmony_running_requests", ())] == 1
        generator.release()
        assert [line for line in lines if line][-1] == "data: [DONE]"
    assert scrape(server.url)[("mlx_harmony_running_requests", ())] == 0


def test_metrics_need_the_api_key_when_one_is_set(start_server: Any) -> None:
    server = start_server(api_key="sekrit")
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert scrape(server.url, Authorization="Bearer sekrit")
