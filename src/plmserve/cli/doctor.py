"""``plmserve doctor``: what this machine offers plmserve, and what is missing.

    plmserve doctor            # a table: ok / warn / FAIL per check
    plmserve doctor --json     # the same as one JSON list

Checks (none of them downloads anything or creates the job database): plmserve/Python/torch
versions; CUDA and the device models will run on; every registered model and where its weights were
found (``models list``'s search, no network); the Hugging Face hub (offline mode, or one fast
reachability check); the job database (reachable, users); the homology search backends (pyhmmer,
``mmseqs`` on PATH, the configured FASTA database); free memory (RAM and GPU) and free disk in the
data and model folders. Exit code 1 when a check FAILs (e.g. the database cannot be reached), else 0.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from plmserve.cli._common import cli_errors


@dataclass
class Check:
    """One line of the report: ``status`` is ``ok``, ``warn`` or ``fail``."""

    area: str
    name: str
    status: str
    detail: str


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _existing_parent(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def check_runtime(settings: Any) -> list[Check]:
    """plmserve, Python and torch versions; CUDA; the device and dtype models will use."""
    from plmserve import __version__

    out = [Check("runtime", "plmserve", "ok", __version__),
           Check("runtime", "python", "ok", f"{platform.python_version()} ({platform.platform()})")]
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        return out + [Check("runtime", "torch", "fail", f"not importable: {exc}")]
    out.append(Check("runtime", "torch", "ok", f"{torch.__version__} ({torch.get_num_threads()} CPU threads)"))
    if torch.cuda.is_available():
        gpus = [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        out.append(Check("runtime", "CUDA", "ok", f"CUDA {torch.version.cuda}: " + "; ".join(gpus)))
    else:
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
        out.append(Check("runtime", "CUDA", "warn", f"no GPU visible ({built}): models run on the CPU"))
    from plmserve.models.esm3.loader import resolve_device, resolve_dtype

    try:
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        out.append(Check("runtime", "device", "ok",
                         f"{device} / {str(dtype).replace('torch.', '')} (PLMSERVE_DEVICE={settings.device}, "
                         f"PLMSERVE_DTYPE={settings.dtype})"))
    except Exception as exc:  # a bad PLMSERVE_DEVICE / PLMSERVE_DTYPE
        out.append(Check("runtime", "device", "fail", str(exc)))
    return out


def check_models(settings: Any) -> list[Check]:
    """Every registered model and where its weights were found on this machine (no network)."""
    from plmserve.cli.models import where_weights
    from plmserve.models.registry import list_models

    out = []
    if settings.load_format == "dummy":
        out.append(Check("models", "load format", "warn", "PLMSERVE_LOAD_FORMAT=dummy: RANDOM weights"))
    for spec in list_models():
        try:
            where = where_weights(spec, settings)
        except Exception as exc:  # an unreadable cache or folder
            out.append(Check("models", spec.slug, "warn", f"could not look: {exc}"))
            continue
        if where:
            out.append(Check("models", spec.slug, "ok", where))
        else:
            out.append(Check("models", spec.slug, "warn", f"no weights found (plmserve models pull {spec.slug})"))
    return out


def check_hub(settings: Any) -> list[Check]:
    """Offline mode, or whether the Hugging Face hub answers (one fast TCP check)."""
    from plmserve.models.hub import hub_endpoint, hub_offline, hub_unreachable

    if hub_offline(settings):
        return [Check("network", "Hugging Face hub", "ok", "offline mode: the hub is never contacted")]
    reason = hub_unreachable()
    if reason:
        return [Check("network", "Hugging Face hub", "warn",
                      f"{reason} (downloads fail; set PLMSERVE_OFFLINE=1 on a machine without network)")]
    return [Check("network", "Hugging Face hub", "ok", f"{hub_endpoint()} reachable")]


def check_database(settings: Any) -> list[Check]:
    """The job database: reachable (a connection and the users table), without creating it."""
    from sqlalchemy import create_engine, inspect, text

    from plmserve.cli.jobs import describe_database

    where = describe_database(settings)
    url = settings.resolved_database_url()
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.exists():
            free = os.access(_existing_parent(path.parent), os.W_OK)
            return [Check("database", "job database", "ok" if free else "fail",
                          f"{where}: not created yet (made on first use)"
                          + ("" if free else f"; {_existing_parent(path.parent)} is not writable"))]
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3} if url.startswith("postgres") else {})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                tables = inspect(conn).get_table_names()
                users = conn.execute(text("SELECT COUNT(*) FROM users")).scalar() if "users" in tables else 0
        finally:
            engine.dispose()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Check("database", "job database", "fail", f"{where}: cannot connect: {first}")]
    return [Check("database", "job database", "ok", f"{where}: reachable, {users} user(s)")]


def check_search(settings: Any) -> list[Check]:
    """Homology search backends and the configured sequence database."""
    from plmserve.align.search import mmseqs_binary

    out = []
    try:
        import pyhmmer

        out.append(Check("search", "pyhmmer", "ok", f"pyhmmer {pyhmmer.__version__}"))
    except ImportError as exc:
        out.append(Check("search", "pyhmmer", "fail", f"not importable: {exc}"))
    exe = mmseqs_binary()
    out.append(Check("search", "mmseqs", "ok" if exe else "warn",
                     exe or "not on PATH (the mmseqs backend needs it; Debian/Ubuntu: apt-get install mmseqs2)"))
    out.append(Check("search", "colabfold", "ok", f"server {settings.colabfold_url} (needs internet)"))
    db = settings.msa_database
    if db is None:
        out.append(Check("search", "sequence database", "warn",
                         "PLMSERVE_MSA_DATABASE not set (pass --db to msa search; MSA jobs need it)"))
    elif Path(db).is_file():
        out.append(Check("search", "sequence database", "ok", f"{db} ({_gib(Path(db).stat().st_size)})"))
    else:
        out.append(Check("search", "sequence database", "fail", f"PLMSERVE_MSA_DATABASE={db} does not exist"))
    return out


def check_resources(settings: Any) -> list[Check]:
    """Free memory (RAM, and each GPU's) and free disk in the data and model folders."""
    from plmserve.models.registry import _available_memory_bytes

    out = []
    avail = _available_memory_bytes()
    if avail is not None:
        out.append(Check("resources", "memory", "ok" if avail >= 2**30 else "warn", f"{_gib(avail)} available"))
    try:
        import torch

        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            free, total = torch.cuda.mem_get_info(i)
            out.append(Check("resources", f"cuda:{i} memory", "ok", f"{_gib(free)} free of {_gib(total)}"))
    except Exception as exc:  # pragma: no cover - a broken driver
        out.append(Check("resources", "GPU memory", "warn", str(exc)))
    folders = {"data dir": Path(settings.data_dir).expanduser()}
    if settings.model_dir:
        folders["model dir"] = Path(settings.model_dir).expanduser()
    for label, folder in folders.items():
        base = _existing_parent(folder)
        free = shutil.disk_usage(base).free
        note = "" if folder.exists() else f" (on {base}; the folder does not exist yet)"
        out.append(Check("resources", f"disk ({label})", "ok" if free >= 5 * 2**30 else "warn",
                         f"{_gib(free)} free at {folder}{note}"))
    return out


def run_checks(settings: Any) -> list[Check]:
    """All checks, in report order. Never raises: a check that breaks reports ``fail``."""
    out: list[Check] = []
    for check in (check_runtime, check_models, check_hub, check_database, check_search, check_resources):
        try:
            out.extend(check(settings))
        except Exception as exc:  # report, keep going
            out.append(Check(check.__name__.removeprefix("check_"), "check", "fail",
                             f"{type(exc).__name__}: {exc}"))
    return out


def register(app: typer.Typer) -> None:
    """Add ``doctor`` to the root CLI."""

    @app.command("doctor")
    @cli_errors
    def doctor(
        as_json: bool = typer.Option(False, "--json/--no-json", help="print one JSON list instead of a table"),
        model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="weights folder [env PLMSERVE_MODEL_DIR]"),
    ) -> None:
        """Check this machine: torch/CUDA, device, models and their weights, hub, job database,
        search backends, free memory and disk."""
        from plmserve.settings import get_settings

        checks = run_checks(get_settings(model_dir=model_dir))
        if as_json:
            print(json.dumps([asdict(c) for c in checks], indent=1))
        else:
            from rich.console import Console
            from rich.table import Table

            styles = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}
            table = Table("area", "check", "status", "detail", title="plmserve doctor")
            table.columns[3].overflow = "fold"
            for c in checks:
                table.add_row(c.area, c.name, styles.get(c.status, c.status), c.detail)
            Console(width=max(120, Console().width)).print(table)
        if any(c.status == "fail" for c in checks):
            raise typer.Exit(code=1)
