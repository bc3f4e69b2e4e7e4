"""The HTTP edge: OpenAI wire models, routes, error rendering. The only package that imports
FastAPI; everything below it works on server.types dataclasses."""
