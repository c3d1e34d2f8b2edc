"""A complete OpenAPI document: error statuses of every route, the multipart file fields of the
OpenProtein upload routes and the form body of the login routes.

FastAPI documents what it can see in the signatures (parameters, JSON bodies, 200 and 422); the
routes that read files or forms from the raw request and the errors raised as
:class:`~plmserve.errors.PlmserveError` are added here, from one table, when the document is
first built.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"description": "what is wrong and where (a string; a list for 422)"}},
    "required": ["detail"],
}

_DESCRIPTIONS = {
    400: "Bad input or a request over a server limit (the message names the limit and the value)",
    401: "Missing or invalid credentials",
    404: "Unknown model, job or route object (also models outside the server's allowlist)",
    409: "The job has not finished (or cannot be canceled any more)",
    413: "Request body or uploaded file too large (names the limit)",
    422: "Parameters or body do not match the schema",
    429: "Too many concurrent jobs or login attempts (Retry-After)",
    503: "Model queue full, model not loadable or cannot fit in memory, or shutting down (Retry-After)",
}

#: (path regex, HTTP method or None for all) -> statuses beyond 200/422
_STATUS_TABLE: list[tuple[str, str | None, tuple[int, ...]]] = [
    (r"^/api/v1/login/", None, (400, 401, 413, 429)),
    (r"^/api/v2/", None, (400, 401, 404, 413, 503)),
    (r"^/api/v3/", None, (400, 401, 404, 413, 503)),
    (r"^/api/v1/(generate_tensor|logits|forge)", None, (400, 401, 404, 413, 503)),
    (r"^/api/v1/", "post", (400, 401, 404, 409, 413, 429, 503)),
    (r"^/api/v1/", None, (400, 401, 404, 409, 413, 503)),
]

#: multipart file field of the upload routes (path suffix -> field)
_FILE_FIELDS = {
    "/align/msa": "msa_file",
    "/align/upload_prompt": "prompt_file",
    "/poet/score": "variant_file",
}


def _statuses(path: str, method: str) -> tuple[int, ...]:
    for pattern, m, codes in _STATUS_TABLE:
        if re.search(pattern, path) and (m is None or m == method):
            return codes
    return ()


def complete_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Add error responses, file fields and the login form to a FastAPI OpenAPI document (in place)."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps.setdefault("Error", ERROR_SCHEMA)
    ref = {"$ref": "#/components/schemas/Error"}
    from plmserve.models.registry import list_models

    esm2_slugs = [m.slug for m in list_models("esm2")]
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if path.startswith("/api/v2/{slug}"):
                for param in op.get("parameters", []):
                    if param.get("name") == "slug" and param.get("in") == "path":
                        param["schema"] = {"type": "string", "enum": esm2_slugs, "title": "Slug",
                                           "description": "canonical slugs (aliases are accepted too)"}
            responses = op.setdefault("responses", {})
            for code in _statuses(path, method):
                responses.setdefault(str(code), {"description": _DESCRIPTIONS[code],
                                                  "content": {"application/json": {"schema": ref}}})
            if "422" in responses:
                responses["422"] = {"description": _DESCRIPTIONS[422],
                                    "content": {"application/json": {"schema": ref}}}
            if method == "post":
                for suffix, field in _FILE_FIELDS.items():
                    if path.endswith(suffix) and "requestBody" not in op:
                        op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
                            "type": "object", "required": [field],
                            "properties": {field: {"type": "string", "format": "binary",
                                                   "description": "the file (FASTA, a3m, Stockholm or CSV)"}}}}}}
                if "/login/" in path and "requestBody" not in op:
                    op["requestBody"] = {"required": False, "content": {"application/x-www-form-urlencoded": {
                        "schema": {"type": "object", "properties": {
                            "username": {"type": "string"}, "password": {"type": "string", "format": "password"}}}}}}
    return schema


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            app.openapi_schema = complete_openapi(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
