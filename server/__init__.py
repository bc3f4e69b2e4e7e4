"""callgate: an OpenAI-compatible gateway with grammar-guaranteed tool calls."""

__version__ = "0.1.0"
