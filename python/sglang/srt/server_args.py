"""Server arguments: one dataclass for the HTTP server, the engine process and ``sgl.Engine``.

Flag names and defaults follow SGLang's ``launch_server`` (the API contract, section 6). Values left
``None`` ("auto") are resolved once at start-up in ``resolve_*`` helpers from the device and model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
from typing import Any

from sglang.srt.parser.reasoning_parser import REASONING_PARSERS
from sglang.srt.parser.tool_call_parser import TOOL_CALL_PARSERS

SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
LOAD_FORMATS = ("auto", "pt", "safetensors", "gguf", "dummy")
RECORDER_MODES = ("stat", "stat_approx", "per_pass", "per_token")  # MoE routing recorder
ATTENTION_BACKENDS = ("cpu", "torch_native", "intel_amx", "triton")
QUANTIZATIONS = ("none", "gguf", "w8a16")
GRAMMAR_BACKENDS = ("xgrammar", "outlines", "none")
# --dp-size > 1: how the router picks a replica for each request (managers/router.py)
LOAD_BALANCE_METHODS = ("round_robin", "shortest_queue", "cache_aware")
SECRET_FIELDS = ("api_key", "admin_api_key")
REDACTED = "<redacted>"


@dataclasses.dataclass
class ServerArgs:
    # model and tokenizer
    model_path: str = ""
    tokenizer_path: str | None = None
    served_model_name: str | None = None
    load_format: str = "auto"
    dtype: str = "auto"
    quantization: str | None = None
    trust_remote_code: bool = False
    context_length: int | None = None
    skip_tokenizer_init: bool = False
    is_embedding: bool = False
    chat_template: str | None = None
    weight_version: str = "default"
    # HTTP
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    admin_api_key: str | None = None
    log_level: str = "info"
    log_level_http: str | None = None
    enable_metrics: bool = False
    skip_server_warmup: bool = False
    # memory and scheduling
    device: str | None = None
    mem_fraction_static: float | None = None
    max_total_tokens: int | None = None
    max_running_requests: int | None = None
    max_prefill_tokens: int = 16384
    chunked_prefill_size: int | None = None
    page_size: int = 1
    schedule_policy: str = "fcfs"
    disable_radix_cache: bool = False
    random_seed: int | None = None
    attention_backend: str | None = None
    disable_cuda_graph: bool = False
    # Overlap: a step's outputs are processed while the next step's forward runs (on CUDA by
    # default; --enable-overlap-schedule forces it elsewhere, e.g. to test it on a CPU)
    disable_overlap_schedule: bool = False
    enable_overlap_schedule: bool = False
    enable_torch_compile: bool = False
    torch_compile_max_bs: int = 32
    cuda_graph_max_bs: int | None = None
    tp_size: int = 1
    # multi-node tensor parallelism: node r runs TP ranks r*k .. r*k+k-1 (k = tp_size / nnodes);
    # node 0 also runs the HTTP server (see managers/worker_node.py)
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None  # HOST:PORT of node 0's torch.distributed rendezvous
    dp_size: int = 1  # engine replicas behind the router (see managers/engine_group.py)
    load_balance_method: str = "round_robin"
    # outputs
    stream_interval: int = 1
    incremental_streaming_output: bool = False
    allow_auto_truncate: bool = False
    enable_cache_report: bool = False
    enable_return_hidden_states: bool = False
    stream_response_default_include_usage: bool = False
    # sampling
    grammar_backend: str | None = None
    enable_custom_logit_processor: bool = False
    sampling_defaults: str = "model"
    preferred_sampling_params: str | None = None
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    # mixture-of-experts models: routing statistics (see eplb.expert_distribution)
    expert_distribution_recorder_mode: str | None = None
    expert_distribution_recorder_buffer_size: int = 1000
    # LoRA adapters (see lora.manager): --lora-paths implies --enable-lora
    enable_lora: bool = False
    lora_paths: Any = None  # NAME=PATH strings, PATH, JSON objects, or a {name: path} dict
    max_loras_per_batch: int = 8
    max_lora_rank: int | None = None
    lora_target_modules: list[str] | None = None
    # limits of one request (a 4xx names the limit and its flag) and of the server's queue
    max_request_body_bytes: int = 64 << 20
    max_batch_size: int = 1024  # items of one /generate request (prompts x n)
    max_n: int = 128
    max_top_logprobs_num: int = 256
    max_token_ids_logprob: int = 64
    max_stop_strings: int = 32
    max_stop_string_length: int = 512
    max_queued_requests: int | None = 4096  # waiting requests in the engine; None: unbounded
    # the engine process dying: exit non-zero (a supervisor restarts the server) or restart it
    engine_restart: bool = False

    def __post_init__(self) -> None:
        if not self.model_path:
            raise ValueError("--model-path is required")
        if self.tokenizer_path is None:
            self.tokenizer_path = self.model_path
        if self.served_model_name is None:
            self.served_model_name = self.model_path
        if self.log_level_http is None:
            self.log_level_http = self.log_level
        if self.random_seed is None:
            self.random_seed = random.randint(0, 1 << 30)
        if self.device is None:
            self.device = _default_device()
        if self.grammar_backend is None:
            self.grammar_backend = "xgrammar"
        if self.chunked_prefill_size is None:
            self.chunked_prefill_size = 8192 if self.device == "cuda" else 2048
        if self.max_running_requests is None:
            self.max_running_requests = 256 if self.device == "cuda" else 64
        if self.lora_paths:
            self.enable_lora = True
        self._validate()

    def _validate(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        check(self.schedule_policy in SCHEDULE_POLICIES,
              f"--schedule-policy must be one of {', '.join(SCHEDULE_POLICIES)}, "
              f"got {self.schedule_policy!r}")
        check(self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check(self.quantization is None or self.quantization in QUANTIZATIONS,
              f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        check(self.load_format in LOAD_FORMATS,
              f"--load-format must be one of {', '.join(LOAD_FORMATS)}, got {self.load_format!r}")
        # None: the ModelRunner picks (the fused C++ kernels on CPU where the model's shapes fit
        # them, SDPA otherwise; triton on CUDA).
        check(self.attention_backend is None or self.attention_backend in ATTENTION_BACKENDS,
              f"--attention-backend must be one of {', '.join(ATTENTION_BACKENDS)}, "
              f"got {self.attention_backend!r}")
        check(self.device in ("cpu", "cuda"), f"--device must be cpu or cuda, got {self.device!r}")
        check(self.device == "cpu" or self.attention_backend in (None, "torch_native", "triton"),
              f"--attention-backend {self.attention_backend} runs on the CPU only")
        check(self.device != "cpu" or self.attention_backend != "triton",
              "--attention-backend triton runs on CUDA only")
        check(self.page_size >= 1, f"--page-size must be at least 1, got {self.page_size}")
        check(self.max_running_requests >= 1, "--max-running-requests must be at least 1")
        check(self.max_prefill_tokens >= 1, "--max-prefill-tokens must be at least 1")
        check(self.stream_interval >= 1, "--stream-interval must be at least 1")
        check(self.torch_compile_max_bs >= 1, "--torch-compile-max-bs must be at least 1")
        check(self.cuda_graph_max_bs is None or self.cuda_graph_max_bs >= 1,
              f"--cuda-graph-max-bs must be at least 1, got {self.cuda_graph_max_bs}")
        check(not (self.enable_overlap_schedule and self.disable_overlap_schedule),
              "--enable-overlap-schedule and --disable-overlap-schedule contradict each other")
        check(self.tp_size >= 1, f"--tp-size must be at least 1, got {self.tp_size}")
        # --tp-size > 1: quantized weights, encoder embedding models and untested models are
        # refused by the engine at start (they need the model's config)
        self._validate_nodes(check)
        check(self.dp_size >= 1, f"--dp-size must be at least 1, got {self.dp_size}")
        check(self.load_balance_method in LOAD_BALANCE_METHODS,
              f"--load-balance-method must be one of {', '.join(LOAD_BALANCE_METHODS)}, "
              f"got {self.load_balance_method!r}")
        check(self.expert_distribution_recorder_mode in (None, *RECORDER_MODES),
              f"--expert-distribution-recorder-mode must be one of {', '.join(RECORDER_MODES)}, "
              f"got {self.expert_distribution_recorder_mode!r}")
        check(self.expert_distribution_recorder_buffer_size >= 1,
              "--expert-distribution-recorder-buffer-size must be at least 1")
        if self.reasoning_parser is not None:
            check(self.reasoning_parser in REASONING_PARSERS,
                  f"--reasoning-parser must be one of {', '.join(REASONING_PARSERS)}, "
                  f"got {self.reasoning_parser!r}")
        if self.tool_call_parser is not None:
            check(self.tool_call_parser in TOOL_CALL_PARSERS,
                  f"--tool-call-parser must be one of {', '.join(TOOL_CALL_PARSERS)}, "
                  f"got {self.tool_call_parser!r}")
        if self.chat_template is not None:  # a bad file or name fails at launch, not per request
            from sglang.srt.entrypoints.openai.chat_template import load_template

            load_template(self.chat_template)
        check(self.sampling_defaults in ("model", "openai"),
              "--sampling-defaults must be 'model' or 'openai'")
        if self.mem_fraction_static is not None:
            check(0 < self.mem_fraction_static < 1, "--mem-fraction-static must be in (0, 1)")
        if self.max_total_tokens is not None:
            check(self.max_total_tokens >= self.page_size, "--max-total-tokens is too small")
        for name in ("max_request_body_bytes", "max_batch_size", "max_n", "max_stop_strings",
                     "max_stop_string_length"):
            check(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_top_logprobs_num", "max_token_ids_logprob"):
            check(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be at least 0")
        if self.max_queued_requests is not None:
            check(self.max_queued_requests >= 1, "--max-queued-requests must be at least 1")
        self._validate_lora(check)
        if self.preferred_sampling_params is not None:
            try:
                parsed = json.loads(self.preferred_sampling_params)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--preferred-sampling-params is not valid JSON: {exc}") from exc
            check(isinstance(parsed, dict), "--preferred-sampling-params must be a JSON object")

    def _validate_lora(self, check: Any) -> None:
        from sglang.srt.lora.adapter import TARGETS

        self.lora_path_map()  # a malformed --lora-paths fails at launch
        check(self.max_loras_per_batch >= 1, "--max-loras-per-batch must be at least 1")
        check(self.max_lora_rank is None or self.max_lora_rank >= 1,
              "--max-lora-rank must be at least 1")
        modules = self.lora_target_modules
        check(modules is None or (isinstance(modules, list) and len(modules) > 0
                                  and set(modules) <= {*TARGETS, "all"}),
              f"--lora-target-modules must be among {', '.join(TARGETS)} or 'all', "
              f"got {modules!r}")
        if self.enable_lora:
            check(not self.enable_torch_compile,
                  "--enable-lora cannot be combined with --enable-torch-compile yet")
            check(not self.is_embedding, "--enable-lora serves generation models only")

    def lora_path_map(self) -> dict[str, str]:
        """--lora-paths as {adapter name: folder}."""
        from sglang.srt.lora.manager import parse_lora_paths

        return parse_lora_paths(self.lora_paths)

    @property
    def preferred_sampling_params_dict(self) -> dict[str, Any] | None:
        if self.preferred_sampling_params is None:
            return None
        return json.loads(self.preferred_sampling_params)

    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- command line ------------------------------------------------------------------------
    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        d = ServerArgs.__dataclass_fields__
        a = parser.add_argument
        a("--model-path", "--model", dest="model_path", type=str, required=True,
          help="Local folder, .gguf file, hub id, or the demo alias smollm2-135m-instruct.")
        a("--tokenizer-path", type=str, default=None)
        a("--served-model-name", type=str, default=None)
        a("--load-format", type=str, default=d["load_format"].default, choices=LOAD_FORMATS)
        a("--dtype", type=str, default=d["dtype"].default, choices=DTYPES)
        a("--quantization", type=str, default=None, choices=QUANTIZATIONS,
          help="Weights kept quantized (CPU): gguf (default for a .gguf file on CPU: its blocks "
          "are multiplied directly), w8a16 (int8 weights from a float checkpoint), none.")
        a("--context-length", type=int, default=None)
        a("--chat-template", type=str, default=None)
        a("--weight-version", type=str, default="default")
        a("--host", type=str, default=d["host"].default)
        a("--port", type=int, default=d["port"].default)
        a("--api-key", type=str, default=None)
        a("--admin-api-key", type=str, default=None)
        a("--log-level", type=str, default="info")
        a("--log-level-http", type=str, default=None)
        a("--device", type=str, default=None, choices=("cpu", "cuda"))
        a("--mem-fraction-static", type=float, default=None)
        a("--max-total-tokens", type=int, default=None)
        a("--max-running-requests", type=int, default=None)
        a("--max-prefill-tokens", type=int, default=d["max_prefill_tokens"].default)
        a("--chunked-prefill-size", type=int, default=None,
          help="Tokens per prefill chunk; -1 disables chunking.")
        a("--page-size", type=int, default=1)
        a("--schedule-policy", type=str, default="fcfs", choices=SCHEDULE_POLICIES)
        a("--random-seed", type=int, default=None)
        a("--attention-backend", type=str, default=None, choices=ATTENTION_BACKENDS)
        a("--enable-torch-compile", action="store_true",
          help="Compile each decoder layer's MLP with torch.compile (inductor) for batches up to "
          "--torch-compile-max-bs tokens.")
        a("--torch-compile-max-bs", type=int, default=d["torch_compile_max_bs"].default)
        a("--cuda-graph-max-bs", type=int, default=None)
        a("--disable-overlap-schedule", action="store_true",
          help="Process each step's outputs before the next step starts (no overlap with the "
               "GPU's forward pass).")
        a("--enable-overlap-schedule", action="store_true",
          help="Overlap output processing with the next forward pass on a CPU too (for tests: "
               "on a CPU it delays streamed tokens by one step).")
        a("--tp-size", "--tensor-parallel-size", dest="tp_size", type=int, default=1)
        a("--nnodes", type=int, default=1,
          help="Machines the --tp-size ranks are spread over (each runs tp-size / nnodes).")
        a("--node-rank", type=int, default=0,
          help="This machine's index; node 0 runs the HTTP server, the others only ranks.")
        a("--dist-init-addr", "--nccl-init-addr", dest="dist_init_addr", type=str, default=None,
          help="HOST:PORT where the ranks meet (torch.distributed rendezvous on node 0).")
        a("--dp-size", "--data-parallel-size", dest="dp_size", type=int, default=1,
          help="Engine replicas (each with its own scheduler, radix cache and KV pool; on CUDA "
               "replica i runs on the i-th visible GPU) behind a router in the HTTP process.")
        a("--load-balance-method", type=str, default=d["load_balance_method"].default,
          choices=LOAD_BALANCE_METHODS,
          help="How the router picks a replica (--dp-size > 1): round_robin, shortest_queue "
               "(fewest requests in flight) or cache_aware (longest cached prefix, else the "
               "shortest queue).")
        a("--stream-interval", type=int, default=1)
        a("--grammar-backend", type=str, default=None, choices=GRAMMAR_BACKENDS)
        a("--sampling-defaults", type=str, default="model", choices=("model", "openai"))
        a("--preferred-sampling-params", type=str, default=None)
        a("--reasoning-parser", type=str, default=None)
        a("--tool-call-parser", type=str, default=None)
        a("--expert-distribution-recorder-mode", type=str, default=None,
          choices=RECORDER_MODES, help="Record MoE routing (start/stop/dump endpoints).")
        a("--expert-distribution-recorder-buffer-size", type=int,
          default=d["expert_distribution_recorder_buffer_size"].default,
          help="Forward passes kept by the 'stat' recorder (a circular buffer).")
        a("--max-request-body-bytes", type=int, default=d["max_request_body_bytes"].default,
          help="Largest request body accepted (413 beyond).")
        a("--max-batch-size", type=int, default=d["max_batch_size"].default,
          help="Most generation items in one request (prompts x n).")
        a("--max-n", type=int, default=d["max_n"].default, help="Largest n (parallel samples).")
        a("--max-top-logprobs-num", type=int, default=d["max_top_logprobs_num"].default)
        a("--max-token-ids-logprob", type=int, default=d["max_token_ids_logprob"].default,
          help="Most token ids in token_ids_logprob.")
        a("--max-stop-strings", type=int, default=d["max_stop_strings"].default)
        a("--max-stop-string-length", type=int, default=d["max_stop_string_length"].default,
          help="Longest stop string, in characters.")
        a("--max-queued-requests", type=_optional_int, default=d["max_queued_requests"].default,
          help="Most requests waiting in the engine; more get 503 with Retry-After "
               "('none': unbounded).")
        a("--enable-lora", action="store_true",
          help="Serve LoRA adapters (lora_path per request; implied by --lora-paths).")
        a("--lora-paths", type=str, nargs="*", default=None,
          help="Adapters loaded at start: NAME=PATH, PATH, or JSON {lora_name, lora_path}.")
        a("--max-loras-per-batch", type=int, default=d["max_loras_per_batch"].default,
          help="Adapter slots: most distinct adapters running at once.")
        a("--max-lora-rank", type=int, default=None,
          help="Largest adapter rank (default: the largest of --lora-paths, else 16).")
        a("--lora-target-modules", type=str, nargs="*", default=None,
          help="Projections adapters may target (q_proj ... down_proj, or all; default: those "
               "of --lora-paths, else all).")
        a("--engine-restart", action="store_true",
          help="Restart a dead engine process instead of exiting with an error.")
        for flag in ("trust-remote-code", "skip-tokenizer-init", "is-embedding", "enable-metrics",
                     "skip-server-warmup", "disable-radix-cache", "disable-cuda-graph",
                     "incremental-streaming-output", "allow-auto-truncate", "enable-cache-report",
                     "enable-return-hidden-states", "stream-response-default-include-usage",
                     "enable-custom-logit-processor"):
            a(f"--{flag}", action="store_true")

    def _validate_nodes(self, check: Any) -> None:
        check(self.nnodes >= 1, f"--nnodes must be at least 1, got {self.nnodes}")
        check(0 <= self.node_rank < self.nnodes,
              f"--node-rank must be in [0, --nnodes), got {self.node_rank} of {self.nnodes}")
        if self.dist_init_addr is not None:
            parse_dist_init_addr(self.dist_init_addr)  # raises ValueError naming the flag
        if self.nnodes > 1:
            check(self.dist_init_addr is not None,
                  "--nnodes > 1 needs --dist-init-addr HOST:PORT (node 0's address)")
            check(self.tp_size % self.nnodes == 0,
                  f"--tp-size ({self.tp_size}) must be a multiple of --nnodes ({self.nnodes}): "
                  "every node runs the same number of ranks")
            check(self.dp_size == 1, "--dp-size > 1 with --nnodes > 1 is not supported yet")

    def overlap_schedule(self) -> bool:
        """Whether the engine overlaps output processing with the next forward pass."""
        if self.disable_overlap_schedule:
            return False
        return self.enable_overlap_schedule or self.device == "cuda"

    @property
    def ranks_per_node(self) -> int:
        """Tensor-parallel ranks each node runs."""
        return self.tp_size // self.nnodes

    def node_tp_ranks(self) -> range:
        """The tensor-parallel ranks this node (``--node-rank``) runs."""
        k = self.ranks_per_node
        return range(self.node_rank * k, (self.node_rank + 1) * k)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def to_json(self) -> dict[str, Any]:
        """The arguments as JSON, secrets redacted (for /get_server_info and logs)."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out[name] is not None:
                out[name] = REDACTED
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_json().items())
        return f"ServerArgs({fields})"


def parse_dist_init_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) -> (host, port); ValueError naming --dist-init-addr."""
    host, sep, port = addr.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--dist-init-addr must be HOST:PORT with a port in 1..65535, "
                         f"got {addr!r}")
    return host, int(port)


def dist_init_url(addr: str) -> str:
    """The torch.distributed init method for a --dist-init-addr."""
    host, port = parse_dist_init_addr(addr)
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _optional_int(value: str) -> int | None:
    return None if value.lower() in ("none", "null", "") else int(value)


def _default_device() -> str:
    if os.environ.get("SGLANG_DEVICE"):
        return os.environ["SGLANG_DEVICE"]
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_server_args(argv: list[str]) -> ServerArgs:
    parser = argparse.ArgumentParser(prog="python -m sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    return ServerArgs.from_cli_args(parser.parse_args(argv))
