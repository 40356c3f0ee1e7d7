"""Datasets: identity folders with on-the-fly masking, paired real masked sets, LFW-style pairs files.

Evaluation-only identities (``meer.data.splits``) never reach a training split.
"""
