"""Scoring tool calls: evaluation items (canonical records, BFCL), answer backends, the
verifier, BFCL's AST checker, reports."""
