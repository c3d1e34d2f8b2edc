"""ESM C clients of the SDK: BioLM v3 ``encode`` / ``predict`` / ``log_prob``
(``POST /api/v3/<slug>/<action>/``; the server side is :mod:`plmserve.api.biolm_v3`).

::

    esmc = session.esmc("esmc-300m")
    out = esmc.encode(["MKTAYIAKQR"], include=["mean", "logits"])
    out[0].embeddings[0].layer, out[0].embeddings[0].embedding     # 29, 960 floats (last block)
    esmc.log_prob(["MKTAYIAKQR"])[0].log_prob                       # BioLM's single-pass log-prob
    esmc.log_prob(["MKTAYIAKQR"], method="pll")[0].log_prob         # masked pseudo-log-likelihood

Layers are ESM C block outputs before the final LayerNorm (``0..n-1``, ``-1`` = last).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from plmserve.client.base import APISession


class LayerEmbedding(BaseModel):
    """A mean embedding at one layer."""

    model_config = ConfigDict(extra="allow")
    layer: int
    embedding: list[float]


class LayerPerTokenEmbeddings(BaseModel):
    """Per-residue embeddings ``[L][d]`` at one layer."""

    model_config = ConfigDict(extra="allow")
    layer: int
    embeddings: list[list[float]]


class ESMCEncodeResult(BaseModel):
    """One v3 ``encode`` result; only requested outputs are set."""

    model_config = ConfigDict(extra="allow")
    embeddings: Optional[list[LayerEmbedding]] = None
    per_token_embeddings: Optional[list[LayerPerTokenEmbeddings]] = None
    logits: Optional[list[list[float]]] = None
    vocab_tokens: Optional[list[str]] = None


class ESMCPredictResult(BaseModel):
    """``predict``: ``[L][20]`` logits, the input tokens (``_`` at masks), the 20 column labels."""

    model_config = ConfigDict(extra="allow")
    logits: list[list[float]]
    sequence_tokens: list[str]
    vocab_tokens: list[str]


class ESMCLogProbResult(BaseModel):
    """``log_prob`` in nats."""

    model_config = ConfigDict(extra="allow")
    log_prob: float


class ESMCAPI:
    """Client of one ESM C model's v3 routes (``esmc-300m`` or ``esmc-600m``)."""

    def __init__(self, session: APISession, slug: str = "esmc-300m"):
        self.session = session
        self.slug = slug

    def _post(self, action: str, sequences: Sequence[str], params: dict[str, Any] | None) -> list[dict]:
        body: dict[str, Any] = {"items": [{"sequence": s} for s in sequences]}
        if params is not None:
            body["params"] = params
        return self.session.post(f"v3/{self.slug}/{action}/", json=body).json()["results"]

    def encode(self, sequences: Sequence[str], include: Sequence[str] = ("mean",),
               repr_layers: Sequence[int] = (-1,)) -> list[ESMCEncodeResult]:
        """Mean / per-token embeddings and logits (``include``: mean, per_token, logits); at most 8
        sequences per call (the server's v3 limit)."""
        rows = self._post("encode", sequences, {"include": list(include), "repr_layers": list(repr_layers)})
        return [ESMCEncodeResult(**r) for r in rows]

    def predict(self, sequences: Sequence[str]) -> list[ESMCPredictResult]:
        """Logits at every position of sequences containing ``<mask>``."""
        return [ESMCPredictResult(**r) for r in self._post("predict", sequences, None)]

    def log_prob(self, sequences: Sequence[str], method: str = "biolm") -> list[ESMCLogProbResult]:
        """``biolm``: one unmasked pass, log-softmax over the 20 canonical amino acids, summed;
        ``pll``: the masked pseudo-log-likelihood (L passes)."""
        return [ESMCLogProbResult(**r) for r in self._post("log_prob", sequences, {"method": method})]
