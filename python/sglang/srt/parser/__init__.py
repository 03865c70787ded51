"""Parsers of model output shared by the API layers and the frontend language: reasoning
(``<think>`` blocks) and tool calls."""
