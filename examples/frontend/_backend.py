"""Where the examples find the server: $SGLANG_URL, else SGLang's default http://localhost:30000."""

import os

import sglang as sgl


def connect() -> None:
    url = os.environ.get("SGLANG_URL", "http://localhost:30000")
    sgl.set_default_backend(sgl.RuntimeEndpoint(url))
