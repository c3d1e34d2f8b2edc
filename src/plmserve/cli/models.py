"""``plmserve models list|pull|convert``: what models exist, where their weights are, getting them.

* ``plmserve models list`` -- every registry model: slug, family, aliases, where its weights were
  found on this machine (or "not downloaded"). Never touches the network.
* ``plmserve models pull <slug> [--dir DIR]`` -- download the weights: Hugging Face models with
  ``huggingface_hub.snapshot_download`` (into the hub cache, or ``DIR/<slug>/`` -- the layout
  ``PLMSERVE_MODEL_DIR=DIR`` reads); PoET from its Zenodo record after printing its licence.
* ``plmserve models convert SRC DST [--family F]`` -- convert an official checkpoint with the family's
  ``plmserve.models.<family>.convert(src, dst)`` (ESM-2: fair-esm ``.pt`` -> HF folder; PoET:
  ``poet.ckpt`` <-> ``.safetensors``).
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import typer

from plmserve.cli._common import cli_errors, console, progress
from plmserve.errors import InvalidParameterError, WeightsNotFoundError

models_app = typer.Typer(
    name="models",
    help="List, download and convert model weights.",
    no_args_is_help=True,
    add_completion=False,
)


def _settings(model_dir: Path | None = None):
    from plmserve.settings import get_settings

    return get_settings(model_dir=model_dir)


def _offline(settings: Any) -> bool:
    from plmserve.models.hub import hub_offline

    return hub_offline(settings)


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet (deepest first)."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_created(dirs: list[Path]) -> None:
    """Remove folders a failed download created (deepest first), with whatever it left in them."""
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _hub_cached(repo: str) -> Path | None:
    """The newest cached snapshot of ``repo`` in the HF hub cache, without network, or None."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or an unreadable cache
        return None
    return path if any(path.iterdir()) else None


def where_weights(spec: Any, settings: Any) -> str | None:
    """Where the weights of ``spec`` are on this machine (a short description), or None.

    ESM-2 uses the family's own resolution; other families are checked without importing them:
    ``<model_dir>/<slug>/``, ``<model_dir>/<official file>``, and the HF hub cache.
    """
    if spec.family == "esm2":
        from plmserve.models.esm2 import find_local_weights

        loc = find_local_weights(spec, settings)
        return f"{loc.kind}: {loc.path}" if loc else None
    model_dir = getattr(settings, "model_dir", None)
    if model_dir:
        root = Path(model_dir).expanduser()
        for name in spec.official_files:
            for p in (root / name, root / spec.slug / name, root / spec.slug / Path(name).with_suffix(".safetensors").name):
                if p.is_file():
                    return f"file: {p}"
        if (root / spec.slug).is_dir() and any((root / spec.slug).iterdir()):
            return f"dir: {root / spec.slug}"
    repos = [spec.hf_repo] if spec.hf_repo else []
    repos += list((spec.config or {}).get("alt_hf_repos", ()))
    for repo in repos:
        snap = _hub_cached(repo)
        if snap is not None:
            return f"hf-hub: {snap}"
    return None


def _pull_hub(spec: Any, target: Path | None, settings: Any) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if spec.family == "esm2":
        patterns = ["config.json", "*.safetensors", "*.safetensors.index.json", "vocab.txt",
                    "special_tokens_map.json", "tokenizer_config.json"]  # fmt: skip
    else:
        patterns = None
    repos = [spec.hf_repo] + list((spec.config or {}).get("alt_hf_repos", ()))
    errors = []
    for repo in repos:
        console.print(f"downloading {repo} from the Hugging Face hub ...", highlight=False)
        try:
            path = snapshot_download(
                repo,
                allow_patterns=patterns,
                local_dir=str(target) if target is not None else None,
                token=os.environ.get("HF_TOKEN") or None,
            )
            return Path(path)
        except GatedRepoError:
            errors.append(
                f"{repo} is gated: accept its licence at https://huggingface.co/{repo} with your account, "
                f"then set HF_TOKEN to an access token of that account"
            )
        except RepositoryNotFoundError:
            errors.append(f"{repo} was not found on the hub (or needs HF_TOKEN)")
        except (HfHubHTTPError, OSError) as exc:
            errors.append(f"{repo}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise WeightsNotFoundError(f"could not download '{spec.slug}': " + "; ".join(errors))


def _pull_url(spec: Any, target_dir: Path) -> Path:
    import httpx

    name = spec.official_files[0] if spec.official_files else Path(spec.download_url.split("?")[0]).name
    dest = target_dir / name
    if dest.is_file():
        console.print(f"{dest} already exists; nothing to do", highlight=False)
        return dest
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with httpx.stream("GET", spec.download_url, follow_redirects=True, timeout=60.0) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length", 0)) or None
            with progress() as bar, partial.open("wb") as fh:
                task = bar.add_task(f"downloading {name}", total=total)
                for chunk in resp.iter_bytes(1 << 20):
                    fh.write(chunk)
                    bar.advance(task, len(chunk))
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise WeightsNotFoundError(f"downloading {spec.download_url} failed: {exc}") from exc
    partial.replace(dest)
    return dest


def _detect_family(src: Path) -> str | None:
    name = src.name.lower()
    if name.startswith("esm2") and name.endswith(".pt"):
        return "esm2"
    if "poet" in name or name.endswith(".ckpt"):
        return "poet"
    if name.startswith("esm3") and name.endswith((".pth", ".pt")):
        return "esm3"
    if name.startswith("esmc") and name.endswith((".pth", ".pt")):
        return "esmc"
    if src.is_file() and name.endswith((".pt", ".pth", ".ckpt")):
        try:  # peek at the keys with a safe, memory-mapped load
            import argparse

            import torch

            with torch.serialization.safe_globals([argparse.Namespace]):
                data = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return None
        state = data.get("model", data.get("state_dict", data)) if isinstance(data, dict) else {}
        keys = list(state)[:50] if isinstance(state, dict) else []
        if any("sentence_encoder.embed_tokens" in k or k == "embed_tokens.weight" for k in keys):
            return "esm2"
    return None


@models_app.command("list")
@cli_errors
def list_cmd(
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="weights folder (env PLMSERVE_MODEL_DIR)"),
) -> None:
    """Every registered model and where its weights are on this machine."""
    from rich.console import Console
    from rich.table import Table

    from plmserve.models.registry import list_models

    settings = _settings(model_dir)
    table = Table(title="plmserve models")
    for col in ("slug", "family", "aliases", "licence", "weights"):
        table.add_column(col, overflow="fold")
    for spec in list_models():
        where = where_weights(spec, settings)
        table.add_row(spec.slug, spec.family, ", ".join(spec.aliases), spec.licence or "",
                      where or "not downloaded")
    Console(width=max(120, Console().width)).print(table)

@models_app.command("pull")
@cli_errors
def pull_cmd(
    slug: str = typer.Argument(..., help="model slug or alias, e.g. esm2-650m"),
    target: Optional[Path] = typer.Option(
        None, "--dir", help="download into DIR/<slug>/ (the PLMSERVE_MODEL_DIR layout) instead of the hub cache"
    ),
) -> None:
    """Download a model's weights (needs the network)."""
    from plmserve.models.registry import get_spec

    spec = get_spec(slug)
    settings = _settings()
    if spec.licence:
        console.print(f"[bold]{spec.slug}[/]: licence {spec.licence}", highlight=False)
    if spec.gated:
        console.print(
            f"note: {spec.hf_repo} is gated -- accept its licence on https://huggingface.co/{spec.hf_repo} "
            "and set HF_TOKEN before pulling",
            highlight=False,
        )
    if _offline(settings):
        raise WeightsNotFoundError(
            f"cannot download '{spec.slug}': offline mode (HF_HUB_OFFLINE / PLMSERVE_OFFLINE is set). "
            f"Run `plmserve models pull {spec.slug} --dir <dir>` on a connected machine, copy <dir> here "
            f"and set PLMSERVE_MODEL_DIR=<dir>"
        )
    if spec.hf_repo:
        from plmserve.models.hub import OFFLINE_ADVICE, hub_unreachable

        unreachable = hub_unreachable()
        if unreachable is not None:
            raise WeightsNotFoundError(f"cannot download '{spec.slug}': {unreachable}; {OFFLINE_ADVICE}")
        dest = target / spec.slug if target else None
        created = _missing_dirs(dest) if dest is not None else []
        try:
            path = _pull_hub(spec, dest, settings)
        except BaseException:
            _remove_created(created)
            raise
    elif spec.download_url:
        base = target or (Path(settings.model_dir).expanduser() if settings.model_dir else None)
        if base is None:
            raise InvalidParameterError(
                f"'{spec.slug}' is a single file download: pass --dir DIR (then set PLMSERVE_MODEL_DIR=DIR)"
            )
        created = _missing_dirs(base)
        try:
            path = _pull_url(spec, base)
        except BaseException:
            _remove_created(created)
            raise
    else:
        raise InvalidParameterError(f"'{spec.slug}' has no download source in the registry")
    typer.echo(str(path))

@models_app.command("convert")
@cli_errors
def convert_cmd(
    src: Path = typer.Argument(..., help="official checkpoint (e.g. esm2_t33_650M_UR50D.pt, poet.ckpt)"),
    dst: Path = typer.Argument(..., help="output (ESM-2: a folder; PoET: a .safetensors or .ckpt file)"),
    family: Optional[str] = typer.Option(None, "--family", help="esm2 | poet | esm3 | esmc (default: detected)"),
) -> None:
    """Convert an official checkpoint with the model family's converter."""
    if not src.exists():
        raise FileNotFoundError(2, "No such file or directory", str(src))
    fam = family or _detect_family(src)
    if fam is None:
        raise InvalidParameterError(f"cannot tell the model family of {src}; pass --family esm2|poet|esm3|esmc")
    try:
        module = importlib.import_module(f"plmserve.models.{fam}")
    except ModuleNotFoundError:
        raise InvalidParameterError(f"unknown model family '{fam}' (known: esm2, poet, esm3, esmc)") from None
    fn = getattr(module, "convert", None)
    if fn is None:
        raise InvalidParameterError(f"the {fam} family provides no converter")
    out = fn(src, dst)
    typer.echo(str(out if out is not None else dst))



def register(app: typer.Typer) -> None:
    """Add the ``models`` sub-command group to the root CLI."""
    app.add_typer(models_app, name="models")
