"""Constraints: tools and tool_choice -> grammars (llguidance Lark, GBNF), cached.

Engines receive the grammar text; this package knows nothing of engines or HTTP.
"""

from server.constraints.compiler import (
    CacheStats,
    Constraint,
    ConstraintSpec,
    cache_stats,
    cached_constraint,
    clear_cache,
    compile_constraint,
)
from server.constraints.gbnf import to_gbnf

__all__ = [
    "CacheStats",
    "Constraint",
    "ConstraintSpec",
    "cache_stats",
    "cached_constraint",
    "clear_cache",
    "compile_constraint",
    "to_gbnf",
]
