"""ESM C computations the batching scheduler can batch (:mod:`plmserve.serving.scheduler`).

Registered for family ``esmc`` (the engine is :class:`plmserve.models.esmc.engine.ESMCEngine`):

* ``encode`` / ``predict``: one unit per sequence, cost = residues + 2 (BOS/EOS); parameters
  ``include`` / ``repr_layers`` (encode) as the engine's;
* ``log_prob``: ``method="pll"`` is one unit per canonical residue (one masked copy each, summed
  back per sequence), ``method="biolm"`` one unmasked unit per sequence;
* ``forward_tokens``: one unit per token-id row (Forge ``logits`` / ``forward_and_sample``), cost
  = the row's length; parameters as :meth:`ESMCEngine.forward_tokens`.

The variant-scoring passes of both families are in :mod:`plmserve.serving.methods_marginals`.
Every ``run`` calls the engine's own batched method on the units of a batch, so a scheduled
result equals the engine's direct answer up to float32 summation order (padding is masked).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from plmserve.serving.scheduler import BatchMethod, Unit, _sum_per_item, register_method

FAMILY = "esmc"


def _ids(seq: str) -> np.ndarray:
    from plmserve.models.esmc.alphabet import encode_residues

    return encode_residues(seq)


def _sequence_units(engine: Any, sequences: Sequence[str], params: dict) -> list[Unit]:
    return [Unit(cost=len(_ids(s)) + 2, item=i, payload=s) for i, s in enumerate(sequences)]


def _encode(engine: Any, seqs: list[str], params: dict) -> list[Any]:
    return engine.encode(seqs, include=tuple(params["include"]), repr_layers=tuple(params["repr_layers"]))


def _predict(engine: Any, seqs: list[str], params: dict) -> list[Any]:
    return engine.predict(seqs)


def _log_prob_units(engine: Any, sequences: Sequence[str], params: dict) -> list[Unit]:
    from plmserve.errors import InvalidParameterError
    from plmserve.models.esmc.alphabet import CANONICAL_IDS

    method = params.get("method", "pll")
    if method not in ("pll", "biolm"):
        raise InvalidParameterError(f"log_prob: unknown method '{method}'; use 'pll' or 'biolm'")
    if method == "biolm":
        return _sequence_units(engine, sequences, params)
    units: list[Unit] = []
    for i, s in enumerate(sequences):
        r = _ids(s)
        for p in np.nonzero(np.isin(r, CANONICAL_IDS))[0]:
            units.append(Unit(cost=len(r) + 2, item=i, payload=(r, int(p))))
    return units


def _log_prob(engine: Any, payloads: list[Any], params: dict) -> list[Any]:
    if params.get("method", "pll") == "biolm":
        return engine.log_prob(payloads, method="biolm")
    lps = engine.masked_log_probs([(r, (p,)) for r, p in payloads])
    return [float(lp[0, r[p]]) for (r, p), lp in zip(payloads, lps)]


def _token_units(engine: Any, rows: Sequence[Sequence[int]], params: dict) -> list[Unit]:
    rows = engine.check_forward_tokens(rows, hidden_states=params.get("hidden_states"),
                                       ith_hidden_layer=int(params.get("ith_hidden_layer", -1)))
    return [Unit(cost=len(r), item=i, payload=r) for i, r in enumerate(rows)]


def _forward_tokens(engine: Any, rows: list[Any], params: dict) -> list[Any]:
    return engine.forward_tokens(rows, **params)


register_method(FAMILY, "encode", BatchMethod(expand=_sequence_units, run=_encode))
register_method(FAMILY, "predict", BatchMethod(expand=_sequence_units, run=_predict))
register_method(FAMILY, "log_prob", BatchMethod(expand=_log_prob_units, run=_log_prob, combine=_sum_per_item))
register_method(FAMILY, "forward_tokens", BatchMethod(expand=_token_units, run=_forward_tokens))
