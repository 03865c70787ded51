"""The OpenAI routes: each serving module owns its ``router``; this one includes them all."""

from __future__ import annotations

from fastapi import APIRouter

from sglang.srt.entrypoints.openai import chat, classify, completions, embeddings, rerank

router = APIRouter()
for module in (completions, chat, embeddings, classify, rerank):
    router.include_router(module.router)
