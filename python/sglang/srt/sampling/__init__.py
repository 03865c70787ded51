"""Sampling: fused logit processing and token sampling kernels and their torch adapter."""
