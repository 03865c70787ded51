"""Docs-notebook patch: small server limits for CI machines, and nest_asyncio when available."""

from __future__ import annotations

import subprocess

from sglang.utils import launch_server_cmd as _launch_server_cmd

DOC_LIMITS = "--max-running-requests 128 --max-total-tokens 20480 --disable-cuda-graph"

try:  # notebooks run an event loop already; Engine.generate needs to nest
    import nest_asyncio

    nest_asyncio.apply()
except ImportError:
    pass


def _patch_server_args() -> None:
    from sglang.srt.server_args import ServerArgs

    original = ServerArgs.__post_init__

    def patched(self: ServerArgs) -> None:
        self.max_running_requests = self.max_running_requests or 128
        self.max_total_tokens = self.max_total_tokens or 20480
        self.disable_cuda_graph = True
        original(self)

    if not getattr(ServerArgs.__post_init__, "_doc_patched", False):
        patched._doc_patched = True  # type: ignore[attr-defined]
        ServerArgs.__post_init__ = patched  # type: ignore[method-assign]


_patch_server_args()


def launch_server_cmd(command: str, host: str = "0.0.0.0", port: int | None = None
                      ) -> tuple[subprocess.Popen, int]:
    return _launch_server_cmd(f"{command} {DOC_LIMITS}", host=host, port=port)
