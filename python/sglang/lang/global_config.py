"""Process-wide settings of the frontend language (``sgl.global_config``)."""

from __future__ import annotations

from typing import Any


class GlobalConfig:
    """Settings read by the interpreter and backends; change them by attribute assignment."""

    def __init__(self) -> None:
        # 0: quiet; >= 2: print each program's text when it finishes.
        self.verbosity = 0
        # The backend used when run() gets none (set_default_backend).
        self.default_backend: Any = None
        # Decoding options sent with every gen.
        self.skip_special_tokens_in_output = True
        self.spaces_between_special_tokens_in_out = True
        # Cache a program's constant prefix before run_batch (tracing).
        self.enable_precache_with_tracing = True
        # join("concate_and_append") through the backend's KV path when it has one.
        self.enable_parallel_encoding = True


global_config = GlobalConfig()
