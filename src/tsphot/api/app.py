"""The FastAPI application: routes under /api/v1/, the OpenAPI document at
/api/v1/openapi.json, docs at /docs, the web page at /, the job dispatcher started and stopped
with the app."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tsphot import __version__
from tsphot.api import routes, web
from tsphot.api.config import ServerConfig
from tsphot.api.db import open_database
from tsphot.api.jobs import Dispatcher

log = logging.getLogger("tsphot.api")
MAX_JSON_BYTES = 16 << 20

DESCRIPTION = """\
Time-series differential photometry as a service: create a run of the tool
(`time_series_photometry_tools`) from settings and exposures, follow its progress, read its
records (objects, exposure stack, stack files, results) and download its products (light
curves, figures, report, bundle). Every call but `/health` and this document needs
`Authorization: Bearer TOKEN`; a token comes from `tsphot users add NAME`.
"""


class _BodyLimit:
    """Refuse a JSON body over MAX_JSON_BYTES before it is read (uploads stream instead).
    Plain ASGI: a polling request costs no extra task or stream, as BaseHTTPMiddleware's do."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].endswith("/uploads"):
            for k, v in scope["headers"]:
                if k == b"content-length":
                    if v.isdigit() and int(v) > MAX_JSON_BYTES:
                        response = JSONResponse(
                            {"detail": f"request body over {MAX_JSON_BYTES >> 20} MiB: too large"},
                            status_code=413,
                        )
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


def create_app(cfg: ServerConfig, start_jobs: bool = True) -> FastAPI:
    """The service for this config (its database is opened and migrated now)."""
    cfg.prepare()
    engine, sm = open_database(cfg.url)
    dispatcher = Dispatcher(cfg, sm)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if start_jobs:
            dispatcher.start()
        try:
            yield
        finally:
            if start_jobs:
                dispatcher.stop()
            engine.dispose()

    app = FastAPI(
        title="tsphot: time_series_photometry_tools",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/api/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.tsphot = routes.State(cfg, sm, dispatcher)
    app.include_router(routes.router, prefix="/api/v1")
    app.include_router(web.router, prefix="/api/v1")
    web.mount_page(app)

    app.add_middleware(_BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape (loc names the field), minus echoed input: it may be a whole upload
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); it is in the server's log"},
            status_code=500,
        )

    return app
