"""The one FastAPI app of the ingress (``api``) and what its routes share: error responses, the JSON-body check.

The ingress class and its route mixins (:mod:`retrec.serving.search_routes`, :mod:`retrec.serving.recommend_routes`)
register their routes on :data:`api`; :mod:`retrec.serving.ingress` wraps it with ``@serve.ingress``. The console's
static pages (:mod:`retrec.serving.console`) are plain routes of the same app.

Example::

    @api.get("/v1/thing", responses=ERRORS)
    async def thing(self) -> dict: ...
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
import functools
from typing import Any

from fastapi import Depends, FastAPI

from retrec.serving import middleware as guard
from retrec.serving import schemas
from retrec.serving.docs_pages import install_docs
from retrec.serving.errors import install_error_handlers
from retrec.serving.middleware import GuardMiddleware
from retrec.serving.prometheus import MetricsMiddleware
from retrec.serving.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 409, 413, 415, 422, 503, 504)
}
ADMIN_ERRORS = {**ERRORS, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
JSON_BODY = [Depends(guard.require_json)]

api = FastAPI(
    title="retrec serving API", version="1.2.0", docs_url=None, redoc_url=None,  # ours: no CDN (docs_pages.py)
    description="Search (any registered retriever kind, hybrid fusion) and sequential recommendation over "
                "versioned index bundles. Send the API key as `X-API-Key` (the Authorize button here); the "
                "console is at `/ui`.",
)
api.openapi = functools.partial(schemas.openapi_schema, api)  # type: ignore[method-assign]
install_docs(api)
install_error_handlers(api)
api.add_middleware(GuardMiddleware)
api.add_middleware(MetricsMiddleware)  # outermost: sees the guard's 401/413/415/503 too
