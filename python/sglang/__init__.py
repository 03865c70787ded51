"""SGLang-compatible LLM serving: a native C++/CUDA core behind a thin Python shell.

Importing ``sglang`` stays light: the frontend language is a pure client, so neither torch nor the
native extensions (``sglang._core``, ``sglang._cuda``) are imported here. The runtime
(``sglang.srt``) imports them when it starts.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.5.23"

__all__ = ["Engine", "__version__"]


def __getattr__(name: str) -> Any:
    # Runtime entry points load lazily, so `import sglang` stays a light client import.
    if name == "Engine":
        from sglang.srt.entrypoints.engine import Engine

        return Engine
    raise AttributeError(f"module 'sglang' has no attribute {name!r}")
