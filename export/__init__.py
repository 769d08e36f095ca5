"""steerbake's outputs by format: safetensors builds, GGUF, model cards, Hub push, CLI."""
