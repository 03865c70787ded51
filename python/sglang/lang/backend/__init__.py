"""Backends a program runs against: this project's server (``RuntimeEndpoint``, ``Runtime``),
OpenAI- and Anthropic-compatible APIs, LiteLLM and Vertex AI (their clients are optional extras)."""
