"""ModelRunner: owns the model, its KV pool and attention backend; runs one forward per step.

The engine builds it from a model path (resolved by ``model_loader.resolve``), sizes the KV pool
from ``kv_bytes_per_token`` / ``profile_max_num_tokens`` and the scheduler's ``num_slots``, then
each step turns the scheduler's plan into a ``ForwardBatch`` and calls ``forward``, which returns
float32 logits (and optionally hidden states) of the batch's ``logits_rows`` for sampling.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.hf_transformers_utils import get_config, get_generation_config
from sglang.srt.layers.attention import create_attention_backend
from sglang.srt.layers.logits_processor import LogitsOutput
from sglang.srt.mem_cache.kv_pool import KVPool
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.model_loader.loader import LOAD_FORMATS, load_model
from sglang.srt.model_loader.resolve import resolve_model_path

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    return dev


class ModelRunner:
    """Loads a causal LM and runs forward passes over the paged KV pool.

    Attributes: ``model_config``, ``model``, ``device``, ``dtype``, ``tokenizer_path`` (what
    ``get_tokenizer`` should be given: the tokenizer path if one was passed, else the resolved
    model), ``kv_pool`` (after ``init_kv_pool``).
    """

    def __init__(
        self,
        model_path: str,
        tokenizer_path: str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str = "auto",
        load_format: str = "auto",
        context_length: int | None = None,
        trust_remote_code: bool = False,
        random_seed: int = 0,
        attention_backend: str = "torch_native",
    ) -> None:
        if load_format not in LOAD_FORMATS:
            raise ValueError(f"Unknown load format '{load_format}'; expected one of {LOAD_FORMATS}")
        self.device = resolve_device(device)
        self.source = resolve_model_path(model_path)
        self.tokenizer_path: Any = tokenizer_path or self.source
        hf_config = get_config(self.source, trust_remote_code=trust_remote_code)
        self.generation_config: dict[str, Any] = get_generation_config(self.source)
        self.model_config = ModelConfig.from_hf_config(
            hf_config,
            generation_config=self.generation_config,
            context_length=context_length,
            dtype=dtype,
            device=self.device,
        )
        self.dtype = self.model_config.dtype
        torch.manual_seed(random_seed)
        self.model = load_model(
            self.source,
            self.model_config,
            load_format=load_format,
            device=self.device,
            seed=random_seed,
        )
        self.attn_backend = create_attention_backend(attention_backend)
        self.kv_pool: KVPool | None = None
        logger.info(
            "loaded %s (%s) on %s in %s with %d threads",
            model_path,
            self.model_config.architecture,
            self.device,
            self.dtype,
            torch.get_num_threads(),
        )

    @classmethod
    def from_server_args(cls, args: Any) -> ModelRunner:
        """A runner configured by a ServerArgs (the engine and bench_one_batch use this)."""
        return cls(
            model_path=args.model_path,
            tokenizer_path=args.tokenizer_path,
            dtype=args.dtype,
            device=args.device,
            load_format=args.load_format,
            context_length=args.context_length,
            trust_remote_code=args.trust_remote_code,
            random_seed=args.random_seed,
            attention_backend=args.attention_backend,
        )

    def kv_bytes_per_token(self) -> int:
        cfg = self.model_config
        return KVPool.bytes_per_token(
            cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, self.dtype
        )

    def profile_max_num_tokens(self, mem_fraction_static: float) -> int | None:
        """KV tokens that fit the GPU once the weights are loaded, keeping
        ``1 - mem_fraction_static`` of the total free for activations; None on CPU (the
        engine then uses its own default)."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        available = free - total * (1.0 - mem_fraction_static)
        return max(int(available // self.kv_bytes_per_token()), 0)

    def init_kv_pool(self, num_slots: int) -> KVPool:
        """Allocate the KV pool with ``num_slots`` rows (``Scheduler.num_slots``)."""
        cfg = self.model_config
        self.kv_pool = KVPool(
            num_slots,
            cfg.num_hidden_layers,
            cfg.num_key_value_heads,
            cfg.head_dim,
            self.dtype,
            self.device,
        )
        return self.kv_pool

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the input embedding table for ``input_ids`` (a new tensor, model dtype)."""
        return torch.nn.functional.embedding(input_ids, self.model.model.embed_tokens.weight)

    def forward(self, batch: ForwardBatch) -> LogitsOutput:
        """Run the model on one step; writes the batch's K/V into the pool."""
        if self.kv_pool is None:
            raise RuntimeError("init_kv_pool() must be called before forward()")
        batch.kv_pool = self.kv_pool
        batch.attn_backend = self.attn_backend
        with torch.inference_mode():
            self.attn_backend.init_forward_metadata(batch)
            return self.model(batch)
