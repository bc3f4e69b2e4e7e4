"""The demo model built from nothing: tokenizer, tiny Qwen2, the copy curriculum, build-demo."""
