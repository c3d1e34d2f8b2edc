"""Shared plumbing of the SDK's BioLM-style model route clients (:class:`~plmserve.client.esm2.ESM2API`
on ``/api/v2/``, :class:`~plmserve.client.esmc.ESMCAPI` on ``/api/v3/``).

Both post ``{"items": [{"sequence": ...}], "params": {...}}`` to ``<version>/<slug>/<action>/`` and
read the ``results`` list of the answer; only the API version and the result models differ.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict

from plmserve.client.base import APISession

ResultT = TypeVar("ResultT", bound=BaseModel)


class RouteResult(BaseModel):
    """Base of the routes' typed results: fields a newer server adds are kept (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow")


class PLMRouteAPI:
    """Base of a client of one model's ``<api_version>/<slug>/<action>/`` routes.

    Subclasses set :attr:`api_version` (``"v2"``, ``"v3"``) and define the public methods.
    """

    api_version: ClassVar[str]

    def __init__(self, session: APISession, slug: str):
        self.session = session
        self.slug = slug

    def _post(self, action: str, sequences: Sequence[str], params: dict[str, Any] | None) -> list[dict]:
        """POST ``sequences`` (and ``params`` when not None) to ``action``; the answer's ``results``.

        Raises:
            APIError: a non-2xx answer (see :meth:`APISession.request`).
        """
        body: dict[str, Any] = {"items": [{"sequence": s} for s in sequences]}
        if params is not None:
            body["params"] = params
        return self.session.post(f"{self.api_version}/{self.slug}/{action}/", json=body).json()["results"]

    def _results(self, model: type[ResultT], action: str, sequences: Sequence[str],
                 params: dict[str, Any] | None = None) -> list[ResultT]:
        """:meth:`_post`, each result row parsed as ``model``."""
        return [model(**r) for r in self._post(action, sequences, params)]

    def _encode(self, model: type[ResultT], sequences: Sequence[str], include: Sequence[str],
                repr_layers: Sequence[int]) -> list[ResultT]:
        """The ``encode`` action with its ``include`` / ``repr_layers`` params."""
        return self._results(model, "encode", sequences,
                             {"include": list(include), "repr_layers": list(repr_layers)})
