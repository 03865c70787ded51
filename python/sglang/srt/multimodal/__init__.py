"""Multimodal inputs (images): loading, validation and hashing of ``image_data``."""
