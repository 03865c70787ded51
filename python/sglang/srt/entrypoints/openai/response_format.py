"""``response_format`` of a chat request (contract 5.2): the typed body field and the grammar it
becomes in the internal request's ``sampling_params``.

``text`` adds nothing; ``json_object`` is the JSON schema ``{"type": "object"}``; ``json_schema``
is its ``schema``; ``structural_tag`` (SGLang's ``structures`` + ``triggers`` form, or xgrammar's
``format`` form) is passed as JSON text to the grammar backend, which compiles it (a bad grammar
is the backend's 400).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_REQUIRED = "schema_ is required for json_schema response format request."


class JsonSchemaSpec(BaseModel):
    """``response_format.json_schema``: the schema is ``schema`` in JSON (``schema_`` here)."""

    model_config = ConfigDict(populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StructureInfo(BaseModel):
    """One tagged structure: text between ``begin`` and ``end`` follows ``schema``."""

    model_config = ConfigDict(populate_by_name=True)

    begin: str
    schema_: dict[str, Any] = Field(alias="schema")
    end: str


class StructuralTagFormat(BaseModel):
    """SGLang's form (``structures`` + ``triggers``) or xgrammar's (``format``)."""

    type: Literal["structural_tag"]
    structures: list[StructureInfo] | None = None
    triggers: list[str] | None = None
    format: dict[str, Any] | None = None


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat | StructuralTagFormat,
    Field(discriminator="type"),
]


def response_format_params(fmt: Any) -> dict[str, str]:
    """The grammar ``sampling_params`` of a response format (``{}`` for none or ``text``).
    ValueError with the contract's message when a json_schema format has no schema, or a
    structural tag has neither form."""
    if fmt is None or isinstance(fmt, TextFormat):
        return {}
    if isinstance(fmt, JsonObjectFormat):
        return {"json_schema": json.dumps({"type": "object"})}
    if isinstance(fmt, JsonSchemaFormat):
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise ValueError(SCHEMA_REQUIRED)
        return {"json_schema": json.dumps(fmt.json_schema.schema_)}
    return {"structural_tag": structural_tag_text(fmt)}


def structural_tag_text(fmt: StructuralTagFormat) -> str:
    """The JSON text of a structural tag, in the form the grammar backend reads."""
    if fmt.format is not None:
        if fmt.structures is not None:
            raise ValueError("response_format: a structural_tag has either 'format' or "
                             "'structures' and 'triggers', not both.")
        return json.dumps({"type": "structural_tag", "format": fmt.format})
    if fmt.structures is None or fmt.triggers is None:
        raise ValueError("response_format: a structural_tag needs 'structures' and 'triggers' "
                         "(or 'format').")
    return json.dumps({"type": "structural_tag",
                       "structures": [s.model_dump(by_alias=True) for s in fmt.structures],
                       "triggers": fmt.triggers})
