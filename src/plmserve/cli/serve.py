"""``plmserve serve``: run the HTTP server (uvicorn) with every public contract.

Settings come from the environment (``PLMSERVE_*``, see :mod:`plmserve.settings`); flags given on
the command line override them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional, get_args, get_origin

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
    executor: str | None = None,
    ray_address: str | None = None,
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
        executor=executor,
        ray_address=ray_address,
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
    return _count_users(settings) > 0


def _count_users(settings) -> int:
    """Number of job-service users in the job store; 0 when the store does not exist yet (it is
    not created here)."""
    url = settings.resolved_database_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return 0
    from plmserve.jobs.store import JobStore

    store = JobStore(url)
    try:
        return len(store.list_users())
    finally:
        store.close()


def auth_summary(settings) -> str:
    """The banner's ``auth:`` part: API keys and job-service users (both accept requests)."""
    if settings.no_auth:
        return "OFF (--no-auth, loopback only)"
    users = _count_users(settings)
    parts = [f"{len(settings.api_keys)} API key(s)", f"{users} job-service user(s)"]
    return ", ".join(parts)


#: help for settings whose field has no ``description`` (fields that have one use it)
_SETTING_HELP = {
    "host": "address to bind",
    "port": "TCP port",
    "no_auth": "accept requests without credentials (127.0.0.1 only)",
    "load_format": "auto: real weights; dummy: RANDOM weights (smoke tests, benchmarks)",
    "device": "auto | cpu | cuda | cuda:N",
    "dtype": "auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16",
    "offline": "never contact the Hugging Face hub (also HF_HUB_OFFLINE=1)",
    "max_items": "ESM-2: most sequences per request",
    "max_residues": "ESM-2: most residues per request",
    "toks_per_batch": "ESM-2: tokens per forward batch",
    "esm3_batch_window_ms": "ESM3: how long a request waits for others to batch with",
    "data_dir": "job store (plmserve.db), artifacts and the MSA search cache",
    "database_url": "SQLAlchemy URL of the job database (default: sqlite:///<data_dir>/plmserve.db)",
    "msa_database": "FASTA file searched for homologs (pyhmmer/mmseqs backends)",
    "msa_backend": "homology search backend",
    "colabfold_url": "ColabFold MSA server for the colabfold backend",
    "workers": "job worker threads",
}


def settings_help() -> str:
    """Every ``PLMSERVE_*`` environment variable with its default, generated from
    :class:`plmserve.settings.Settings` so that the list stays complete (shown by ``serve --help``)."""
    from pydantic_core import PydanticUndefined

    from plmserve.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "PLMSERVE_")
    entries = ["[bold]Settings[/] (environment variables; the flags above override them):"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            try:
                default = field.default_factory()  # type: ignore[call-arg]
            except TypeError:  # a factory that takes the other fields' values
                default = "computed"
        elif field.default is PydanticUndefined:
            default = "required"
        else:
            default = field.default
        if default is None:
            default = "unset"
        elif isinstance(default, list):
            default = "[]" if not default else str(default)
        text = f"{prefix}{name.upper()}"
        description = field.description or _SETTING_HELP.get(name)
        if get_origin(field.annotation) is Literal:
            choices = " | ".join(map(str, get_args(field.annotation)))
            description = f"{description} ({choices})" if description else choices
        if description:
            text += f": {description}"
        text += f" \\[default: {default}]"
        entries.append(text)
    return "\n".join(entries)


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

    @app.command("serve", epilog=settings_help())
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
        executor: Optional[str] = typer.Option(
            None, "--executor", help="where jobs run: inprocess (default) or ray (docs/deploy.md; env PLMSERVE_EXECUTOR)"),
        ray_address: Optional[str] = typer.Option(
            None, "--ray-address", help="with --executor ray: auto, or HOST:PORT of a Ray head (default: a local Ray)"),
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
        if executor is not None and executor not in ("inprocess", "ray"):
            from plmserve.errors import InvalidParameterError

            raise InvalidParameterError(f"--executor must be 'inprocess' or 'ray', not '{executor}'")
        settings = build_settings(host, port, load_format, no_auth, api_key, model_dir, executor, ray_address,
                                  models, shutdown_timeout)
        if settings.executor == "ray":  # issue 11: connect and check the store is reachable before serving
            from plmserve.jobs.ray_executor import connect

            connect(settings)

        import uvicorn

        from plmserve.api.app import create_app

        application = create_app(settings)
        auth = auth_summary(settings)
        console.print(
            f"plmserve: http://{settings.host}:{settings.port}  (dashboard: /, docs: /docs)  auth: {auth}  "
            f"load-format: {settings.load_format}", highlight=False, soft_wrap=True)
        # load-format=dummy: create_app logged the RANDOM-weights warning once already
        uvicorn.run(application, host=settings.host, port=settings.port, log_level=log_level,
                    log_config=log_config(), access_log=False,  # plmserve.access logs each request
                    timeout_keep_alive=settings.keep_alive_s,
                    timeout_graceful_shutdown=settings.shutdown_timeout_s)
