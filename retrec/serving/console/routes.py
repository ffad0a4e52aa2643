"""``GET /ui/`` and its two assets, plain routes of the ingress app (:data:`retrec.serving.http_api.api`).

Files are read once from the package; a request names one of three fixed routes, never a path. Each answer
carries a strict Content-Security-Policy (scripts and calls to this origin only, no inline code, no framing).

Example::

    curl -s localhost:8000/ui/ | head -3
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
from functools import cache
from importlib import resources

from fastapi import Response
from fastapi.responses import RedirectResponse

from retrec.serving.http_api import api

_TYPES = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("retrec.serving.console").joinpath("static", name).read_bytes()


def _answer(name: str) -> Response:
    return Response(content=_asset(name), media_type=_TYPES[name], headers=_HEADERS)


@api.get("/ui", include_in_schema=False)
async def console_redirect() -> Response:
    """``/ui`` → ``ui/`` (relative: the console's own relative links then work under any route prefix)."""
    return RedirectResponse("ui/", status_code=307)


@api.get("/ui/", include_in_schema=False)
async def console_page() -> Response:
    return _answer("index.html")


@api.get("/ui/console.js", include_in_schema=False)
async def console_script() -> Response:
    return _answer("console.js")


@api.get("/ui/console.css", include_in_schema=False)
async def console_style() -> Response:
    return _answer("console.css")
