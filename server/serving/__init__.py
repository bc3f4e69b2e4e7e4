"""The models the gateway serves: the catalogue and fetching, the served view of a model or
adapter, the registry by name, and building it all from settings (build.py)."""
