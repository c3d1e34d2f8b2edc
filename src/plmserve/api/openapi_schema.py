"""JSON Schema helpers for request bodies documented by hand (``openapi_extra``, schema routes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def inlined_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of pydantic ``model`` with every ``{"$ref": "#/$defs/..."}`` replaced by
    the definition it names, and no ``$defs`` left: a self-contained schema that can be placed
    anywhere in an OpenAPI document or served alone (the BioLM v3 schema route).

    Raises:
        KeyError: a ``$ref`` names a definition pydantic did not emit (a pydantic bug).
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.split("/")[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)
