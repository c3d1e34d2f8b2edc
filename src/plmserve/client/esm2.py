"""ESM-2 route clients of the SDK: ``encode``, ``predict``, ``log_prob`` (BioLM-compatible
``POST /api/v2/<slug>/<action>/``; the server side is :mod:`plmserve.api.biolm`).

Results are typed (pydantic) with numpy-friendly lists::

    esm = session.esm2("esm2-8m")
    out = esm.encode(["MKTAYIAKQR"], include=["mean"])     # [EncodeResult]
    out[0].mean_representations["6"]                        # 320 floats (last layer of esm2-8m)
    esm.log_prob(["MKTAYIAKQR"])[0].log_prob                # pseudo-log-likelihood, nats
"""

from __future__ import annotations

from typing import Optional, Sequence

from plmserve.client._plm import PLMRouteAPI, RouteResult


class EncodeResult(RouteResult):
    """One ``encode`` result; only requested outputs are set (layer keys are strings)."""

    sequence_index: int
    mean_representations: Optional[dict[str, list[float]]] = None
    representations: Optional[dict[str, list[list[float]]]] = None
    bos_representations: Optional[dict[str, list[float]]] = None
    contacts: Optional[list[list[float]]] = None
    logits: Optional[list[list[float]]] = None
    attentions: Optional[list[list[float]]] = None


class PredictResult(RouteResult):
    """``predict``: ``[L][20]`` logits, the input tokens and the 20 column labels."""

    logits: list[list[float]]
    sequence_tokens: list[str]
    alphabet_tokens: list[str]


class LogProbResult(RouteResult):
    """``log_prob``: the pseudo-log-likelihood (natural log, summed over residues)."""

    log_prob: float


class ESM2API(PLMRouteAPI):
    """Client of one ESM-2 model's routes (``slug`` such as ``esm2-8m`` or ``esm2-650m``)."""

    api_version = "v2"

    def encode(self, sequences: Sequence[str], include: Sequence[str] = ("mean",),
               repr_layers: Sequence[int] = (-1,)) -> list[EncodeResult]:
        """Representations/contacts/logits of each sequence (``include``: mean, per_token, bos,
        contacts, logits, attentions)."""
        return self._encode(EncodeResult, sequences, include, repr_layers)

    def predict(self, sequences: Sequence[str]) -> list[PredictResult]:
        """Logits at every position of sequences containing ``<mask>`` tokens."""
        return self._results(PredictResult, "predict", sequences)

    def log_prob(self, sequences: Sequence[str]) -> list[LogProbResult]:
        """Pseudo-log-likelihood of each sequence."""
        return self._results(LogProbResult, "log_prob", sequences)
