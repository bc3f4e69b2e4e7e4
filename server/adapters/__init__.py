"""LoRA adapters as served: the folder registry, the manifest, the pool of loaded adapters."""
