"""Model registry (torch-free manifest and store), network definitions, loader and training.

Only ``models.manifest`` and ``models.store`` may be imported by the gateway: they never import torch.
"""

from pathlib import Path

# The shipped demo models, and the shared data folder they are rebuilt from (beside the repository).
DEMO_DIR = Path(__file__).resolve().parent / "demo"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
