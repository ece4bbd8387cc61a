"""Cached stages the sweep driver runs once before the trials, above the training recipe because they
fine-tune: the misaligned ensemble (ensemble.py) and the Interleaving+/++ safe-data selection
(selection.py). The scoring they build on (answer NLL, the scorer pool, the selection math) is emray/score/."""
