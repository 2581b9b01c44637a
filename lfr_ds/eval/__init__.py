"""Evaluation of lfr-ds checkpoints: held-out perplexity, zero-shot tasks, HuggingFace export.

* :mod:`lfr_ds.eval.checkpoint`: open a run or ``step_*`` checkpoint, rebuild its model with its weights;
* :mod:`lfr_ds.eval.perplexity`: held-out loss per source (:func:`heldout_loss`, also used in training);
* :mod:`lfr_ds.eval.zeroshot`: multiple choice, BLiMP, LAMBADA, scored as lm-evaluation-harness does;
* :mod:`lfr_ds.eval.export_hf`: a ``GPT2LMHeadModel`` directory with a matching ``AutoTokenizer``;
* :mod:`lfr_ds.eval.cli`: the ``lfr-eval`` command.
"""
