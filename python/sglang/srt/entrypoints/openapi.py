"""OpenAPI request-body schemas of the routes that parse their own bodies.

The native routes read JSON whatever the Content-Type (curl -d sends form encoding), so FastAPI
cannot infer their bodies; these helpers give each route its schema (``openapi_extra``) from the
same pydantic models the route parses with, self-contained (no ``$ref``). ``sampling_params`` is
described field by field from ``SamplingParams``, so clients, docs and the schema fuzz test
(tests/py/server/test_schema_fuzz.py) see every parameter.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, TypeAdapter

from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.sampling.sampling_params import SamplingParams


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(dict(defs[ref.split("/")[-1]]))
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _request_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The requestBody object of a route whose body is ``model``."""
    return _request_body(_inline_refs(model.model_json_schema()))


@functools.cache
def sampling_params_schema() -> dict[str, Any]:
    schema = _inline_refs(TypeAdapter(SamplingParams).json_schema())
    schema["additionalProperties"] = False
    schema.pop("required", None)
    return schema


def generate_body_schema() -> dict[str, Any]:
    """The /generate requestBody, with sampling_params described field by field."""
    schema = _inline_refs(GenerateReqInput.model_json_schema())
    sp = sampling_params_schema()
    schema["properties"]["sampling_params"] = {
        "anyOf": [sp, {"type": "array", "items": {"anyOf": [sp, {"type": "null"}]}},
                  {"type": "null"}],
        "default": None,
    }
    return _request_body(schema)
