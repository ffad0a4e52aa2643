"""``/docs`` (Swagger UI) and ``/redoc`` served from packaged files: no CDN, so they work on an air-gapped cluster.

The assets are the ``fastapi-offline`` package's (Swagger UI and ReDoc builds), served at fixed
``/docs/assets/NAME`` routes (public, like the pages; a request never names a file path). The OpenAPI document
declares the API key (:func:`retrec.serving.schemas.openapi_schema`), so Swagger's Authorize button sends it.

Example::

    install_docs(api)     # on a FastAPI(docs_url=None, redoc_url=None)
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
from functools import cache
from importlib import resources

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html

ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png"}
ASSET_PREFIX = "/docs/assets/"


@cache
def _asset(name: str) -> bytes:
    return resources.files("fastapi_offline").joinpath("static", name).read_bytes()


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/docs/oauth2-redirect``, ``/redoc`` and their assets to ``app``."""

    def root(request: Request) -> str:
        return request.scope.get("root_path", "")

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> Response:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{base}/docs/oauth2-redirect",
            swagger_js_url=f"{base}{ASSET_PREFIX}swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSET_PREFIX}swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSET_PREFIX}favicon.png",
            swagger_ui_parameters={"persistAuthorization": False})

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> Response:
        base = root(request)
        return get_redoc_html(openapi_url=f"{base}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{base}{ASSET_PREFIX}redoc.standalone.js",
                              redoc_favicon_url=f"{base}{ASSET_PREFIX}favicon.png", with_google_fonts=False)

    for name, media_type in ASSETS.items():
        def serve_asset(name: str = name, media_type: str = media_type) -> Response:
            return Response(_asset(name), media_type=media_type, headers={"Cache-Control": "max-age=86400"})

        app.add_api_route(f"{ASSET_PREFIX}{name}", serve_asset, methods=["GET"], include_in_schema=False)
