"""``GET /metrics``: the server's counters in Prometheus' text format (``prometheus-client``).

`ServerMetrics` owns its own `CollectorRegistry` (one per app, so several apps in one process
never share counts); `MetricsMiddleware` counts every HTTP request by route and status when
its response is over, and reads the turn's `Outcome` (tokens, time to first token, decode
speed, prompt-cache reuse) that the route left on the request's state. Queue depth and running
requests are read from the worker at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .serving import Outcome

__all__ = ["MetricsMiddleware", "ServerMetrics", "metrics_router"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SPEED_BUCKETS = (1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 400.0, 1000.0)


class ServerMetrics:
    """The server's Prometheus metrics (names prefixed ``mlx_harmony_``)."""

    def __init__(self, *, queued: Callable[[], float], running: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlx_harmony_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "mlx_harmony_request_duration_seconds",
            "HTTP request durations (streams: to the last byte).",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "mlx_harmony_prompt_tokens", "Prompt tokens of finished turns.", registry=r
        )
        self.completion_tokens = Counter(
            "mlx_harmony_completion_tokens", "Generated tokens of finished turns.", registry=r
        )
        self.ttft = Histogram(
            "mlx_harmony_time_to_first_token_seconds",
            "From a generation's start (queue excluded) to its first token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_speed = Histogram(
            "mlx_harmony_decode_tokens_per_second",
            "Decode speed of each generation.",
            buckets=_SPEED_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "mlx_harmony_prompt_cache_hits",
            "Generations whose prompt prefix was already cached.",
            registry=r,
        )
        self.cache_reused = Counter(
            "mlx_harmony_prompt_cache_reused_tokens",
            "Prompt tokens taken from the prompt cache instead of prefilled.",
            registry=r,
        )
        queue = Gauge("mlx_harmony_queue_depth", "Requests waiting for the model.", registry=r)
        queue.set_function(queued)
        busy = Gauge("mlx_harmony_running_requests", "Requests decoding now.", registry=r)
        busy.set_function(running)

    def observe_turn(self, outcome: Outcome) -> None:
        """Count a finished turn's tokens and each of its generations' timings."""
        self.prompt_tokens.inc(outcome.prompt_tokens)
        self.completion_tokens.inc(outcome.completion_tokens)
        for info in outcome.generations:
            if info.completion_tokens:
                self.ttft.observe(info.time_to_first_token_s)
            if info.decode_tokens_per_s > 0:
                self.decode_speed.observe(info.decode_tokens_per_s)
            if info.reused_prompt_tokens > 0:
                self.cache_hits.inc()
                self.cache_reused.inc(info.reused_prompt_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _route(scope: Scope) -> str:
    """The route's template (``/v1/responses/{response_id}``), so that ids do not make new
    label values; ``unmatched`` for paths no route serves."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsMiddleware:
    """Counts each HTTP request when its response is over (a stream: after its last byte)."""

    def __init__(self, app: ASGIApp, *, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()
        scope.setdefault("state", {})  # the dict the route's ``request.state`` writes to

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = _route(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - start)
            state: Any = scope.get("state") or {}
            outcome = state.get("outcome") if isinstance(state, dict) else None
            if isinstance(outcome, Outcome) and outcome.finish_reason is not None:
                self.metrics.observe_turn(outcome)


metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The metrics in Prometheus' text format (behind the API key when one is set)."""
    server_metrics: ServerMetrics = request.app.state.metrics
    return Response(server_metrics.render(), media_type=CONTENT_TYPE_LATEST)
