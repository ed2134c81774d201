"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

`APIError` is raised by the service and the routes; the handlers installed by
`install_error_handlers` turn it, FastAPI's validation errors, Starlette's HTTP errors and
anything unexpected into that shape, so a client never sees an HTML page or a bare 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlx_harmony.generate.constrain import ConstraintError, ConstraintTimeoutError

from .protocol import ErrorDetail, ErrorResponse

__all__ = ["APIError", "error_body", "install_error_handlers"]

logger = logging.getLogger("mlx_harmony.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error to send to the client: status, message, and the OpenAI ``param``/``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "api_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def body_json(self) -> str:
        """The body as compact JSON, for an error event inside a stream."""
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump_json()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def constraint_error(error: ConstraintError, param: str | None) -> APIError:
    """The 400 for a schema or grammar the constraint engine cannot handle, or one that takes
    too long to compile: the engine's message names the keyword or rule."""
    timeout = isinstance(error, ConstraintTimeoutError)
    return APIError(
        400,
        f"{param}: {error}" if param else str(error),
        param=param,
        code="schema_compile_timeout" if timeout else "invalid_schema",
    )


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _param(loc: tuple[Any, ...]) -> str | None:
    """``("body", "messages", 0, "user", "content", "str")`` -> ``messages[0].content``:
    pydantic's union branch labels (a role tag, a type name) are left out."""
    text = ""
    previous: object = None
    for part in loc:
        if part == "body" and not text:
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif (
            part in _TYPE_LABELS
            or any(c in str(part) for c in "[-")
            or str(part)[:1].isupper()
            or (part in _ROLES and isinstance(previous, int))
        ):
            pass
        else:
            text += f".{part}" if text else str(part)
        previous = part
    return text or None


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = list(exc.errors())
    if not errors:
        return APIError(400, "the request body does not match the schema", code="invalid_body")
    first = errors[0]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        ctx = first.get("ctx") or {}
        return APIError(
            400,
            f"the request body is not valid JSON: {ctx.get('error', 'parse error')}",
            code="invalid_json",
        )
    loc = tuple(first.get("loc", ()))
    if kind == "missing" and loc == ("body",):
        return APIError(400, "the request needs a JSON body", code="invalid_json")
    param = _param(loc)
    message = str(first.get("msg", "invalid value"))
    if kind == "union_tag_invalid" and param and param.startswith("messages"):
        ctx = first.get("ctx") or {}
        message = (
            f"unknown message role {ctx.get('tag')!r}; use one of system, developer, user, "
            "assistant, tool"
        )
        code = "invalid_role"
    elif kind == "union_tag_not_found":
        message = "a message needs a 'role': system, developer, user, assistant or tool"
        code = "missing_role"
    else:
        code = "invalid_type" if kind not in ("missing",) else "missing_field"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    where = f"{param}: " if param else ""
    # OpenAI answers every invalid request with a 400 (SDKs raise BadRequestError for it).
    return APIError(400, f"{where}{message}{more}", param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can produce, in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        request.state.error = exc.code or exc.type
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc)
        request.state.error = error.code
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the routes"
            code = "unknown_route"
        elif exc.status_code == 413:
            message, code = str(exc.detail), "request_too_large"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        headers = dict(exc.headers) if exc.headers else None
        return APIError(exc.status_code, message, code=code, headers=headers).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        request.state.error = type(exc).__name__
        return APIError(
            500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"
        ).response()


def json_dumps(value: object) -> str:
    """Compact JSON with non-ASCII kept (what the SSE and JSON bodies use)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
