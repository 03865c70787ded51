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

from sglang.srt.managers.io_struct import UNSUPPORTED_FIELDS, GenerateReqInput
from sglang.srt.managers.request_validator import RID_MAX_CHARS
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


# Ranges SamplingParams.verify enforces, stated in the schema too.
SAMPLING_RANGES: dict[str, dict[str, Any]] = {
    "max_new_tokens": {"minimum": 0},
    "min_new_tokens": {"minimum": 0},
    "temperature": {"minimum": 0},
    "top_p": {"exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"minimum": -1},
    "min_p": {"minimum": 0, "maximum": 1},
    "frequency_penalty": {"minimum": -2, "maximum": 2},
    "presence_penalty": {"minimum": -2, "maximum": 2},
    "repetition_penalty": {"exclusiveMinimum": 0, "maximum": 2},
    "n": {"minimum": 1},
    "stream_interval": {"minimum": 1},
}


def _constrain(prop: dict[str, Any], bounds: dict[str, Any]) -> None:
    """Adds ``bounds`` to the numeric branches of a property schema."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("integer", "number"):
            branch.update(bounds)


@functools.cache
def sampling_params_schema() -> dict[str, Any]:
    schema = _inline_refs(TypeAdapter(SamplingParams).json_schema())
    schema["additionalProperties"] = False
    schema.pop("required", None)
    for name, bounds in SAMPLING_RANGES.items():
        _constrain(schema["properties"][name], bounds)
    return schema


def generate_body_schema() -> dict[str, Any]:
    """The /generate requestBody: exactly one input kind, sampling_params described field by
    field, request ids non-empty, and the fields not supported yet null only."""
    schema = _inline_refs(GenerateReqInput.model_json_schema())
    props = schema["properties"]
    sp = sampling_params_schema()
    props["sampling_params"] = {
        "anyOf": [sp, {"type": "array", "items": {"anyOf": [sp, {"type": "null"}]}},
                  {"type": "null"}],
        "default": None,
    }
    rid = {"type": "string", "minLength": 1, "maxLength": RID_MAX_CHARS}
    props["rid"] = {"anyOf": [rid, {"type": "array", "items": rid}, {"type": "null"}],
                    "default": None}
    for name, need in UNSUPPORTED_FIELDS.items():
        props[name] = {"type": "null", "default": None, "description": f"Not supported yet "
                       f"(needs {need}): any other value is refused with 400."}
    props["image_data"] = {
        "anyOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}, {"type": "null"}],
        "default": None,
        "description": "Images of vision-language models: per prompt an image (path, URL, "
                       "base64, data URL, or a processor_output / precomputed_embedding object) "
                       "or a list of them; for a batch, one entry per prompt. A 400 on "
                       "text-only models."}  # fmt: skip
    inputs = ("text", "input_ids", "input_embeds")
    schema["oneOf"] = [
        {"required": [given], "properties": {other: {"type": "null"}
                                             for other in inputs if other != given}}
        for given in inputs
    ]
    return _request_body(schema)


def specialize_for_model(openapi: dict[str, Any], vocab_size: int, hidden_size: int) -> None:
    """Adds the served model's numbers to the /generate body schema: token ids inside the
    vocabulary, the hidden size of input_embeds rows (described, not constrained: generating
    rows of hundreds of numbers would slow every client-side generator down)."""
    ops = openapi.get("paths", {}).get("/generate", {})
    ids = {"type": "integer", "minimum": 0, "maximum": vocab_size - 1}
    for op in ops.values():
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        props = schema["properties"]
        for name in ("input_ids", "token_ids_logprob"):
            one, batch = props[name]["anyOf"][0]["oneOf"]
            one["items"] = ids
            batch["items"]["items"] = ids
        one, batch = props["input_embeds"]["anyOf"][0]["oneOf"]
        for rows in (one["items"], batch["items"]["items"]):
            rows["description"] = f"{hidden_size} numbers (the model's hidden size)"
        sp = props["sampling_params"]["anyOf"][0]
        sp["properties"]["stop_token_ids"]["anyOf"][0]["items"] = ids
