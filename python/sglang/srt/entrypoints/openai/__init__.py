"""The OpenAI-compatible API (contract section 5): each route translates its body into the one
internal request ``/generate`` uses (``GenerateReqInput``) and shapes the engine's outputs."""
