"""A fixed number of adapter slots on the model's device, with LRU eviction.

Per (layer, target module) the pool holds stacked weights ``A`` [slots, max_rank, in] and ``B``
[slots, out, max_rank] (an adapter of a smaller rank is zero-padded: the extra rank rows add
nothing) and per slot the adapter's scaling, so a batch mixing adapters reads each adapter from
its slot (``kernels.lora_apply_``, which also reads each slot's rank). ``acquire(adapter, key)``
makes an adapter resident (copying it into a
free slot, or into the slot of the least recently used adapter that no running request holds)
and pins it; ``release(key)`` unpins it once the step is done. Adapters are keyed by ``key``
(default: the adapter's name; the server uses the load's unique id, so an adapter unloaded and
loaded again under the same name never reads the old weights). ``place(adapter, key, slot)``
puts an adapter into a given slot (a TP follower mirroring rank 0). When every slot is pinned,
``acquire`` raises ``PoolFull``: the scheduler keeps that request waiting. A target module an
adapter does not adapt stays zero in its slot.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping

import torch

from sglang.srt.lora.adapter import LoraAdapter


class PoolFull(RuntimeError):
    """Every slot holds an adapter that a running request uses."""


class LoraPool:
    def __init__(self, num_slots: int, max_rank: int, num_layers: int,
                 shapes: Mapping[str, tuple[int, int]], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        """``shapes``: (in, out) features of each target module the pool serves."""
        if num_slots < 1 or max_rank < 1:
            raise ValueError("a LoRA pool needs at least one slot and a rank of at least 1")
        self.num_slots, self.max_rank, self.num_layers = num_slots, max_rank, num_layers
        self.shapes = dict(shapes)
        kw = {"dtype": dtype, "device": device}
        self.A = {m: torch.zeros(num_layers, num_slots, max_rank, i, **kw)
                  for m, (i, _) in self.shapes.items()}  # fmt: skip
        self.B = {m: torch.zeros(num_layers, num_slots, o, max_rank, **kw)
                  for m, (_, o) in self.shapes.items()}  # fmt: skip
        self.scaling = torch.zeros(num_slots, dtype=torch.float32, device=device)
        self.ranks = torch.zeros(num_slots, dtype=torch.int32, device=device)
        self.slot_of: OrderedDict[Hashable, int] = OrderedDict()  # resident adapters, LRU first
        self.pins: dict[Hashable, int] = {}
        self.loads = 0  # adapters copied in (evictions = loads beyond the slot count)

    def acquire(self, adapter: LoraAdapter, key: Hashable = None) -> int:
        """The adapter's slot (loaded if needed), pinned until ``release``."""
        name = adapter.name if key is None else key
        if name not in self.slot_of:
            self._load(adapter, self._free_slot(), name)
        self.slot_of.move_to_end(name)
        self.pins[name] = self.pins.get(name, 0) + 1
        return self.slot_of[name]

    def place(self, adapter: LoraAdapter, key: Hashable, slot: int) -> None:
        """Makes ``adapter`` (under ``key``) the one in ``slot``, as a TP follower mirrors rank
        0's choice: copied in unless it is there already; the adapter that held the slot is
        dropped, and so is the key's other slot. Not pinned (followers pin nothing)."""
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"LoRA slot {slot} is not in 0..{self.num_slots - 1}")
        if self.slot_of.get(key) == slot:
            self.slot_of.move_to_end(key)
            return
        for other, held in list(self.slot_of.items()):
            if held == slot or other == key:
                if self.pins.get(other):
                    raise ValueError(f"LoRA adapter '{other}' is pinned in slot {held}")
                del self.slot_of[other]
        self._load(adapter, slot, key)

    def release(self, name: Hashable) -> None:
        count = self.pins.get(name, 0)
        if count <= 0:
            raise ValueError(f"LoRA adapter '{name}' is not pinned")
        if count == 1:
            del self.pins[name]
        else:
            self.pins[name] = count - 1

    def evict(self, name: Hashable) -> None:
        """Drops a resident adapter (unloading it); ValueError while a request uses it."""
        if self.pins.get(name):
            raise ValueError(f"LoRA adapter '{name}' is in use by running requests")
        self.slot_of.pop(name, None)

    def check_integrity(self) -> None:
        slots = list(self.slot_of.values())
        assert len(set(slots)) == len(slots) and all(0 <= s < self.num_slots for s in slots)
        assert set(self.pins) <= set(self.slot_of) and all(c > 0 for c in self.pins.values())

    def _free_slot(self) -> int:
        used = set(self.slot_of.values())
        for slot in range(self.num_slots):
            if slot not in used:
                return slot
        for name, slot in self.slot_of.items():  # least recently used first
            if not self.pins.get(name):
                del self.slot_of[name]
                return slot
        raise PoolFull(f"all {self.num_slots} LoRA slots hold adapters in use")

    def _load(self, adapter: LoraAdapter, slot: int, key: Hashable) -> None:
        rank = adapter.config.rank
        if rank > self.max_rank:
            raise ValueError(f"rank {rank} above the pool's {self.max_rank}")
        with torch.no_grad():
            for module in self.shapes:
                self.A[module][:, slot].zero_()
                self.B[module][:, slot].zero_()
            for (layer, module), (a, b) in adapter.weights.items():
                if module not in self.shapes:
                    raise ValueError(f"the pool does not serve {module}")
                self.A[module][layer, slot, :rank] = a
                self.B[module][layer, slot, :, :rank] = b
            self.scaling[slot] = adapter.config.scaling
            self.ranks[slot] = rank
        self.slot_of[key] = slot
        self.loads += 1
