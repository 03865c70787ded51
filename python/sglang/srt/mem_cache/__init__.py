"""KV memory on the torch side: the per-layer K/V tensors indexed by the C++ allocator's slots."""
