"""ESM-2 route clients of the SDK: ``encode``, ``predict``, ``log_prob`` (BioLM-compatible
``POST /api/v2/<slug>/<action>/``; the server side is :mod:`plmserve.api.biolm`).

Results are typed (pydantic) with numpy-friendly lists::

    esm = session.esm2("esm2-8m")
    out = esm.encode(["MKTAYIAKQR"], include=["mean"])     # [EncodeResult]
    out[0].mean_representations["6"]                        # 320 floats (last layer of esm2-8m)
    esm.log_prob(["MKTAYIAKQR"])[0].log_prob                # pseudo-log-likelihood, nats
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from plmserve.client.base import APISession


class EncodeResult(BaseModel):
    """One ``encode`` result; only requested outputs are set (layer keys are strings)."""

    model_config = ConfigDict(extra="allow")
    sequence_index: int
    mean_representations: Optional[dict[str, list[float]]] = None
    representations: Optional[dict[str, list[list[float]]]] = None
    bos_representations: Optional[dict[str, list[float]]] = None
    contacts: Optional[list[list[float]]] = None
    logits: Optional[list[list[float]]] = None
    attentions: Optional[list[list[float]]] = None


class PredictResult(BaseModel):
    """``predict``: ``[L][20]`` logits, the input tokens and the 20 column labels."""

    model_config = ConfigDict(extra="allow")
    logits: list[list[float]]
    sequence_tokens: list[str]
    alphabet_tokens: list[str]


class LogProbResult(BaseModel):
    """``log_prob``: the pseudo-log-likelihood (natural log, summed over residues)."""

    model_config = ConfigDict(extra="allow")
    log_prob: float


class ESM2API:
    """Client of one ESM-2 model's routes (``slug`` such as ``esm2-8m`` or ``esm2-650m``)."""

    def __init__(self, session: APISession, slug: str):
        self.session = session
        self.slug = slug

    def _post(self, action: str, sequences: Sequence[str], params: dict[str, Any] | None) -> list[dict]:
        body: dict[str, Any] = {"items": [{"sequence": s} for s in sequences]}
        if params is not None:
            body["params"] = params
        return self.session.post(f"v2/{self.slug}/{action}/", json=body).json()["results"]

    def encode(self, sequences: Sequence[str], include: Sequence[str] = ("mean",),
               repr_layers: Sequence[int] = (-1,)) -> list[EncodeResult]:
        """Representations/contacts/logits of each sequence (``include``: mean, per_token, bos,
        contacts, logits, attentions)."""
        rows = self._post("encode", sequences, {"include": list(include), "repr_layers": list(repr_layers)})
        return [EncodeResult(**r) for r in rows]

    def predict(self, sequences: Sequence[str]) -> list[PredictResult]:
        """Logits at every position of sequences containing ``<mask>`` tokens."""
        return [PredictResult(**r) for r in self._post("predict", sequences, None)]

    def log_prob(self, sequences: Sequence[str]) -> list[LogProbResult]:
        """Pseudo-log-likelihood of each sequence."""
        return [LogProbResult(**r) for r in self._post("log_prob", sequences, None)]
