"""The FastAPI app: routes, auth, CORS and the gateway's job machinery, built from settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.background import Background
from serve_app.ends import EndWatcher
from serve_app.errors import UploadError
from serve_app.housekeeper import Housekeeper
from serve_app.metrics import JobMetrics
from serve_app.openai_compat import error_body
from serve_app.openai_compat import router as openai_router
from serve_app.pacing import StatusPacer
from serve_app.routes import health_router, jobs_router
from serve_app.runner import JobRunner
from serve_app.settings import Settings
from serve_app.store import JobStore
from serve_app.transcriber_client import TranscriberClient
from serve_app.webhooks import Sender

logger = logging.getLogger("ray.serve.whisper.app")


class StrictCORS(CORSMiddleware):
    """Starlette's CORS, with a JSON body when a preflight is refused."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode()
        return JSONResponse(
            {"detail": f"{reason}: the server allows the origins listed in ALLOWED_ORIGINS"},
            status_code=response.status_code,
        )


def _openai(request: Request) -> bool:
    """Requests to the OpenAI-compatible API get OpenAI's error shape."""
    return request.url.path.startswith("/v1/")


DOCS_ASSETS = "/docs-assets"


def _offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts from the fastapi-offline package,
    not a CDN: a server with no network still shows its docs."""
    static = files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(static)), name="docs-assets")
    title = f"{app.title} - docs"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=str(app.openapi_url),
            title=title,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=str(app.openapi_url),
            title=title,
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def create_app(settings: Settings, client: TranscriberClient, store: JobStore) -> FastAPI:
    """Build the HTTP app over a job store; jobs run while the app's lifespan does."""
    metrics = JobMetrics()
    ends = EndWatcher(store)
    webhooks = Sender(store.outbox, settings, metrics)
    runner = JobRunner(store, client, settings, metrics=metrics, ends=ends, webhooks=webhooks)
    background = Background(
        store=store,
        runner=runner,
        ends=ends,
        housekeeper=Housekeeper(store, settings, metrics),
        webhooks=webhooks,
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        background.start()
        yield
        await background.stop()

    app = FastAPI(
        title="Whisper async job server",
        summary="Submit audio, poll for the transcript. Batched faster-whisper on Ray Serve.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served below from local files: the server runs offline
        redoc_url=None,
    )
    _offline_docs(app)
    app.state.settings = settings
    app.state.store = store
    app.state.runner = runner
    app.state.ends = ends
    app.state.pacer = StatusPacer(settings)
    app.state.background = background
    app.add_middleware(
        StrictCORS,
        allow_origins=settings.allowed_origins,
        # Bearer tokens travel in a header, not cookies: never allow credentials.
        allow_credentials=False,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        expose_headers=["Location", "Retry-After"],
        max_age=600,
    )
    app.include_router(health_router)
    app.include_router(jobs_router)
    app.include_router(openai_router)

    # Errors are {"detail": message}, or OpenAI's error object under /v1/.
    def error(
        request: Request,
        code: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
    ) -> JSONResponse:
        body = error_body(code, message, param) if _openai(request) else {"detail": message}
        return JSONResponse(body, status_code=code, headers=dict(headers or {}))

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return error(request, exc.status, exc.message, param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not _openai(request):
            return await http_exception_handler(request, exc)
        return error(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if not _openai(request):
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = str(first["loc"][-1]) if first["loc"] else None
        return error(request, 400, f"{param}: {first['msg']}", param=param)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return error(request, 500, "internal error; the server logs have details")

    return app
