"""Training data: the canonical record (records), source-format loaders (loaders), the synthetic
generator over tool catalogues (synth, catalogue), deduplication and splits (split), near-miss
DPO pairs (pairs), the one-call dataset builder (build) and the `data` command (cli).

Everything here is pure Python over the server's tool-call core; torch is never imported.
"""
