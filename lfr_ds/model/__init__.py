"""The GPT-2 model on megatron-core: :mod:`.gpt` builds it, :mod:`.attention` is its SDPA core attention,
:mod:`.compat` sets up megatron-core (and lets it run without CUDA)."""
