"""Artifact formats of the per-classifier explainers: what training writes and explainers read.

Explainers import these modules and never ``models.training``, so a worker that only explains loads
no training code (optimisers, discriminators, data loading).
"""
