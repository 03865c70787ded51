"""The SGLang frontend language: ``sgl.function`` programs run against a backend.

A pure client library: nothing here imports torch or the runtime (``sglang.srt``) at import
time. ``api`` holds the user-facing primitives, ``ir`` the expression nodes they build,
``interpreter`` runs them (``StreamExecutor`` / ``ProgramState``), ``tracer`` traces them for
prefix caching, ``backend`` talks to a server (this project's, OpenAI, Anthropic, ...).
"""
