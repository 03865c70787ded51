"""Expert-parallel load balancing helpers (the expert-distribution recorder)."""
