"""The GAD artifact: one support-model state_dict per alpha and a config, and its folder format.

Layout of an artifact folder: ``support_alpha_<alpha>.pt`` per alpha and ``config.json`` (alphas,
class pair, the classifier's id, version, class names and weights sha256, design choices, summary).

Example:
    >>> artifact = read_artifact(Path("models/demo/mnist-3v8/artifacts/gad"))
    >>> artifact.alphas
    [2.0, 4.0, 6.0, 8.0]
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xai.errors import Conflict
from xai.methods.gad import DESIGN_CHOICES

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


@dataclass
class SupportArtifact:
    """A trained GAD artifact as the explainer needs it.

    Attributes:
        config: The artifact's ``config.json`` (alphas, class pair, training settings and summary).
        alphas: The distancing values, ascending.
        class_pair: The two distanced class indices.
        states: One support-model state_dict per alpha, in the order of ``alphas``.
    """

    config: dict[str, Any]
    alphas: list[float]
    class_pair: tuple[int, int]
    states: list[dict[str, torch.Tensor]]


def alpha_key(alpha: float) -> str:
    """``2.0 -> "2"``, ``2.5 -> "2.5"``: the alpha as it appears in file names and JSON keys."""
    return f"{alpha:g}"


def write_artifact(
    folder: Path,
    supports: list[nn.Module] | list[dict[str, torch.Tensor]],
    alphas: list[float],
    class_pair: tuple[int, int],
    manifest: Any,
    summary: dict[str, Any],
) -> Path:
    """Write support state_dicts and ``config.json`` into ``folder`` (replaced whole, never half-written).

    Args:
        folder: The artifact folder to create.
        supports: Support models or their state_dicts, one per alpha.
        alphas: The alphas, in the order of ``supports``.
        class_pair: The two distanced class indices.
        manifest: The classifier's ``ModelManifest`` (id, version, class names, weights sha256).
        summary: Training figures to keep with the artifact.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}-staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = {}
    for alpha, support in zip(alphas, supports):
        state = support.state_dict() if isinstance(support, nn.Module) else support
        files[alpha_key(alpha)] = f"support_alpha_{alpha_key(alpha)}.pt"
        tensors = {name: tensor.detach().cpu() for name, tensor in state.items()}
        torch.save(tensors, staging / files[alpha_key(alpha)])
    config = {
        "format_version": FORMAT_VERSION,
        "method": "gad",
        "model": {"id": manifest.id, "version": manifest.version, "weights_sha256": manifest.weights_sha256},
        "class_names": list(manifest.class_names),
        "alphas": list(alphas),
        "class_pair": list(class_pair),
        "support_files": files,
        "design_choices": DESIGN_CHOICES,
        "summary": summary,
    }
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    os.rename(staging, folder)
    return folder


def read_artifact(folder: Path, map_location: torch.device | str = "cpu") -> SupportArtifact:
    """Load a GAD artifact folder written by ``write_artifact``.

    Raises:
        Conflict: ``gad_artifact_unreadable`` when the folder lacks its config or a support file.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        alphas = [float(alpha) for alpha in config["alphas"]]
        paths = [folder / config["support_files"][alpha_key(alpha)] for alpha in alphas]
        states = [torch.load(path, map_location=map_location, weights_only=True) for path in paths]
    except (OSError, KeyError, ValueError, RuntimeError, pickle.UnpicklingError) as error:
        raise Conflict(
            f"the GAD artifact at {folder.name!r} is incomplete or unreadable ({error}); train it again "
            "with `xai train gad`",
            code="gad_artifact_unreadable",
        ) from error
    first, second = config["class_pair"]
    return SupportArtifact(config=config, alphas=alphas, class_pair=(first, second), states=states)
