"""The serving runtime: engine, model runner, scheduler driver (imports torch and sglang._core)."""
