"""The ensemble scorer's parts behind Interleaving+ / Interleaving++: nll.py (fast answer NLL), pool.py
(Ray actor pool), cache.py (content hashes, score cache), select.py (pure selection math). The stages
that train the ensemble and run the selection are emray/stages/.
"""
