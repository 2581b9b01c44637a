"""Data: raw text → tokenizer → Megatron ``.bin/.idx`` → blocks → sample index files → DP sampler."""
