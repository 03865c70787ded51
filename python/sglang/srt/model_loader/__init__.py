"""Finding and reading checkpoints: path resolution, HF folders, GGUF files, dummy weights."""
