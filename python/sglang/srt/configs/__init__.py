"""Model configuration: what the runner needs to know about a checkpoint, normalized from HF."""

from __future__ import annotations

from sglang.srt.configs.model_config import ModelConfig, RopeConfig, resolve_dtype

__all__ = ["ModelConfig", "RopeConfig", "resolve_dtype"]
