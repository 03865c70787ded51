"""ModelRunner: owns the model, its KV pool and attention backend; runs one forward per step.

The engine builds it from a model path (resolved by ``model_loader.resolve``), sizes the KV pool
from ``kv_bytes_per_token`` / ``profile_max_num_tokens`` and the scheduler's ``num_slots``, then
each step turns the scheduler's plan into a ``ForwardBatch`` and calls ``forward``, which returns
float32 logits (and optionally hidden states) of the batch's ``logits_rows`` for sampling.

Tensor parallelism: one ModelRunner per rank (``tp_rank`` of ``tp_size``, each in its own
process), joined in a ``torch.distributed`` group (``tp_group``, or made here from
``dist_init_method``). Each builds the model with its shard of the weights (heads, MLP slices,
vocabulary slice) and a KV pool of its own KV heads; every rank must run the same steps in the
same order (the collectives inside the model pair them up), and each gets the full logits.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.distributed.parallel_state import (
    SINGLE,
    TPGroup,
    default_backend,
    init_tp_group,
    kv_heads_per_rank,
    split_heads,
    tp_group_scope,
)
from sglang.srt.eplb.expert_distribution import (
    ExpertDistributionRecorder,
    RealExpertDistributionRecorder,
    set_global_expert_distribution_recorder,
)
from sglang.srt.hf_transformers_utils import get_config, get_generation_config
from sglang.srt.layers.attention import CPU_ONLY, canonical_backend, create_attention_backend
from sglang.srt.layers.decode_layers_cpu import FusedDecodeLayers
from sglang.srt.layers.linear import Linear, calibrate_small_batch_gemm
from sglang.srt.layers.logits_processor import LogitsOutput
from sglang.srt.mem_cache.kv_pool import KVPool
from sglang.srt.model_executor.cuda_graph_runner import CudaGraphRunner
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.model_loader.loader import (
    LOAD_FORMATS,
    WEIGHTS_UPDATED,
    WeightUpdateError,
    load_model,
    load_replacement,
    resolve_quantization,
)
from sglang.srt.model_loader.resolve import resolve_model_path
from sglang.srt.models.registry import get_model_class

logger = logging.getLogger(__name__)

# Decode batches up to this size replay CUDA graphs unless --cuda-graph-max-bs says otherwise
# (never above --max-running-requests).
DEFAULT_CUDA_GRAPH_MAX_BS = 160


@functools.lru_cache(maxsize=1)
def auto_cpu_dtype(repeats: int = 3) -> torch.dtype:
    """``--dtype auto`` for dense weights on CPU: bfloat16 when a prefill-shaped bfloat16 matmul
    ([256, 1024] x [1024, 4096], the same probe for every model, so the choice is a property of
    the machine) runs at least 1.5x faster than in float32 on this CPU (AMX tiles, or AVX-512
    BF16 where oneDNN uses them), else float32. Measured once per process (~0.1 s)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1024, generator=gen)
    w = torch.randn(4096, 1024, generator=gen)
    times = {}
    with torch.inference_mode():
        for dt in (torch.float32, torch.bfloat16):
            xd, wd = x.to(dt), w.to(dt)
            torch.nn.functional.linear(xd, wd)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                torch.nn.functional.linear(xd, wd)
                best = min(best, time.perf_counter() - start)
            times[dt] = best
    choice = (
        torch.bfloat16 if times[torch.bfloat16] * 1.5 <= times[torch.float32] else torch.float32
    )
    logger.info(
        "--dtype auto on CPU: %s (prefill-shaped matmul: float32 %.2f ms, bfloat16 %.2f ms)",
        choice,
        times[torch.float32] * 1e3,
        times[torch.bfloat16] * 1e3,
    )
    return choice


def compile_mlps(model: torch.nn.Module, max_tokens: int) -> None:
    """--enable-torch-compile: each decoder layer's MLP through torch.compile (dynamic shapes,
    inductor), used for steps of at most ``max_tokens`` tokens; the first steps compile."""
    for module in model.modules():
        if hasattr(module, "compiled_mlp"):
            module.compiled_mlp = torch.compile(module.mlp, dynamic=True)
            module.compiled_max_tokens = max_tokens


def enable_cpu_kernels(model: torch.nn.Module, fused_decode: bool = True) -> None:
    """Switch the layers that have fused C++ CPU kernels (norms, activations) to them, and let a
    model whose layers the C++ decode runner can compose hand it its decode steps."""
    for module in model.modules():
        if hasattr(module, "use_cpu_kernels"):
            module.use_cpu_kernels = True
    for module in model.modules():
        if hasattr(module, "fused_decode"):
            runner = FusedDecodeLayers(module)
            module.fused_decode = runner if fused_decode and runner.supported else None


def enable_gpu_kernels(model: torch.nn.Module) -> None:
    """Switch the layers that have fused Triton kernels (norms, activations) to them (CUDA)."""
    for module in model.modules():
        if hasattr(module, "use_triton_kernels"):
            module.use_triton_kernels = True


def default_attention_backend(device: torch.device, cpu_kernels_unfit: str | None) -> str:
    """The fused C++ kernels on CPU where they fit, SDPA elsewhere on CPU; Triton on CUDA when
    it is installed."""
    if device.type == "cuda":
        from sglang.srt.layers.triton_ops import available

        return "triton" if available() else "torch_native"
    return "torch_native" if cpu_kernels_unfit else "cpu"


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
        attention_backend: str | None = None,
        quantization: str | None = None,
        enable_torch_compile: bool = False,
        torch_compile_max_bs: int = 32,
        disable_cuda_graph: bool = False,
        cuda_graph_max_bs: int = DEFAULT_CUDA_GRAPH_MAX_BS,
        expert_distribution_recorder_mode: str | None = None,
        expert_distribution_recorder_buffer_size: int = 1000,
        tp_rank: int = 0,
        tp_size: int = 1,
        tp_group: TPGroup | None = None,
        dist_init_method: str | None = None,
        dist_timeout_s: float = 600.0,
        local_rank: int | None = None,
    ) -> None:
        """``local_rank``: this rank's index on its machine (its GPU; default ``tp_rank``)."""
        if load_format not in LOAD_FORMATS:
            raise ValueError(f"Unknown load format '{load_format}'; expected one of {LOAD_FORMATS}")
        self.device = resolve_device(device)
        if tp_size > 1 and self.device.type == "cuda" and self.device.index is None:
            # rank r on the machine's r-th visible GPU
            self.device = torch.device("cuda", tp_rank if local_rank is None else local_rank)
        if tp_size > 1 and self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL binds each rank to its current device
        self.tp_group = self._join_tp_group(tp_rank, tp_size, tp_group, dist_init_method,
                                            dist_timeout_s)
        self.tp_rank, self.tp_size = self.tp_group.rank, self.tp_group.size
        self.source = resolve_model_path(model_path)
        self.tokenizer_path: Any = tokenizer_path or self.source
        hf_config = get_config(self.source, trust_remote_code=trust_remote_code)
        self.generation_config: dict[str, Any] = get_generation_config(self.source)
        self.quantization = resolve_quantization(
            quantization, self.source, load_format, self.device
        )
        self.model_config = ModelConfig.from_hf_config(
            hf_config,
            generation_config=self.generation_config,
            context_length=context_length,
            dtype=dtype,
            device=self.device,
        )
        if self.tp_size > 1:
            self._check_tensor_parallel()
            # ranks launched on other machines may have been given other flags
            random_seed = self._agree_with_rank0(
                random_seed, dtype=dtype, load_format=load_format, quantization=quantization,
                context_length=context_length)
        if dtype == "auto" and self.device.type == "cpu" and self.quantization == "none":
            cfg = self.model_config
            # Rank 0's measurement for every rank (all must hold the same dtype).
            auto = self.tp_group.broadcast_object(auto_cpu_dtype() if self.tp_rank == 0 else None)
            self.model_config = dataclasses.replace(cfg, dtype=auto)
        self.dtype = self.model_config.dtype
        if self.tp_size > 1 and self.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"tensor parallelism runs float32 or bfloat16, not {self.dtype}")
        torch.manual_seed(random_seed)
        with tp_group_scope(self.tp_group):
            self.model = load_model(
                self.source,
                self.model_config,
                load_format=load_format,
                device=self.device,
                seed=random_seed,
                quantization=self.quantization,
            )
        if getattr(self.model, "is_encoder", False):
            raise ValueError(
                f"{self.model_config.architecture} is an embedding (encoder) model: serve it with "
                "--is-embedding (/encode, /v1/embeddings)"
            )
        self.recorder = self._init_recorder(
            expert_distribution_recorder_mode, expert_distribution_recorder_buffer_size
        )
        self._calibrate_dense_gemm()
        if self.quantization != "none":
            from sglang import _core
            from sglang.srt.layers.quantization.kernels import gemm_min_rows

            rows = gemm_min_rows(_core.cpu_isa())
            logger.info("Q5_K/Q6_K and bf16 quantized matmuls: the BLAS path from %s rows on", rows)
        unfit = self._cpu_kernels_unfit()
        if attention_backend is None:
            attention_backend = default_attention_backend(self.device, unfit)
        self.attention_backend = canonical_backend(attention_backend)
        if self.attention_backend in CPU_ONLY and unfit:
            raise ValueError(
                f"attention backend '{attention_backend}' cannot run this model: {unfit}"
            )
        if self.attention_backend == "triton" and self.device.type != "cuda":
            from sglang.srt.layers.triton_ops import interpreting

            if not interpreting():
                raise ValueError("attention backend 'triton' runs on CUDA (or TRITON_INTERPRET=1)")
        self.attn_backend = create_attention_backend(self.attention_backend)
        if enable_torch_compile and self.tp_size > 1:
            logger.warning("--enable-torch-compile is not used with tensor parallelism yet")
            enable_torch_compile = False
        self.torch_compile_max_bs = torch_compile_max_bs if enable_torch_compile else 0
        self._prepare_model()
        # Decode steps from CUDA graphs (captured in init_kv_pool, once the pool exists); not
        # while the expert distribution is recorded (its hooks run on the host each pass), nor
        # under tensor parallelism (NCCL collectives in captured graphs: not verified yet).
        self.use_cuda_graph = (
            self.device.type == "cuda"
            and self.tp_size == 1
            and not disable_cuda_graph
            and expert_distribution_recorder_mode is None
            and getattr(self.attn_backend, "supports_cuda_graph", False)
            and _graph_safe_experts(self.model)
        )
        self.cuda_graph_max_bs = cuda_graph_max_bs
        self.graph_runner: CudaGraphRunner | None = None
        self.kv_pool: KVPool | None = None
        logger.info(
            "loaded %s (%s) on %s in %s, quantization %s, %d threads%s",
            model_path,
            self.model_config.architecture,
            self.device,
            self.dtype,
            self.quantization,
            torch.get_num_threads(),
            f", TP rank {self.tp_rank} of {self.tp_size}" if self.tp_size > 1 else "",
        )

    def _join_tp_group(self, rank: int, size: int, group: TPGroup | None,
                       init_method: str | None, timeout_s: float) -> TPGroup:  # fmt: skip
        """The given group (checked against ``rank`` / ``size``), or a new one joined through
        ``init_method``; the trivial group for one rank."""
        if group is None:
            if size == 1:
                return SINGLE
            if init_method is None:
                raise ValueError(f"TP size {size}: pass tp_group or dist_init_method")
            group = init_tp_group(rank, size, init_method, default_backend(self.device),
                                  timeout_s=timeout_s)
        if (group.rank, group.size) != (rank, size):
            raise ValueError(
                f"tp_group is rank {group.rank} of {group.size}, expected {rank} of {size}"
            )
        return group

    def _agree_with_rank0(self, random_seed: int | None, **flags: Any) -> int | None:
        """Checks that this rank loads the model as rank 0 does (the same flags: another node
        may have been started with others; the model path may differ per machine) and returns rank 0's random seed, which every rank uses (a
        seed left to chance differs per launch; dummy weights must agree)."""
        theirs = self.tp_group.broadcast_object((flags, random_seed) if self.tp_rank == 0
                                                else None)
        differ = [k for k, v in flags.items() if theirs[0].get(k) != v]
        count = self.tp_group.all_reduce(torch.tensor([len(differ) > 0], dtype=torch.int32,
                                                      device=self.device))
        if differ:
            shown = ", ".join(f"{k}={flags[k]!r} (rank 0: {theirs[0].get(k)!r})" for k in differ)
            raise ValueError(f"TP rank {self.tp_rank} was started with other flags than rank 0: "
                             f"{shown}")
        if int(count.item()):
            raise ValueError(f"{int(count.item())} TP rank(s) were started with other flags than "
                             "rank 0 (their logs name them); start every node with the same ones")
        return theirs[1]

    def _check_tensor_parallel(self) -> None:
        """What tensor parallelism supports, checked before any weight is read."""
        cfg, size = self.model_config, self.tp_size
        cls = get_model_class(cfg.architecture)
        if not getattr(cls, "supports_tensor_parallel", False):
            raise ValueError(f"{cfg.architecture} does not support tensor parallelism yet")
        if self.quantization != "none":
            raise ValueError(
                f"tensor parallelism splits dense weights only; --quantization "
                f"{self.quantization} is not supported with TP size {size} (a GGUF checkpoint "
                "loads dequantized with --quantization none)"
            )
        split_heads(cfg.num_attention_heads, cfg.num_key_value_heads, size)  # raises if uneven

    @classmethod
    def from_server_args(cls, args: Any, tp_rank: int = 0, dist_init_method: str | None = None,
                         dist_timeout_s: float = 600.0) -> ModelRunner:
        """A runner configured by a ServerArgs (the engine and bench_one_batch use this); with
        ``--tp-size > 1`` the rank ``tp_rank`` joining its group through ``dist_init_method``."""
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
            quantization=args.quantization,
            enable_torch_compile=args.enable_torch_compile,
            torch_compile_max_bs=args.torch_compile_max_bs,
            disable_cuda_graph=args.disable_cuda_graph,
            cuda_graph_max_bs=args.cuda_graph_max_bs
            or min(DEFAULT_CUDA_GRAPH_MAX_BS, args.max_running_requests),
            expert_distribution_recorder_mode=args.expert_distribution_recorder_mode,
            expert_distribution_recorder_buffer_size=args.expert_distribution_recorder_buffer_size,
            tp_rank=tp_rank,
            tp_size=getattr(args, "tp_size", 1),
            dist_init_method=dist_init_method,
            dist_timeout_s=dist_timeout_s,
            local_rank=tp_rank % getattr(args, "ranks_per_node", getattr(args, "tp_size", 1)),
        )

    def _init_recorder(self, mode: str | None, buffer_size: int) -> ExpertDistributionRecorder:
        """The process's expert-distribution recorder (a no-op one without ``mode``); the MoE
        layers report their routing to it."""
        recorder = ExpertDistributionRecorder()
        if mode is not None:
            layout = getattr(self.model, "moe_layout", None)
            if layout is None:
                raise ValueError(
                    "--expert-distribution-recorder-mode needs a mixture-of-experts model; "
                    f"{self.model_config.architecture} has no experts"
                )
            recorder = RealExpertDistributionRecorder(mode, layout(), self.device, buffer_size)
        set_global_expert_distribution_recorder(recorder)
        return recorder

    def _prepare_model(self) -> None:
        """What a freshly loaded model gets before it serves: the fused CPU or Triton layers of
        the chosen backend and, with --enable-torch-compile, compiled MLPs."""
        if self.attention_backend == "cpu":
            # The C++ decode runner knows nothing of TP collectives.
            enable_cpu_kernels(self.model, fused_decode=self.tp_size == 1)
        if self.device.type == "cuda" and self.attention_backend == "triton":
            enable_gpu_kernels(self.model)
        if self.torch_compile_max_bs:
            compile_mlps(self.model, self.torch_compile_max_bs)

    def update_weights_from_disk(self, model_path: str, load_format: str | None = None
                                 ) -> tuple[bool, str]:
        """Replace the weights by those of another checkpoint of the same architecture and
        shapes (``/update_weights_from_disk``); (success, message). On failure the old weights
        keep serving. CUDA graphs are captured again for the new weights."""
        try:
            with tp_group_scope(self.tp_group):
                self.model, self.model_config, self.source = load_replacement(
                    self.model_config, model_path, load_format, self.device, self.quantization,
                    self.generation_config)  # fmt: skip
        except WeightUpdateError as exc:
            return False, str(exc)
        self._prepare_model()
        if self.graph_runner is not None:  # the graphs read the old parameters
            self._capture_graphs()
        return True, WEIGHTS_UPDATED

    def _cpu_kernels_unfit(self) -> str | None:
        """Why the fused CPU kernels cannot run this model (None when they can)."""
        cfg = self.model_config
        if self.device.type != "cpu":
            return f"they run on the CPU only, the device is {self.device}"
        if self.dtype not in (torch.float32, torch.bfloat16):
            return f"they take float32 or bfloat16, the model runs in {self.dtype}"
        if cfg.head_dim % 16 or cfg.head_dim > 256:
            return f"they need a head_dim that is a multiple of 16 up to 256, got {cfg.head_dim}"
        return None

    def _calibrate_dense_gemm(self) -> None:
        """Pick the small-batch float32 GEMM form on this CPU with the model's largest dense
        projection (see ``layers.linear``)."""
        dense = [
            m.weight for m in self.model.modules() if isinstance(m, Linear) and m.quant is None
        ]
        if dense and self.device.type == "cpu" and self.dtype == torch.float32:
            calibrate_small_batch_gemm(max(dense, key=lambda w: w.numel()).data)

    @property
    def num_kv_heads(self) -> int:
        """The KV heads this rank's pool holds (all of them without tensor parallelism)."""
        return kv_heads_per_rank(self.model_config.num_key_value_heads, self.tp_size)

    def kv_bytes_per_token(self) -> int:
        """KV bytes per token of this rank's pool."""
        cfg = self.model_config
        return KVPool.bytes_per_token(
            cfg.num_hidden_layers, self.num_kv_heads, cfg.head_dim, self.dtype
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
            self.num_kv_heads,
            cfg.head_dim,
            self.dtype,
            self.device,
        )
        if self.use_cuda_graph:
            self._capture_graphs()
        return self.kv_pool

    def _capture_graphs(self) -> None:
        assert self.kv_pool is not None
        width = min(self.model_config.context_length, self.kv_pool.num_slots)
        self.graph_runner = None  # the old graphs' memory goes back to the pool first
        self.graph_runner = CudaGraphRunner(
            self._forward_eager, self.cuda_graph_max_bs, width, self.device
        )

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the input embedding table for ``input_ids`` (a new tensor, model dtype)."""
        return self.model.model.embed_tokens(input_ids)

    def forward(self, batch: ForwardBatch) -> LogitsOutput:
        """Run the model on one step; writes the batch's K/V into the pool."""
        if self.kv_pool is None:
            raise RuntimeError("init_kv_pool() must be called before forward()")
        if self.graph_runner is not None and batch.lora is None and \
                self.graph_runner.can_run(batch):
            with torch.inference_mode():
                return self.graph_runner.replay(batch)
        return self._forward_eager(batch)

    def _forward_eager(self, batch: ForwardBatch) -> LogitsOutput:
        batch.kv_pool = self.kv_pool
        batch.attn_backend = self.attn_backend
        with torch.inference_mode(), self.recorder.with_forward_pass(batch):
            self.attn_backend.init_forward_metadata(batch)
            return self.model(batch)


def _graph_safe_experts(model: torch.nn.Module) -> bool:
    """Whether every MoE layer computes without a host sync on its device and dtype (CUDA graphs
    cannot capture the loop over the experts, which reads the per-expert counts on the host)."""
    from sglang.srt.layers.moe.fused_moe import FusedMoE

    return all(m.graph_safe() for m in model.modules() if isinstance(m, FusedMoE))
