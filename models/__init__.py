"""Model registry (torch-free manifest and store), network definitions, loader and training.

Only ``models.manifest`` and ``models.store`` may be imported by the gateway: they never import torch.
"""
