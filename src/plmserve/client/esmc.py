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

from typing import Optional, Sequence

from plmserve.client._plm import PLMRouteAPI, RouteResult
from plmserve.client.base import APISession


class LayerEmbedding(RouteResult):
    """A mean embedding at one layer."""

    layer: int
    embedding: list[float]


class LayerPerTokenEmbeddings(RouteResult):
    """Per-residue embeddings ``[L][d]`` at one layer."""

    layer: int
    embeddings: list[list[float]]


class ESMCEncodeResult(RouteResult):
    """One v3 ``encode`` result; only requested outputs are set."""

    embeddings: Optional[list[LayerEmbedding]] = None
    per_token_embeddings: Optional[list[LayerPerTokenEmbeddings]] = None
    logits: Optional[list[list[float]]] = None
    vocab_tokens: Optional[list[str]] = None


class ESMCPredictResult(RouteResult):
    """``predict``: ``[L][20]`` logits, the input tokens (``_`` at masks), the 20 column labels."""

    logits: list[list[float]]
    sequence_tokens: list[str]
    vocab_tokens: list[str]


class ESMCLogProbResult(RouteResult):
    """``log_prob`` in nats."""

    log_prob: float


class ESMCAPI(PLMRouteAPI):
    """Client of one ESM C model's v3 routes (``esmc-300m`` or ``esmc-600m``)."""

    api_version = "v3"

    def __init__(self, session: APISession, slug: str = "esmc-300m"):
        super().__init__(session, slug)

    def encode(self, sequences: Sequence[str], include: Sequence[str] = ("mean",),
               repr_layers: Sequence[int] = (-1,)) -> list[ESMCEncodeResult]:
        """Mean / per-token embeddings and logits (``include``: mean, per_token, logits); at most 8
        sequences per call (the server's v3 limit)."""
        return self._encode(ESMCEncodeResult, sequences, include, repr_layers)

    def predict(self, sequences: Sequence[str]) -> list[ESMCPredictResult]:
        """Logits at every position of sequences containing ``<mask>``."""
        return self._results(ESMCPredictResult, "predict", sequences)

    def log_prob(self, sequences: Sequence[str], method: str = "biolm") -> list[ESMCLogProbResult]:
        """``biolm``: one unmasked pass, log-softmax over the 20 canonical amino acids, summed;
        ``pll``: the masked pseudo-log-likelihood (L passes)."""
        return self._results(ESMCLogProbResult, "log_prob", sequences, {"method": method})
