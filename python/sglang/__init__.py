"""SGLang-compatible LLM serving: a native C++/CUDA core behind a thin Python shell.

Importing ``sglang`` stays light: the frontend language is a pure client, so neither torch nor the
native extensions (``sglang._core``, ``sglang._cuda``) are imported here. The runtime
(``sglang.srt``) imports them when it starts.
"""

from __future__ import annotations

__version__ = "0.5.23"

__all__ = ["__version__"]
