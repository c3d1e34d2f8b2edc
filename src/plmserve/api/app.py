"""``create_app(settings)``: wires the routers of every public contract, auth, error handlers
and lifespan hooks.

Each contract module (``biolm``, ``forge``, ``openprotein``) exposes ``include(app)`` which adds
its routes and may append start-up/shut-down callables to ``app.state.startup`` /
``app.state.shutdown``.
"""

from __future__ import annotations

import importlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from plmserve import __version__
from plmserve.errors import PlmserveError
from plmserve.models.registry import ModelManager
from plmserve.settings import Settings

logger = logging.getLogger(__name__)

CONTRACTS = ("biolm", "forge", "openprotein")


def create_app(settings: Settings | None = None, models: ModelManager | None = None) -> FastAPI:
    """Build the FastAPI application.

    Args:
        settings: server settings; default: from the environment.
        models: a model manager to share (tests and notebooks); default: a new lazy one.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for hook in app.state.startup:
            result = hook(app)
            if hasattr(result, "__await__"):
                await result
        try:
            yield
        finally:
            for hook in reversed(app.state.shutdown):
                result = hook(app)
                if hasattr(result, "__await__"):
                    await result

    app = FastAPI(
        title="plmserve",
        version=__version__,
        description="Protein language models on your own hardware: BioLM-compatible ESM-2, "
        "Forge-compatible ESM3 and OpenProtein-compatible PoET.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.models = models or ModelManager(settings)
    app.state.token_validators = []
    app.state.startup = []
    app.state.shutdown = []

    @app.exception_handler(PlmserveError)
    async def _plmserve_error(request: Request, exc: PlmserveError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Token"} if exc.status_code == 401 else exc.headers
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)}, headers=headers)

    if settings.load_format == "dummy":
        logger.warning("load-format=dummy: models have RANDOM weights; outputs are meaningless")

        @app.middleware("http")
        async def _dummy_header(request: Request, call_next):
            response = await call_next(request)
            response.headers["X-Plmserve-Load-Format"] = "dummy"
            response.headers["X-Plmserve-Warning"] = "random weights (load-format=dummy)"
            return response

    from plmserve.serving import ops

    ops.install(app)  # request ids, limits, access logs, metrics, /health, /ready, /metrics

    for name in CONTRACTS:  # every contract exists: a failing import is an error, never skipped
        importlib.import_module(f"plmserve.api.{name}").include(app)
    importlib.import_module("plmserve.api.dashboard").include(app)  # web dashboard at /
    return app
