"""plmserve Python SDK: talk to a running plmserve server over HTTP.

::

    import plmserve.client
    session = plmserve.client.connect("http://127.0.0.1:8000", "alice", "secret-pw")
    session.poet          # PoetAPI: the OpenProtein SDK 0.2 PoET workflow (create_msa -> sample_prompt -> score ...)
    session.align, session.prompt, session.embedding.poet, session.load_job(id)
                          # the OpenProtein SDK 0.17 surface (plmserve.client.v1)
    session.jobs          # JobsAPI: list / get / wait / cancel
    session.esm2("esm2-8m").encode(["MKTAYIAKQR"])   # BioLM-compatible ESM-2 routes
    session.encode("esm2-8m", ["MKTAYIAKQR"])        # the same, shorter
    session.esmc("esmc-300m").encode(["MKTAYIAKQR"])  # ESM C (BioLM v3 routes)

Errors are the OpenProtein SDK's types (:mod:`plmserve.client.errors`).
"""

from __future__ import annotations

from typing import Sequence

from plmserve.client.base import APISession
from plmserve.client.errors import (
    APIError,
    AuthError,
    InvalidJob,
    InvalidParameterError,
    JobFailedException,
    MissingParameterError,
    TimeoutException,
)
from plmserve.client.esm2 import ESM2API, EncodeResult, LogProbResult, PredictResult
from plmserve.client.esmc import ESMCAPI, ESMCEncodeResult, ESMCLogProbResult, ESMCPredictResult
from plmserve.client.jobs import Job, JobsAPI, JobStatus
from plmserve.client.poet import (
    MSAFuture,
    MSASamplingMethod,
    PoetAPI,
    PoetGenerateFuture,
    PoetInputType,
    PoetScoreFuture,
    PoetScoreResult,
    PoetSingleSiteFuture,
    PoetSSPResult,
    PromptFuture,
)
from plmserve.client.v1 import AlignAPI, EmbeddingsAPI, PromptAPI, load_job


class Session(APISession):
    """A connection to a plmserve server with the service APIs as attributes."""

    @property
    def poet(self) -> PoetAPI:
        """The PoET/align workflow (OpenProtein SDK 0.2 ``PoetAPI``)."""
        return PoetAPI(self)

    @property
    def align(self) -> AlignAPI:
        """MSAs (OpenProtein SDK 0.17 ``session.align``)."""
        return AlignAPI(self)

    @property
    def prompt(self) -> PromptAPI:
        """Prompts and queries (OpenProtein SDK 0.17 ``session.prompt``)."""
        return PromptAPI(self)

    @property
    def embedding(self) -> EmbeddingsAPI:
        """The server's models (``session.embedding.poet``; OpenProtein SDK 0.17). The model
        list is fetched once per session."""
        if getattr(self, "_embedding", None) is None:
            self._embedding = EmbeddingsAPI(self)
        return self._embedding

    def load_job(self, job_id: str):
        """The 0.17-style future of a job by id (``MSAFuture``, ``Prompt``, ``ScoreFuture`` ...)."""
        return load_job(self, job_id)

    @property
    def jobs(self) -> JobsAPI:
        """The caller's jobs."""
        return JobsAPI(self)

    def esm2(self, slug: str = "esm2-8m") -> ESM2API:
        """Client of the ESM-2 model ``slug``."""
        return ESM2API(self, slug)

    def esmc(self, slug: str = "esmc-300m") -> ESMCAPI:
        """Client of the ESM C model ``slug`` (BioLM v3 routes)."""
        return ESMCAPI(self, slug)

    def _api(self, model: str):
        return ESMCAPI(self, model) if model.lower().startswith("esmc") else ESM2API(self, model)

    def encode(self, model: str, sequences: Sequence[str], include: Sequence[str] = ("mean",),
               repr_layers: Sequence[int] = (-1,)) -> list[EncodeResult] | list[ESMCEncodeResult]:
        """``POST /api/v2/<model>/encode/`` (ESM-2), ``/api/v3/<model>/encode/`` (ESM C)."""
        return self._api(model).encode(sequences, include=include, repr_layers=repr_layers)

    def predict(self, model: str, sequences: Sequence[str]) -> list[PredictResult] | list[ESMCPredictResult]:
        """``POST /api/v2/<model>/predict/`` (ESM-2), ``/api/v3/<model>/predict/`` (ESM C)."""
        return self._api(model).predict(sequences)

    def log_prob(self, model: str, sequences: Sequence[str]) -> list[LogProbResult] | list[ESMCLogProbResult]:
        """``POST /api/v2/<model>/log_prob/`` (ESM-2: PLL), ``/api/v3/<model>/log_prob/`` (ESM C: BioLM's)."""
        return self._api(model).log_prob(sequences)

    def wait(self, future_or_job, interval: float | None = None, timeout: float | None = None):
        """Wait for a future (returns its results) or a Job (returns the final job)."""
        if isinstance(future_or_job, Job):
            return future_or_job.wait(self, interval=interval, timeout=timeout)
        return future_or_job.wait(interval=interval, timeout=timeout)


def connect(url: str, username: str | None = None, password: str | None = None, *,
            api_key: str | None = None, **kwargs) -> Session:
    """Log in to a plmserve server.

    Args:
        url: the server root, e.g. ``http://127.0.0.1:8000`` (``/api/`` is added).
        username, password: a user created with ``plmserve users add NAME``.
        api_key: alternatively, one of the server's API keys.
        **kwargs: ``timeout``, ``poll_interval``, ``transport`` (see :class:`APISession`).

    Raises:
        AuthError: wrong username or password.
        APIError: the server cannot be reached.
    """
    return Session(url, username, password, api_key=api_key, **kwargs)


__all__ = [
    "AlignAPI", "EmbeddingsAPI", "PromptAPI", "load_job",
    "APIError", "APISession", "AuthError", "ESM2API", "ESMCAPI", "ESMCEncodeResult", "ESMCLogProbResult",
    "ESMCPredictResult", "EncodeResult", "InvalidJob", "InvalidParameterError",
    "Job", "JobFailedException", "JobStatus", "JobsAPI", "LogProbResult", "MSAFuture", "MSASamplingMethod",
    "MissingParameterError", "PoetAPI", "PoetGenerateFuture", "PoetInputType", "PoetSSPResult",
    "PoetScoreFuture", "PoetScoreResult", "PoetSingleSiteFuture", "PredictResult", "PromptFuture",
    "Session", "TimeoutException", "connect",
]
