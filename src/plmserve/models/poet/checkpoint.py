"""Reading and writing PoET weights: the official Lightning-style ``.ckpt`` and a safetensors export.

Official file (Zenodo record 10061322, ``poet.ckpt``; spec ``shared/specs/poet-model.md`` §3)::

    {"hyper_parameters": {"model_spec": {"init_args": {...}}},   # may be argparse/jsonargparse
     "state_dict": {"model.<module key>": tensor, ...}}          # Namespace objects instead of dicts

Loading is always done with ``torch.load(weights_only=True)``: no code from the file is executed.
Non-tensor objects that torch's restricted unpickler does not know (``argparse.Namespace``, a
Lightning ``AttributeDict``, a jsonargparse ``Namespace`` ...) are listed with
:func:`torch.serialization.get_unsafe_globals_in_checkpoint` and mapped to an inert attribute
dictionary (:class:`_Record`) under their original names; they can carry data, never behaviour.

The safetensors export stores the module keys (no ``model.`` prefix) and the constructor arguments
as JSON in the metadata (``poet_init_args``).
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from plmserve.errors import ModelLoadError
from .model import PoETConfig

logger = logging.getLogger(__name__)

SAFETENSORS_FORMAT = "plmserve-poet-v1"


class _Record(dict):
    """Inert stand-in for an unknown pickled class: a dict that also exposes its keys as
    attributes. Built by the restricted unpickler via ``__new__`` + ``__setstate__``/items."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            for part in state:
                if isinstance(part, Mapping):
                    self.update(part)
        elif isinstance(state, Mapping):
            self.update(state)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _stub_for(qualified: str) -> tuple[type, str]:
    return (type(qualified.rsplit(".", 1)[-1], (_Record,), {"__module__": __name__}), qualified)


def _plain(obj: Any) -> Any:
    """Recursively turn records/namespaces into dicts (for hyperparameters)."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if hasattr(obj, "__dict__") and not isinstance(obj, (Tensor, type)):
        return {k: _plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def read_official_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read an official (Lightning-style) PoET checkpoint safely.

    Returns:
        ``(state_dict, init_args)``: the module state dict with the ``model.`` prefix removed
        (tensors on CPU, stored dtype), and the constructor arguments as a plain dict (None
        when the file carries none).

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: not a torch checkpoint, or no ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    stubs = [_stub_for(name) for name in unsafe]
    if unsafe:
        logger.info("%s: mapping pickled classes %s to plain records", path, ", ".join(unsafe))
    try:
        with torch.serialization.safe_globals(stubs):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler refuses anything else
        raise ModelLoadError(f"{path}: could not read the checkpoint safely ({exc})") from exc
    if not isinstance(ckpt, Mapping):
        raise ModelLoadError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt if all(isinstance(v, Tensor) for v in ckpt.values()) else None)
    if not isinstance(state, Mapping) or not state:
        raise ModelLoadError(f"{path}: no 'state_dict' in the checkpoint (keys: {sorted(ckpt)[:10]})")
    module_state: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            continue
        # the official loader strips everything up to the first '.' (the Lightning module prefix)
        module_key = key.split(".", 1)[1] if key.startswith("model.") else key
        module_state[module_key] = value
    init_args = None
    hyper = _plain(ckpt.get("hyper_parameters"))
    if isinstance(hyper, Mapping):
        spec = hyper.get("model_spec")
        if isinstance(spec, Mapping) and isinstance(spec.get("init_args"), Mapping):
            init_args = dict(spec["init_args"])
    return module_state, init_args


def resolve_config(state: Mapping[str, Tensor], init_args: Mapping[str, Any] | None, source: str) -> PoETConfig:
    """The hyperparameters, inferred from the tensor shapes and cross-checked with ``init_args``.

    Raises:
        ModelLoadError: the stated hyperparameters disagree with the shapes.
    """
    inferred = PoETConfig.from_state_dict(state)
    if init_args:
        try:
            stated = PoETConfig.from_init_args(init_args)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: bad hyper_parameters init_args {init_args}: {exc}") from exc
        if not stated.same_architecture(inferred):
            raise ModelLoadError(
                f"{source}: hyper_parameters {stated.init_args()} disagree with the tensor shapes "
                f"{inferred.init_args()}"
            )
        return stated
    return inferred


def save_safetensors(state: Mapping[str, Tensor], cfg: PoETConfig, path: str | Path) -> None:
    """Write the module state dict and the constructor arguments to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {"format": SAFETENSORS_FORMAT, "poet_init_args": json.dumps(cfg.init_args())}
    save_file(tensors, str(path), metadata=meta)


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read a safetensors export: ``(state_dict, init_args or None)``.

    Raises:
        ModelLoadError: unreadable file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    state = {(k.split(".", 1)[1] if k.startswith("model.") else k): v for k, v in state.items()}
    init_args = json.loads(meta["poet_init_args"]) if "poet_init_args" in meta else None
    return state, init_args


def save_official_checkpoint(state: Mapping[str, Tensor], cfg: PoETConfig, path: str | Path) -> None:
    """Write the official layout with plain dicts (readable by ``torch.load(weights_only=True)``
    and by the official ``score.py``)."""
    ckpt = {
        "hyper_parameters": {"model_spec": {"init_args": cfg.init_args()}},
        "state_dict": {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in state.items()},
    }
    torch.save(ckpt, str(path))


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], PoETConfig]:
    """Read either format (by suffix: ``.safetensors`` or anything else = torch checkpoint) and
    return the module state dict and the checked hyperparameters."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state, init_args = read_safetensors(path)
    else:
        state, init_args = read_official_checkpoint(path)
    return state, resolve_config(state, init_args, str(path))
