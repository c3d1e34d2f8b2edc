"""``plmserve serve``: run the HTTP server (uvicorn) with every public contract.

Settings come from the environment (``PLMSERVE_*``, see :mod:`plmserve.settings`); flags given on
the command line override them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from plmserve.cli._common import cli_errors, console

logger = logging.getLogger(__name__)


def build_settings(
    host: str | None = None,
    port: int | None = None,
    load_format: str | None = None,
    no_auth: bool = False,
    api_keys: list[str] | None = None,
    model_dir: Path | None = None,
    models: str | None = None,
    shutdown_timeout: float | None = None,
):
    """Settings from the environment with the given flags on top, checked for safe auth.

    Raises:
        InvalidParameterError: ``--no-auth`` on a non-loopback host, or no API key, no
            job-service user and no ``--no-auth`` (see :func:`plmserve.api.auth.check_auth_config`).
    """
    from plmserve.api.auth import check_auth_config
    from plmserve.settings import get_settings

    settings = get_settings(
        host=host,
        port=port,
        load_format=load_format,
        no_auth=True if no_auth else None,
        api_keys=list(api_keys) if api_keys else None,
        model_dir=model_dir,
        served_models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        shutdown_timeout_s=shutdown_timeout,
    )
    if settings.served_models:  # unknown names fail at start, not on the first request
        from plmserve.models.registry import get_spec

        for name in settings.served_models:
            get_spec(name)
    check_auth_config(settings, has_users=bool(not settings.no_auth and not settings.api_keys and _has_users(settings)))
    return settings


def _has_users(settings) -> bool:
    """Whether the job store (``PLMSERVE_DATABASE_URL`` / the data directory) has any user.

    A store that does not exist yet has none; it is not created here.
    """
    url = settings.resolved_database_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return False
    from plmserve.jobs.store import JobStore

    store = JobStore(url)
    try:
        return bool(store.list_users())
    finally:
        store.close()


def log_config() -> dict:
    """uvicorn's logging configuration plus plmserve's own loggers (model loading, weight locations,
    dummy-weight warnings) at INFO on the same handler; applied by uvicorn when it starts."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["plmserve"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    # every line: UTC timestamp, level, logger, request id (operations, issue 14)
    cfg["filters"] = {"request_id": {"()": "plmserve.serving.ops.RequestIdFilter"}}
    cfg["formatters"]["default"]["fmt"] = "%(asctime)s %(levelprefix)s [%(request_id)s] %(name)s: %(message)s"
    cfg["formatters"]["default"]["datefmt"] = "%Y-%m-%dT%H:%M:%S%z"
    cfg["handlers"]["default"]["filters"] = ["request_id"]
    return cfg


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root CLI."""

    @app.command("serve")
    @cli_errors
    def serve(
        host: Optional[str] = typer.Option(None, "--host", help="address to bind (default 127.0.0.1; env PLMSERVE_HOST)"),
        port: Optional[int] = typer.Option(None, "--port", help="TCP port (default 8000; env PLMSERVE_PORT)"),
        load_format: Optional[str] = typer.Option(
            None, "--load-format",
            help="auto: real weights (local dir, HF hub cache, fair-esm .pt); dummy: real architecture "
            "with RANDOM weights, for smoke tests and benchmarks",
        ),
        no_auth: bool = typer.Option(False, "--no-auth", help="accept requests without credentials (127.0.0.1 only)"),
        api_key: Optional[list[str]] = typer.Option(
            None, "--api-key", help="accepted API key (repeatable; env PLMSERVE_API_KEYS='[\"k1\",\"k2\"]')"),
        model_dir: Optional[Path] = typer.Option(
            None, "--model-dir", help="directory with local weights: <dir>/<slug>/ or official files (env PLMSERVE_MODEL_DIR)"),
        log_level: str = typer.Option("info", "--log-level", help="uvicorn log level"),
        models: Optional[str] = typer.Option(
            None, "--models", help="comma-separated allowlist of served models, e.g. esm2-8m,poet (default: the "
            "models whose weights are present; every model with --load-format dummy) [env PLMSERVE_SERVED_MODELS]"),
        shutdown_timeout: Optional[float] = typer.Option(
            None, "--shutdown-timeout", help="seconds to drain in-flight requests on SIGTERM/Ctrl-C (default 30)"),
    ) -> None:
        """Serve the BioLM-, Forge- and OpenProtein-compatible HTTP APIs (OpenAPI docs at /docs)."""
        if load_format is not None and load_format not in ("auto", "dummy"):
            from plmserve.errors import InvalidParameterError

            raise InvalidParameterError(f"--load-format must be 'auto' or 'dummy', not '{load_format}'")
        settings = build_settings(host, port, load_format, no_auth, api_key, model_dir, models, shutdown_timeout)

        import uvicorn

        from plmserve.api.app import create_app

        application = create_app(settings)
        auth = "OFF (--no-auth, loopback only)" if settings.no_auth else f"{len(settings.api_keys)} API key(s)"
        console.print(
            f"plmserve: http://{settings.host}:{settings.port}  (docs: /docs)  auth: {auth}  "
            f"load-format: {settings.load_format}", highlight=False, soft_wrap=True)
        if settings.load_format == "dummy":
            console.print("[bold yellow]WARNING:[/] load-format=dummy: every model has RANDOM weights; "
                          "outputs are meaningless (responses carry X-Plmserve-Load-Format: dummy)", soft_wrap=True)
        uvicorn.run(application, host=settings.host, port=settings.port, log_level=log_level,
                    log_config=log_config(), access_log=False,  # plmserve.access logs each request
                    timeout_keep_alive=settings.keep_alive_s,
                    timeout_graceful_shutdown=settings.shutdown_timeout_s)
