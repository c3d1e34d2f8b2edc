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
import time
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


def weights_present(spec: ModelSpec, settings: Any) -> bool:
    """Whether the weights of ``spec`` are on this machine (model directory, official file or the
    Hugging Face cache), without loading or downloading anything."""
    from pathlib import Path

    if spec.family == "esm2":
        try:
            from plmserve.models.esm2 import find_local_weights

            return find_local_weights(spec, settings) is not None
        except Exception:  # an unreadable folder counts as present: loading reports the error
            return True
    model_dir = getattr(settings, "model_dir", None)
    if model_dir:
        root = Path(model_dir).expanduser()
        for name in spec.official_files:
            if (root / name).is_file() or (root / spec.slug / name).is_file():
                return True
        if (root / spec.slug).is_dir() and any((root / spec.slug).iterdir()):
            return True
    repos = ([spec.hf_repo] if spec.hf_repo else []) + list((spec.config or {}).get("alt_hf_repos", ()))
    for repo in repos:
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(repo, local_files_only=True))
            if any(path.iterdir()):
                return True
        except Exception:
            continue
    return False


def model_nbytes(model: Any) -> int | None:
    """Bytes of the parameters and buffers of a loaded model (a ``torch.nn.Module`` or an object
    with a ``.model`` module), or None when it has none."""
    try:
        import torch
    except Exception:  # pragma: no cover
        return None
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "model", None)
    if not isinstance(module, torch.nn.Module):
        return None
    return int(sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers())))


class ModelManager:
    """Loads models lazily on first use and keeps them resident (one instance per slug), within
    an allowlist and a memory budget.

    Family packages provide ``load(spec, settings) -> model`` in ``plmserve.models.<family>``.
    Loading is serialised per slug; a failed load is not cached (the next call retries) and its
    error is re-raised as a :class:`PlmserveError` (503 over HTTP).

    * **Allowlist** (``settings.served_models``): other models are refused with 404. Without one,
      every registered model may be served; on a server (``allow_download = False``) only from
      weights already on the machine (loading runs offline: nothing is downloaded).
    * **Memory budget** (``settings.memory_budget_bytes``, and in any case the memory available on
      the machine for CPU models): loading a model that does not fit evicts the least recently
      used idle models first; a model that still cannot fit is refused with 503 naming the sizes.
    """

    def __init__(self, settings: Any):
        self.settings = settings
        self._models: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.RLock()
        self._last_used: dict[str, float] = {}
        self._sizes: dict[str, int] = {}
        #: callables ``(slug) -> bool``: True while the model is in use (not evictable)
        self.busy_checks: list[Any] = []
        #: callables ``(slug, model)`` run after a model was evicted
        self.on_evict: list[Any] = []
        #: False on servers (set by :func:`plmserve.serving.ops.install`): without an allowlist,
        #: only weights already present are loaded (nothing is downloaded on a client's request)
        self.allow_download = True

    # ------------------------------------------------------------------ allowlist
    def allowlist(self) -> list[str] | None:
        """Slugs of ``settings.served_models`` (aliases resolved), or None when unset."""
        names = getattr(self.settings, "served_models", None)
        if not names:
            return None
        return [get_spec(n).slug for n in names]

    def is_allowed(self, spec: ModelSpec) -> bool:
        """Whether ``spec`` may be loaded (see the class docstring; weights presence is checked
        at load time)."""
        allowed = self.allowlist()
        return allowed is None or spec.slug in allowed or spec.slug in self._models

    def loadable(self) -> list[str]:
        """Slugs that are loaded or could be loaded now: the allowlist (every model with
        ``load_format="dummy"``), or without one the models whose weights are present."""
        allowed = self.allowlist()
        candidates = [get_spec(s) for s in allowed] if allowed is not None else list(ALL_MODELS)
        out = []
        for spec in candidates:
            if spec.slug in self._models or getattr(self.settings, "load_format", "auto") == "dummy" \
                    or weights_present(spec, self.settings):
                out.append(spec.slug)
        return out

    def loaded(self) -> list[str]:
        """Slugs of the models loaded so far."""
        return list(self._models)

    def put(self, slug: str, model: Any) -> None:
        """Install an already built model under ``slug`` (tests, notebooks)."""
        self._models[slug] = model
        self._last_used[slug] = time.monotonic()
        size = model_nbytes(model)
        if size is not None:
            self._sizes[slug] = size

    # ------------------------------------------------------------------ memory
    def used_bytes(self) -> int:
        """Bytes taken by the resident models (measured after loading)."""
        return sum(self._sizes.get(s, 0) for s in self._models)

    def _busy(self, slug: str) -> bool:
        return any(check(slug) for check in self.busy_checks)

    def evict(self, slug: str) -> bool:
        """Drop a resident model (its memory is freed once no request holds it); False if absent."""
        with self._guard:
            model = self._models.pop(slug, None)
            self._sizes.pop(slug, None)
            self._last_used.pop(slug, None)
        if model is None:
            return False
        logger.info("model %s evicted (least recently used) to make room", slug)
        for hook in self.on_evict:
            try:
                hook(slug, model)
            except Exception:  # pragma: no cover - a hook must not block eviction
                logger.exception("eviction hook for %s", slug)
        import gc

        gc.collect()
        return True

    def _evict_one(self, keep: str) -> bool:
        idle = [s for s in sorted(self._models, key=lambda s: self._last_used.get(s, 0.0))
                if s != keep and not self._busy(s)]
        return self.evict(idle[0]) if idle else False

    def _make_room(self, spec: ModelSpec) -> None:
        need = estimated_bytes(spec)
        budget = getattr(self.settings, "memory_budget_bytes", None)
        if budget is not None and need is not None:
            if need > budget:
                raise ModelLoadError(
                    f"model '{spec.slug}' needs about {need / 2**30:.2f} GiB, more than the memory budget of "
                    f"{budget / 2**30:.2f} GiB (server setting PLMSERVE_MEMORY_BUDGET_BYTES)")
            while self.used_bytes() + need > budget and self._evict_one(spec.slug):
                pass
            if self.used_bytes() + need > budget:
                raise ModelLoadError(
                    f"model '{spec.slug}' needs about {need / 2**30:.2f} GiB; {self.used_bytes() / 2**30:.2f} GiB of "
                    f"the {budget / 2**30:.2f} GiB memory budget is taken by models in use "
                    f"({', '.join(self._models)}); retry later")
        while True:
            try:
                check_memory(spec, self.settings)
                return
            except ModelLoadError:
                if not self._evict_one(spec.slug):
                    raise

    # ------------------------------------------------------------------ loading
    def _load_settings(self) -> Any:
        """The settings handed to the family loader: offline unless an allowlist names models
        explicitly (without one, only weights already present are served)."""
        if self.allow_download or self.allowlist() is not None or getattr(self.settings, "offline", False):
            return self.settings
        try:
            return self.settings.model_copy(update={"offline": True})
        except AttributeError:  # a plain namespace (tests)
            return self.settings

    def get(self, name: str, family: str | None = None) -> Any:
        """The model named ``name`` (slug or alias), loaded on first use and then kept resident.

        Raises:
            ModelNotFoundError: unknown name, or a model outside the allowlist (404).
            WeightsNotFoundError / ModelLoadError: no weights, unusable weights, or no room in the
                memory budget even after evicting idle models (503, with the sizes).
        """
        spec = get_spec(name, family)
        if spec.slug in self._models:
            self._last_used[spec.slug] = time.monotonic()
            return self._models[spec.slug]
        if not self.is_allowed(spec):
            raise ModelNotFoundError(
                f"model '{spec.slug}' is not served by this server; served models: "
                f"{', '.join(self.allowlist() or [])} (server option --models / PLMSERVE_SERVED_MODELS)")
        with self._guard:
            lock = self._locks.setdefault(spec.slug, threading.Lock())
        with lock:
            if spec.slug in self._models:
                self._last_used[spec.slug] = time.monotonic()
                return self._models[spec.slug]
            family_mod = importlib.import_module(f"plmserve.models.{spec.family}")
            with self._guard:
                self._make_room(spec)
            try:
                model = family_mod.load(spec, self._load_settings())
            except PlmserveError:
                raise
            except MemoryError as exc:
                raise ModelLoadError(f"model '{spec.slug}' could not be loaded: out of memory") from exc
            except Exception as exc:  # a corrupt file, a shape mismatch ... -> 503 with the reason
                logger.exception("loading %s failed", spec.slug)
                raise ModelLoadError(f"model '{spec.slug}' could not be loaded: {exc}") from exc
            with self._guard:
                self._models[spec.slug] = model
                self._last_used[spec.slug] = time.monotonic()
                size = model_nbytes(model)
                self._sizes[spec.slug] = size if size is not None else (estimated_bytes(spec) or 0)
            return model
