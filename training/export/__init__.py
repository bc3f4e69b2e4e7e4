"""Exporting an adapter for the gateway: the adapter folder and manifest, the GGUF LoRA, the
GGUF model writer."""
