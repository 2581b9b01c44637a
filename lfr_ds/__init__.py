"""lfr-ds: Learn-Focus-Review data selection for GPT-2 pretraining on DeepSpeed and megatron-core."""

__version__ = "0.1.0"

import warnings

# megatron-core warns at import, once per module, that Transformer Engine and Apex are missing. On CPU
# that is expected (and on GPU build_model reports the attention backend it picked), so keep logs readable.
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex) (and Apex )?(is|are) not installed.*")
