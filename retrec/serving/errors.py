"""The one error shape of the HTTP API — ``{"error": {"code", "message"}}``, plus ``request_id`` when the
details went to the server log — and its FastAPI handlers. Messages never carry resolved paths,
environment values or remote tracebacks.

Example::

    raise ApiError(400, "not_deployed", "retriever 'sparse' is not deployed")
    # HTTP 400  {"error": {"code": "not_deployed", "message": "retriever 'sparse' is not deployed"}}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type",
                422: "invalid_request", 429: "too_many_requests", 500: "internal", 503: "unavailable",
                504: "timeout"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.request_id = request_id


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   request_id: str | None = None) -> JSONResponse:
    error = {"code": code, "message": message, **({"request_id": request_id} if request_id else {})}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "malformed_json", "request body is not valid JSON: " + _describe(errors))
    return error_response(422, "invalid_request", _describe(errors))


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    return error_response(status, STATUS_CODES.get(status, "error"), str(exc.detail),
                          headers=getattr(exc, "headers", None))


async def _api(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers, exc.request_id)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    logging.getLogger("retrec.serving").exception("unhandled error on %s", request.url.path)
    return error_response(500, "internal", f"internal error ({type(exc).__name__})")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _internal)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ApiError, _api)
