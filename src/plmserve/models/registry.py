"""Model registry: public names and aliases -> how to find and load the weights.

Each :class:`ModelSpec` says which family implements a model and where its weights may live.
Weight resolution (family loaders implement the details) searches, in order:

1. a local directory: ``<PLMSERVE_MODEL_DIR>/<slug>/`` (or an explicit ``local_dir``);
2. the Hugging Face hub (local cache first; download unless offline) for ``hf_repo``;
3. an official checkpoint file (fair-esm ``.pt``, PoET ``poet.ckpt``, ESM3 ``.pth``) found in the
   model directory, next to the slug directory, or given explicitly.

``load_format="dummy"`` builds the real architecture with random weights (vLLM's term) for smoke
tests and benchmarks; everything that serves such a model must say so.

:class:`ModelManager` loads models lazily on first use and keeps them resident.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from plmserve.errors import ModelLoadError, ModelNotFoundError, PlmserveError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One servable model.

    Attributes:
        slug: canonical public name (e.g. ``esm2-650m``), used in URLs and CLI flags.
        family: ``esm2`` | ``esm3`` | ``esmc`` | ``poet`` -- the package under ``plmserve.models`` whose
            ``load(spec, settings)`` builds it.
        aliases: other accepted names (official checkpoint names, client names).
        hf_repo: Hugging Face hub repository id, if any.
        official_files: file names of the official checkpoint format (first = main file).
        download_url: direct URL of the official checkpoint, when it is not on the hub.
        licence: licence of the weights, shown when pulling.
        gated: the hub repository requires accepting a licence (and ``HF_TOKEN``).
        config: family-specific architecture facts (layers, width, heads, ...).
    """

    slug: str
    family: str
    description: str
    aliases: tuple[str, ...] = ()
    hf_repo: str | None = None
    official_files: tuple[str, ...] = ()
    download_url: str | None = None
    licence: str | None = None
    gated: bool = False
    config: dict[str, Any] = field(default_factory=dict)


def _esm2(slug: str, name: str, layers: int, dim: int, heads: int, params: str) -> ModelSpec:
    return ModelSpec(
        slug=slug,
        family="esm2",
        description=f"ESM-2 {params} ({layers} layers, {dim} wide, {heads} heads), UniRef50",
        aliases=(name, f"facebook/{name}"),
        hf_repo=f"facebook/{name}",
        official_files=(f"{name}.pt", f"{name}-contact-regression.pt"),
        licence="MIT",
        config={"num_layers": layers, "embed_dim": dim, "attention_heads": heads, "fair_esm_name": name},
    )


ESM2_MODELS: tuple[ModelSpec, ...] = (
    _esm2("esm2-8m", "esm2_t6_8M_UR50D", 6, 320, 20, "8M"),
    _esm2("esm2-35m", "esm2_t12_35M_UR50D", 12, 480, 20, "35M"),
    _esm2("esm2-150m", "esm2_t30_150M_UR50D", 30, 640, 20, "150M"),
    _esm2("esm2-650m", "esm2_t33_650M_UR50D", 33, 1280, 20, "650M"),
    _esm2("esm2-3b", "esm2_t36_3B_UR50D", 36, 2560, 40, "3B"),
    _esm2("esm2-15b", "esm2_t48_15B_UR50D", 48, 5120, 40, "15B"),
)

POET_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        slug="poet",
        family="poet",
        description="PoET (Truong & Bepler, NeurIPS 2023), 1024 wide x 12 layers, official checkpoint",
        aliases=("poet-v1", "poet.ckpt"),
        official_files=("poet.ckpt",),
        download_url="https://zenodo.org/records/10061322/files/poet.ckpt?download=1",
        licence="CC BY-NC-SA 4.0 (non-commercial; see https://zenodo.org/records/10061322)",
        config={"zenodo_record": "10061322"},
    ),
)

ESM3_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        slug="esm3-open-2024-03",
        family="esm3",
        description="ESM3 small open (1.4B), esm3_sm_open_v1",
        aliases=("esm3-sm-open-v1", "esm3_sm_open_v1", "esm3-open"),
        hf_repo="EvolutionaryScale/esm3-sm-open-v1",
        official_files=("esm3_sm_open_v1.pth",),
        licence=(
            "EvolutionaryScale Cambrian Non-Commercial License (EvolutionaryScale repo, gated: accept it on "
            "the hub) / MIT (biohub repo, Biohub era)"
        ),
        gated=True,
        config={"alt_hf_repos": ("biohub/esm3-sm-open-v1",)},
    ),
)

# --- ESM C (issue 10) ---------------------------------------------------------------------------
ESMC_OPEN_LICENCE = (
    "Cambrian Open License (open, commercial use allowed; esm 3.2.1 LICENSE.md); the biohub/ESMC-300M "
    "re-release states MIT"
)
ESMC_NC_LICENCE = (
    "Cambrian Non-Commercial License: NON-COMMERCIAL USE ONLY (esm 3.2.1 LICENSE.md); the biohub re-release "
    "states MIT, check its model card before commercial use"
)


def _esmc(slug: str, params: str, layers: int, dim: int, heads: int, licence: str) -> ModelSpec:
    size = slug.split("-")[1]
    return ModelSpec(
        slug=slug,
        family="esmc",
        description=f"ESM C {params} (ESM Cambrian 2024-12; {layers} layers, {dim} wide, {heads} heads)",
        aliases=(f"{slug}-2024-12", f"esmc_{size}", f"EvolutionaryScale/{slug}-2024-12", f"biohub/ESMC-{size.upper()}"),
        hf_repo=f"biohub/ESMC-{size.upper()}",
        official_files=(f"esmc_{size}_2024_12_v0.pth",),
        licence=licence,
        config={"num_layers": layers, "embed_dim": dim, "attention_heads": heads,
                "alt_hf_repos": (f"EvolutionaryScale/{slug}-2024-12", f"biohub/{slug}-2024-12"),
                "forge_name": f"{slug}-2024-12"},
    )


ESMC_MODELS: tuple[ModelSpec, ...] = (
    _esmc("esmc-300m", "300M", 30, 960, 15, ESMC_OPEN_LICENCE),
    _esmc("esmc-600m", "600M", 36, 1152, 18, ESMC_NC_LICENCE),
)

ALL_MODELS: tuple[ModelSpec, ...] = ESM2_MODELS + POET_MODELS + ESM3_MODELS + ESMC_MODELS

_BY_NAME: dict[str, ModelSpec] = {}
for _spec in ALL_MODELS:
    for _name in (_spec.slug, *_spec.aliases):
        _BY_NAME[_name.lower()] = _spec


def list_models(family: str | None = None) -> list[ModelSpec]:
    """All registered models, optionally of one family, in registry order."""
    return [m for m in ALL_MODELS if family is None or m.family == family]


def get_spec(name: str, family: str | None = None) -> ModelSpec:
    """Look a model up by slug or alias (case-insensitive).

    Raises:
        ModelNotFoundError: unknown name, or a model of another family than ``family``.
    """
    spec = _BY_NAME.get(name.strip().lower())
    if spec is None or (family is not None and spec.family != family):
        known = ", ".join(m.slug for m in list_models(family))
        raise ModelNotFoundError(f"unknown model '{name}'; known models: {known}")
    return spec


def register(spec: ModelSpec) -> None:
    """Register an extra model (e.g. a fine-tune or a test model). Later names override."""
    global ALL_MODELS
    ALL_MODELS = tuple(m for m in ALL_MODELS if m.slug != spec.slug) + (spec,)
    for name in (spec.slug, *spec.aliases):
        _BY_NAME[name.lower()] = spec


def estimated_bytes(spec: ModelSpec) -> int | None:
    """Rough fp32 size of a model's weights from its registry config (transformer layers only:
    ``12 * layers * width**2`` parameters x 4 bytes), or None when the config does not say."""
    layers, width = spec.config.get("num_layers"), spec.config.get("embed_dim")
    if not layers or not width:
        return None
    return 4 * 12 * int(layers) * int(width) ** 2


def _available_memory_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(spec: ModelSpec, settings: Any) -> None:
    """Refuse to build a model on the CPU that cannot fit in the memory available now, instead of
    letting the operating system kill the server half-way (e.g. ``esm2-15b`` needs ~60 GB fp32).

    Raises:
        ModelLoadError: the estimate (:func:`estimated_bytes`) exceeds the available memory.
    """
    device = str(getattr(settings, "device", "auto"))
    if device.startswith("cuda"):
        return
    if device == "auto":
        try:
            import torch

            if torch.cuda.is_available():
                return
        except Exception:  # pragma: no cover - torch always importable here
            pass
    need, have = estimated_bytes(spec), _available_memory_bytes()
    if need is None or have is None or need <= have:
        return
    raise ModelLoadError(
        f"model '{spec.slug}' needs about {need / 2**30:.1f} GiB of memory for its fp32 weights, but only "
        f"{have / 2**30:.1f} GiB is available on this machine; use a smaller model or a GPU"
    )


class ModelManager:
    """Loads models lazily on first use and keeps them resident (one instance per slug).

    Family packages provide ``load(spec, settings) -> model`` in ``plmserve.models.<family>``.
    Loading is serialised per slug; a failed load is not cached (the next call retries) and its
    error is re-raised as a :class:`PlmserveError` (503 over HTTP).
    """

    def __init__(self, settings: Any):
        self.settings = settings
        self._models: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def loaded(self) -> list[str]:
        """Slugs of the models loaded so far."""
        return list(self._models)

    def put(self, slug: str, model: Any) -> None:
        """Install an already built model under ``slug`` (tests, notebooks)."""
        self._models[slug] = model

    def get(self, name: str, family: str | None = None) -> Any:
        """The model named ``name`` (slug or alias), loaded on first use and then kept resident.

        Raises:
            ModelNotFoundError: unknown name (404); WeightsNotFoundError / ModelLoadError (503).
        """
        spec = get_spec(name, family)
        if spec.slug in self._models:
            return self._models[spec.slug]
        with self._guard:
            lock = self._locks.setdefault(spec.slug, threading.Lock())
        with lock:
            if spec.slug in self._models:
                return self._models[spec.slug]
            family_mod = importlib.import_module(f"plmserve.models.{spec.family}")
            check_memory(spec, self.settings)
            try:
                model = family_mod.load(spec, self.settings)
            except PlmserveError:
                raise
            except MemoryError as exc:
                raise ModelLoadError(f"model '{spec.slug}' could not be loaded: out of memory") from exc
            except Exception as exc:  # a corrupt file, a shape mismatch ... -> 503 with the reason
                logger.exception("loading %s failed", spec.slug)
                raise ModelLoadError(f"model '{spec.slug}' could not be loaded: {exc}") from exc
            self._models[spec.slug] = model
            return model
