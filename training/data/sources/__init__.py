"""Converters from public tool-calling data sets to canonical records, one module per source
format (xlam, glaive, hermes, openai, bfcl), over one row reader (rows). Each converter turns
one row into a record or raises; `convert` counts and reports the rows that fail.
"""
