"""Training of per-model explainer artifacts, shared by the train queue and ``xai train <method>``.

Checkpoints live in the model version's ``training/<method>/`` folder, so a job re-run after a
worker restart (RQ retries abandoned train jobs) resumes where the last checkpoint left it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from models.training.data import load_image_folder, load_masks
from workers.explainers.base import Progress
from workers.runtime import GroupProgress, WorkerContext
from xai.errors import InvalidInput
from xai.jobs import Stage, TrainJob
from xai.methods import get_trainable

# method -> the module whose train() produces its artifact
TRAINERS = {
    "syce": "models.training.syce",
    "cyce": "models.training.syce",
    "gad": "models.training.gad",
}


def train_artifacts(ctx: WorkerContext, request: TrainJob, progress: GroupProgress) -> dict[str, Any]:
    """Train ``request.method`` for a model version on a data folder and record the artifact."""
    method = request.method
    params = get_trainable(method).resolve_params(request.params)
    progress.stage(Stage.LOADING_MODEL, (0.0, 0.02))
    loaded, _ = ctx.models.get(request.model_id, request.model_version)
    manifest = loaded.manifest
    progress.stage(Stage.PREPROCESSING, (0.02, 0.05))
    images, _, paths = load_image_folder(Path(request.data), manifest.input)
    if len(paths) < 2:
        raise InvalidInput(f"the training folder holds {len(paths)} readable image(s); it needs many more",
                           code="invalid_training_data")
    regions = None if request.masks is None else load_masks(Path(request.masks), Path(request.data), paths,
                                                            manifest.input)
    work_dir = ctx.store.version_dir(manifest.id, manifest.version) / "training" / method
    work_dir.mkdir(parents=True, exist_ok=True)
    progress.stage(Stage.TRAINING, (0.05, 0.99))
    summary = train_method(method, loaded.classifier, images, work_dir, params, progress, ctx.device,
                           request.target_class, regions)
    ctx.store.add_artifact(manifest.id, manifest.version, method, work_dir / "artifact")
    return {"model_id": manifest.id, "version": manifest.version, "method": method, "summary": summary}


def train_method(method: str, classifier, images, work_dir: Path, params: dict[str, Any], progress: Progress,
                 device, target_class: int | None, regions=None) -> dict[str, Any]:
    """``regions``: the training images' finding masks, for a method whose spec ``takes_masks``."""
    module = importlib.import_module(TRAINERS[method])
    masks = {"regions": regions} if regions is not None else {}
    return module.train(classifier, images, work_dir, params, progress, device, target_class=target_class, **masks)
