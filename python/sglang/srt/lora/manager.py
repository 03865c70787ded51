"""The engine's LoRA adapters (``--enable-lora``): the served adapters by name, the slot pool on
the model's device, and the hooks that add each step's adapter deltas to the model's projections.

- ``LoraManager(model, args)`` finds the decoder's projections (q/k/v inside the fused
  ``qkv_proj``, ``o_proj``, gate/up inside ``gate_up_proj``, ``down_proj``), sizes the pool
  (``--max-loras-per-batch`` slots of ``--max-lora-rank`` for ``--lora-target-modules``, both
  inferred from ``--lora-paths`` when not given) and loads the ``--lora-paths`` adapters.
- ``load`` / ``unload`` (``/load_lora_adapter``, ``/unload_lora_adapter``): each load gets a new
  id, the request's ``lora_id`` in the core (at most ``--max-loras-per-batch`` adapters run at
  once) and its radix-cache namespace, so a name loaded again never reuses the old adapter's KV.
  Requests already accepted keep their adapter after an unload; new ones get a 400.
- ``begin(plan, adapters)`` before a forward pass: pins the step's adapters in the pool (at most
  one slot each; the core's limit guarantees they fit) and publishes the step's segments (rows of
  consecutive requests with the same adapter); every hooked ``Linear`` then adds
  ``scaling * B (A x)`` to the rows of each segment (``kernels.lora_apply_``). ``end()`` unpins.
  A step without adapter rows publishes nothing: the base model runs unchanged (the fused C++
  decode and CUDA graphs included).
- Tensor parallelism (``--tp-size N``): every rank has a manager whose pool holds its shard of
  each adapter (``sharding.py``). Rank 0 decides: loads and unloads reach the followers with
  the load id rank 0 gave (``load(..., load_id=)``), and each step's ``LoraStepInfo`` (the
  segments and which adapter each used slot holds) makes a follower's ``mirror`` put the same
  adapters into the same slots. An unloaded adapter stays ``retired`` (requests already
  running may still use it) until rank 0 drops it (``drop_retired``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sglang.srt.lora.adapter import TARGETS, LoraAdapter, LoraError
from sglang.srt.lora.kernels import lora_apply_
from sglang.srt.lora.pool import LoraPool
from sglang.srt.lora.sharding import TargetShard, target_shard

logger = logging.getLogger(__name__)

DEFAULT_MAX_RANK = 16  # --max-lora-rank when no --lora-paths adapter tells
MAX_PATH_CHARS = 4096  # PATH_MAX
NAMESPACE_SEP = "\x1flora:"  # cache namespace suffix of an adapter's requests
# The fused projection of the Llama-family decoder layer that computes each target, and its shard.
FUSED_TARGETS = {"q_proj": ("self_attn.qkv_proj", "q"), "k_proj": ("self_attn.qkv_proj", "k"),
                 "v_proj": ("self_attn.qkv_proj", "v"), "o_proj": ("self_attn.o_proj", None),
                 "gate_proj": ("mlp.gate_up_proj", "gate"), "up_proj": ("mlp.gate_up_proj", "up"),
                 "down_proj": ("mlp.down_proj", None)}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ServedAdapter:
    """An adapter as requests see it: ``id`` is unique per load (core lora_id, cache key)."""

    id: int
    adapter: LoraAdapter

    @property
    def name(self) -> str:
        return self.adapter.name

    def cache_namespace(self, base: str) -> str:
        return f"{base}{NAMESPACE_SEP}{self.id}"


@dataclasses.dataclass(frozen=True)
class LoraStepInfo:
    """One step's LoRA plan on the host, as rank 0 sends it to its TP followers: the segments
    (``indptr`` int32 [segments + 1], ``slots`` int32 [segments]) and the adapter (load id)
    each used slot holds, as (slot, id) pairs."""

    indptr: np.ndarray
    slots: np.ndarray
    residents: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class LoraStep:
    """One step's segments: rows ``indptr[g]:indptr[g+1]`` use slot ``slots[g]`` (-1: none)."""

    indptr: torch.Tensor  # int32 [segments + 1], on the model's device
    slots: torch.Tensor  # int32 [segments]
    # For the fused C++ decode (a float32 pool on the CPU): the pool's A/B pointers per layer
    # and target (``LoraManager.fused_weights``) and this step's (max_rank, ranks, scaling,
    # num_slots, indptr, slots, num_segments); None elsewhere.
    fused: tuple[np.ndarray, np.ndarray] | None = None
    info: LoraStepInfo | None = None  # the same on the host (what TP followers mirror)


def parse_lora_paths(value: Any) -> dict[str, str]:
    """``--lora-paths`` as {name: folder}: each entry ``NAME=PATH``, ``PATH`` (named by itself)
    or a JSON object ``{"lora_name": ..., "lora_path": ...}``; a dict maps names to folders."""
    if value is None:
        return {}
    if isinstance(value, dict):
        entries = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        entries = [_lora_entry(item) for item in value]
    else:
        entries = [_lora_entry(value)]
    out: dict[str, str] = {}
    for name, path in entries:
        check_adapter_name(name)
        if name in out:
            raise ValueError(f"--lora-paths names the adapter '{name}' twice")
        out[name] = path
    return out


def _lora_entry(item: Any) -> tuple[str, str]:
    if isinstance(item, dict):
        raw = item
    elif isinstance(item, str) and item.lstrip().startswith("{"):
        try:
            raw = json.loads(item)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--lora-paths entry {item!r} is not valid JSON: {exc}") from None
    elif isinstance(item, str):
        name, sep, path = item.partition("=")
        return (name, path) if sep else (item, item)
    else:
        raise ValueError(f"--lora-paths entries are NAME=PATH strings, got {item!r}")
    if not isinstance(raw, dict) or not isinstance(raw.get("lora_name"), str) \
            or not isinstance(raw.get("lora_path"), str):
        raise ValueError(  # noqa: TRY004 (a flag's value: reported as a ValueError at launch)
            f"--lora-paths JSON entries need lora_name and lora_path, got {item!r}")
    if raw.get("pinned"):
        raise ValueError("--lora-paths: pinned adapters are not supported")
    return raw["lora_name"], raw["lora_path"]


def check_adapter_name(name: Any) -> None:
    if not isinstance(name, str) or not name or len(name) > 256 or name != name.strip():
        raise LoraError(f"A LoRA adapter name must be a non-empty string of at most 256 "
                        f"characters without surrounding spaces, got {name!r}.")


def lora_layers(model: nn.Module) -> list[dict[str, tuple[nn.Module, str | None]]]:
    """Per decoder layer, each target module's (fused Linear, shard); LoraError for models whose
    layers are not the Llama family's (with a dense MLP for the gate/up/down targets)."""
    from sglang.srt.layers.linear import Linear

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not hasattr(layers[0], "self_attn") or \
            not isinstance(getattr(layers[0].self_attn, "qkv_proj", None), Linear):
        raise LoraError(f"LoRA adapters are not supported for {type(model).__name__}: only "
                        "Llama-family decoders (Llama, Mistral, Qwen2, Qwen3).")
    out = []
    for layer in layers:
        found = {}
        for target, (path, shard) in FUSED_TARGETS.items():
            try:
                module = layer.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(module, Linear):
                found[target] = (module, shard)
        out.append(found)
    return out


class LoraManager:
    def __init__(self, model: nn.Module, *, max_loras_per_batch: int, max_lora_rank: int | None,
                 target_modules: Sequence[str] | None, lora_paths: dict[str, str],
                 dtype: torch.dtype, device: torch.device | str) -> None:  # fmt: skip
        self.layers = lora_layers(model)
        self.available = set(self.layers[0])
        # This TP rank's part of each target (everything with one rank).
        self.shards: dict[str, TargetShard] = {
            t: target_shard(*self.layers[0][t]) for t in self.available}
        initial = [LoraAdapter.load(name, path, max_lora_rank) for name, path in
                   lora_paths.items()]  # fmt: skip
        if target_modules and "all" not in target_modules:
            targets = list(dict.fromkeys(target_modules))
        elif target_modules is None and initial:  # the union of the --lora-paths adapters'
            targets = sorted({t for a in initial for t in a.config.targets})
        else:
            targets = [t for t in TARGETS if t in self.available]
        missing = [t for t in targets if t not in self.available]
        if missing:
            raise LoraError(f"--lora-target-modules {missing} are not projections of this model "
                            f"(it has {sorted(self.available)}).")
        max_rank = max_lora_rank or max((a.config.rank for a in initial), default=DEFAULT_MAX_RANK)
        shapes = {t: self._shape(t) for t in targets}
        self.pool = LoraPool(max_loras_per_batch, max_rank, len(self.layers), shapes, dtype, device)
        self.device = torch.device(device)
        # The step's segments go up in one pinned copy: a copy from pageable memory may wait
        # for the stream, which would stall the overlap of host and device.
        from sglang.srt.model_executor.forward_batch import PinnedStaging

        self._staging = PinnedStaging()
        self.adapters: dict[str, ServedAdapter] = {}
        self.retired: dict[int, ServedAdapter] = {}  # unloaded, maybe still used, by id
        self.next_id = 0
        self.step: LoraStep | None = None
        self._pinned: list[int] = []
        for adapter in initial:
            self._add(adapter)
        self._install_hooks()
        self.fused_weights = self._fused_weights()

    @classmethod
    def from_server_args(cls, runner: Any, args: Any) -> LoraManager:
        """The manager of a ModelRunner's model (any TP rank) from the server's LoRA flags."""
        return cls(runner.model, max_loras_per_batch=args.max_loras_per_batch,
                   max_lora_rank=args.max_lora_rank, target_modules=args.lora_target_modules,
                   lora_paths=args.lora_path_map(), dtype=runner.dtype,
                   device=torch.device(runner.device))  # fmt: skip

    @property
    def max_rank(self) -> int:
        return self.pool.max_rank

    @property
    def targets(self) -> list[str]:
        return list(self.pool.shapes)

    def _shape(self, target: str) -> tuple[int, int]:
        """(in, out) features of this rank's part of ``target`` (the pool's shape)."""
        return self.shards[target].local_shape

    def _full_shape(self, target: str) -> tuple[int, int]:
        """(in, out) features of the whole projection (an adapter's tensors)."""
        return self.shards[target].full_shape

    # ---- adapters ------------------------------------------------------------------------------
    def loaded(self) -> dict[str, str]:
        return {name: s.adapter.path for name, s in self.adapters.items()}

    def get(self, name: str) -> ServedAdapter:
        served = self.adapters.get(name)
        if served is None:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise LoraError(f"Unknown LoRA adapter '{name}' (loaded: {known}).")
        return served

    def by_id(self, load_id: int) -> ServedAdapter:
        """A loaded or retired adapter by its load id (LoraError when neither)."""
        for served in (*self.adapters.values(), *self.retired.values()):
            if served.id == load_id:
                return served
        raise LoraError(f"No LoRA adapter has the load id {load_id}.")

    def load(self, name: str, path: str, load_id: int | None = None) -> ServedAdapter:
        """Reads, checks and serves an adapter under a new load id (a TP follower passes the
        one rank 0 gave)."""
        check_adapter_name(name)
        if name in self.adapters:
            raise LoraError(f"A LoRA adapter named '{name}' is already loaded.")
        if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
            raise LoraError(f"lora_path must be a PEFT adapter folder: a non-empty string of at "
                            f"most {MAX_PATH_CHARS} characters.")
        return self._add(LoraAdapter.load(name, path, self.max_rank), load_id)

    def unload(self, name: str) -> ServedAdapter:
        """Stops serving ``name`` (new requests); it stays ``retired`` until ``drop_retired``
        since requests already accepted may still run with it."""
        served = self.get(name)
        del self.adapters[name]
        self.retired[served.id] = served
        if served.id in self.pool.slot_of and not self.pool.pins.get(served.id):
            self.pool.evict(served.id)
        return served

    def discard(self, name: str) -> None:
        """Forgets an adapter no request can have used yet (a TP load the ranks refused)."""
        served = self.adapters.pop(name, None)
        if served is not None and served.id in self.pool.slot_of:
            self.pool.evict(served.id)

    def drop_retired(self, ids: Iterable[int]) -> None:
        """Forgets the retired adapters ``ids`` (no request uses them any more)."""
        for load_id in ids:
            if self.retired.pop(load_id, None) is not None and \
                    load_id in self.pool.slot_of and not self.pool.pins.get(load_id):
                self.pool.evict(load_id)

    def _add(self, adapter: LoraAdapter, load_id: int | None = None) -> ServedAdapter:
        extra = [t for t in adapter.config.targets if t not in self.pool.shapes]
        if extra:
            raise LoraError(f"LoRA adapter '{adapter.name}' adapts {extra}, outside the server's "
                            f"target modules {self.targets} (--lora-target-modules).")
        adapter.check_base(len(self.layers), self._full_shape)
        served = ServedAdapter(self.next_id if load_id is None else load_id,
                               self._local_part(adapter))  # fmt: skip
        self.adapters[adapter.name] = served
        self.next_id = max(self.next_id, served.id + 1)
        return served

    def _local_part(self, adapter: LoraAdapter) -> LoraAdapter:
        """The adapter with this TP rank's part of each tensor (itself with one rank)."""
        if all(s.local_shape == s.full_shape for s in self.shards.values()):
            return adapter
        weights = {key: self.shards[key[1]].split(a, b)
                   for key, (a, b) in adapter.weights.items()}  # fmt: skip
        return dataclasses.replace(adapter, weights=weights)

    # ---- steps ---------------------------------------------------------------------------------
    def begin(self, rows_per_req: np.ndarray, adapters: Sequence[ServedAdapter | None]
              ) -> LoraStep | None:  # fmt: skip
        """Pins the step's adapters and publishes its segments (None: no adapter row)."""
        if all(a is None for a in adapters):
            return None
        slot_of: dict[int, int] = {}
        try:
            for served in adapters:
                if served is not None and served.id not in slot_of:
                    slot_of[served.id] = self.pool.acquire(served.adapter, served.id)
                    self._pinned.append(served.id)
        except Exception:
            self.end()
            raise
        indptr, slots = [0], []
        for n, served in zip(rows_per_req.tolist(), adapters):
            slot = -1 if served is None else slot_of[served.id]
            if slots and slots[-1] == slot:
                indptr[-1] += n
            else:
                slots.append(slot)
                indptr.append(indptr[-1] + n)
        residents = tuple(sorted((slot, load_id) for load_id, slot in slot_of.items()))
        return self._publish(LoraStepInfo(np.array(indptr, dtype=np.int32),
                                          np.array(slots, dtype=np.int32), residents))

    def mirror(self, info: LoraStepInfo) -> LoraStep:
        """A TP follower's ``begin``: puts rank 0's adapters into the same slots (copying
        those not already there) and publishes the same segments. ``end()`` closes it."""
        for slot, load_id in info.residents:
            self.pool.place(self.by_id(load_id).adapter, load_id, slot)
        return self._publish(info)

    def _publish(self, info: LoraStepInfo) -> LoraStep:
        up = self._staging.upload_arrays({"indptr": info.indptr, "slots": info.slots},
                                         self.device)
        indptr_t, slots_t = up["indptr"], up["slots"]
        slots = info.slots
        fused = None
        if self.fused_weights is not None:
            pool = self.pool
            meta = np.array([pool.max_rank, pool.ranks.data_ptr(), pool.scaling.data_ptr(),
                             pool.num_slots, indptr_t.data_ptr(), slots_t.data_ptr(),
                             len(slots)], dtype=np.int64)  # fmt: skip
            fused = (self.fused_weights, meta)
        self.step = LoraStep(indptr_t, slots_t, fused, info)
        return self.step

    def end(self) -> None:
        self.step = None
        for key in self._pinned:
            self.pool.release(key)
        self._pinned = []

    def check_integrity(self) -> None:
        self.pool.check_integrity()
        assert not self._pinned and self.step is None, "a LoRA step was left open"

    def _fused_weights(self) -> np.ndarray | None:
        """The pool's A and B pointers of each layer and target, in the fused C++ decode's
        order (q, k, v, o, gate, up, down; 0: not a target), for a float32 pool on the CPU."""
        pool = self.pool
        if self.device.type != "cpu" or pool.scaling.device.type != "cpu" or \
                next(iter(pool.A.values())).dtype != torch.float32:
            return None
        table = np.zeros((len(self.layers), len(TARGETS), 2), dtype=np.int64)
        for layer in range(len(self.layers)):
            for t, target in enumerate(TARGETS):
                if target in pool.A:
                    table[layer, t] = (pool.A[target][layer].data_ptr(),
                                       pool.B[target][layer].data_ptr())
        return table

    def _install_hooks(self) -> None:
        pool = self.pool
        by_module: dict[int, tuple[nn.Module, list[tuple[int, int, torch.Tensor, torch.Tensor]]]]
        by_module = {}
        for index, layer in enumerate(self.layers):
            for target in pool.shapes:
                module, shard = layer[target]
                lo, size = (0, module.out_features) if shard is None else \
                    module.shard_offsets[shard]
                entry = by_module.setdefault(id(module), (module, []))
                entry[1].append((lo, size, pool.A[target][index], pool.B[target][index]))
        for module, parts in by_module.values():
            module.lora = _LoraHook(self, tuple(parts))


class _LoraHook:
    """Adds the step's deltas of one layer's targets computed by one (fused) projection. Each
    part is (first output column, width, A view, B view): the pool's per-layer weights, made
    once (the pool's tensors are never reallocated)."""

    __slots__ = ("manager", "parts")

    def __init__(self, manager: LoraManager,
                 parts: tuple[tuple[int, int, torch.Tensor, torch.Tensor], ...]) -> None:  # fmt: skip
        self.manager, self.parts = manager, parts

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        step = self.manager.step
        if step is None:
            return
        pool = self.manager.pool
        for lo, size, a, b in self.parts:
            lora_apply_(x, y[:, lo:lo + size], a, b, pool.ranks, pool.scaling, step.indptr,
                        step.slots)
