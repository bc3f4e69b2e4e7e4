"""Training recipes, each a plain function over TRL and PEFT (SFT, DPO, RAFT), with what
they share: recipe loading, rendering records to tokens, run folders."""
