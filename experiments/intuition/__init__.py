"""The intuition gallery: figures computed by the library code that trains and samples.

``python -m experiments.intuition --out=DIR [--only=NAME,...] [--fast]`` and the page,
``--html=DIR``; see README.md.
"""
