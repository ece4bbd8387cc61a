"""The ensemble scorer and safe-data selection behind Interleaving+ / Interleaving++.

nll.py (fast answer NLL), pool.py (Ray actor pool), cache.py (content hashes, score cache),
ensemble.py (train/locate the misaligned ensemble), select.py (pure selection math),
stages.py (cached stage functions the sweep calls).
"""
