"""The torch side of a step: ForwardBatch (plan -> tensors) and ModelRunner (model + KV pool)."""
