"""The SyCE/CyCE artifact: two generators of one classifier, their decision sides, and the folder format.

Layout of an artifact folder: ``generator_0.pt`` and ``generator_1.pt`` (state_dicts of
``models.networks.unet.UNetGenerator``) and ``config.json`` (variant, explained class, architecture,
input size, training summary; the demo script adds ``evaluation`` and ``classifier``).

Example:
    >>> pair = load_artifact(Path("models/demo/mnist-3v8/artifacts/syce"), "cpu")
    >>> counterfactuals = pair.translate(images, pair.sides(classifier(images)))
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.networks.unet import UNetGenerator
from xai.errors import InvalidInput, ServiceError

CONFIG_NAME = "config.json"
GENERATOR_FILES = ("generator_0.pt", "generator_1.pt")
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- decisions


def side_logit(logits: torch.Tensor, target_class: int) -> torch.Tensor:
    """Log-odds of ``target_class`` against all other classes: ``log p_t - log(1 - p_t)``.

    For the two logits ``[-z/2, z/2]`` of a sigmoid model and ``target_class=1`` this is ``z``.
    """
    others = logits.masked_fill(
        torch.arange(logits.shape[1], device=logits.device) == target_class, float("-inf")
    )
    return logits[:, target_class] - torch.logsumexp(others, dim=1)


def decision_sides(logits: torch.Tensor, target_class: int) -> torch.Tensor:
    """1 where the classifier decides ``target_class`` (its argmax), else 0, as a long tensor."""
    return (logits.argmax(dim=1) == target_class).long()


def resolve_target_class(num_classes: int, target_class: int | None) -> int:
    """Class 1 for binary models by default; multi-class models must name the class to explain."""
    if target_class is None:
        if num_classes == 2:
            return 1
        raise InvalidInput(
            f"the classifier has {num_classes} classes: name the class to explain against the rest "
            "(target_class)",
            code="target_class_required",
        )
    if not 0 <= target_class < num_classes:
        raise InvalidInput(
            f"target_class {target_class} is out of range; the classifier has classes 0..{num_classes - 1}",
            code="invalid_target_class",
        )
    return target_class


# ----------------------------------------------------------------------------- the pair


@dataclass
class GeneratorPair:
    """The trained generators of one classifier, ready for inference (eval mode, on one device).

    Attributes:
        variant: "syce" or "cyce".
        target_class: The class explained against the rest.
        generators: ``generators[s]`` maps images the classifier puts on side ``s`` to the other side.
        config: The artifact's ``config.json`` (architecture, input, training summary).
    """

    variant: str
    target_class: int
    generators: tuple[nn.Module, nn.Module]
    config: dict[str, Any]

    def sides(self, logits: torch.Tensor) -> torch.Tensor:
        """The decision side of each image given the classifier's logits."""
        return decision_sides(logits, self.target_class)

    def translate(self, images: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
        """``G[sides[i]](images[i])`` for every i, with one generator pass per side present.

        The output has the generators' dtype (float16 under autocast without a residual output).
        """
        out = None
        for side in (0, 1):
            chosen = sides == side
            if chosen.any():
                generated = self.generators[side](images[chosen])
                out = generated.new_empty(images.shape) if out is None else out
                out[chosen] = generated
        return images.clone() if out is None else out


# ----------------------------------------------------------------------------- folder format


def load_artifact(folder: Path, device: torch.device | str) -> GeneratorPair:
    """Read an artifact folder written by ``write_artifact`` onto ``device``, generators in eval mode.

    Raises:
        ServiceError: ``artifact_unreadable`` when the folder is missing, incomplete or corrupt.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        generators = []
        for file_name in GENERATOR_FILES:
            generator = UNetGenerator(**config["architecture"]["args"])
            state = torch.load(folder / file_name, map_location="cpu", weights_only=True)
            generator.load_state_dict(state)
            generators.append(generator.to(device).eval())
        return GeneratorPair(config["variant"], int(config["target_class"]), tuple(generators), config)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ServiceError(
            f"the SyCE/CyCE artifact in {folder} cannot be read ({type(error).__name__}: {error}); "
            "train it again",
            code="artifact_unreadable",
        ) from error


def write_artifact(
    folder: Path,
    generators: list[UNetGenerator],
    variant: str,
    target_class: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    summary: dict[str, Any],
) -> Path:
    """Write generator weights and config.json into a staging folder, then move it to ``folder``
    (replaced whole, so a reader never sees half an artifact)."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for generator, file_name in zip(generators, GENERATOR_FILES):
        torch.save({k: v.detach().cpu() for k, v in generator.state_dict().items()}, staging / file_name)
    channels, height, width = image_shape
    explained = f"the classifier decides as class {target_class}"
    config = {
        "format_version": FORMAT_VERSION,
        "variant": variant,
        "explanation": "|G(G(x)) - G(x)|" if variant == "syce" else "|x - G(x)|",
        "target_class": target_class,
        "num_classes": num_classes,
        "generators": {
            GENERATOR_FILES[0]: f"applied to images other than those {explained}",
            GENERATOR_FILES[1]: f"applied to images {explained}",
        },
        "architecture": {"name": "unet", "args": generators[0].config},
        "input": {"channels": channels, "height": height, "width": width},
        "training": summary,
    }
    (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder
