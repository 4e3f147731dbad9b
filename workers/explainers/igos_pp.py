"""iGOS++: a deletion and an insertion mask optimised with integrated gradients (Khorram et al. 2021).

Masks use the published convention: 1 keeps the image, 0 replaces it by the blurred baseline, both
start at 1. Each iteration:

1. Four integrated-gradient terms, each the mean target probability over ``integration_steps``
   points of a straight path, with Gaussian noise on every path image:
   deletion on the product mask (image -> baseline where the mask drops), insertion on the product
   mask (baseline -> image), deletion on the deletion mask alone and insertion on the insertion mask
   alone. The objective is ``S_del(M) - S_ins(M) + S_del(m_del) - S_ins(m_ins)`` with
   ``M = up(m_del) * up(m_ins)``; its gradient is halved, as the authors do, to balance it against
2. the regulariser on the product mask, ``l1 * mean|1 - M| + btv * BTV(image, M)``, where BTV is the
   mean of plain TV at mask resolution and TV weighted by ``exp(-dI^2 / sigma)`` at image resolution.
3. An Armijo backtracking line search per image on the full (noisy) objective, then the step, and
   both masks clamped to [0, 1].

The explanation is ``1 - up(m_del * m_ins)``: high = important.

Departures from the paper, each with its measured effect (bench/bench_igos_pp.py against
bench/reference_igos_pp.py, the published schedule; deletion lower is better, insertion higher;
figures in the README's iGOS++ section). ``PAPER_SCHEDULE`` (xai/methods/igos_pp.py) undoes every
one that changes results, and then the heatmaps equal the reference's up to float rounding
(tests/test_igos_pp.py).

- Exact, no effect on results: the four terms of all images of a batch are one stream of path
  images, chunked by ``internal_batch_size`` into forward/backward passes (capped on a CPU at 20
  images of 224 x 224, whose activations still fit the caches); path images built by broadcasting;
  a line-search step per image, only images whose step still shrinks re-evaluated; the model's
  weights frozen while the masks are optimised (7% faster on a ResNet-18). The noise comes from one
  generator per image, drawn in the same order alone or batched, so batching does not change results.
- Channels-last on a CPU (float rounding only): a ResNet-18 forward and backward pass in batches of
  20 at 224 x 224 on one thread takes 66 ms an image instead of 71 (fp32), 24 instead of 32 (bfloat16).
- The line search (``line_search_start`` warm, ``line_search_noise`` shared, ``line_search_points``
  5): trials start one decay above the last accepted step instead of at 1000; they use the gradient
  pass's noise, and the loss at the current masks comes from the gradient pass's forward values,
  instead of fresh noise and a re-evaluation; they evaluate 5 of the 20 path points per term. With
  all three, on the nih-cardiomegaly demo model and 10 held-out X-rays: 1,974-2,096 images forwarded
  per image instead of 9,072, deletion 0.603 against 0.608, insertion 0.794 against 0.790. Their
  effects one at a time were not measured.
- ``precision`` auto: on a CPU with AMX bfloat16 units the gradient passes (80 of the ~100 path
  images an iteration forwards, and all the backward passes) run under bfloat16 autocast: on a
  ResNet-18 about 2.8x faster, and the same heatmap quality as float32 (README table). The line
  search stays float32: its Armijo test compares losses whose bfloat16 rounding is as large as the
  decrease it tests for, and in bfloat16 it made one ResNet-18 X-ray worse (deletion 0.567 against
  0.539, insertion 0.783 against 0.803) where bfloat16 gradients alone gave 0.538 and 0.803. Float32
  on other CPUs (not measured there) and on CUDA.

Not copied from the published code: its swapped iteration flags, its CUDA-only and square-only
assumptions, its process-global upsampler, and its biased deletion/insertion metric.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from models.guard import model_left_as_found
from workers import scoring
from workers.explainers.base import Explainer, Explanation, Progress
from xai.errors import InvalidInput

# The paper's supplementary B and XAITK's capability page both state this limitation.
LOW_CONFIDENCE = (
    "the model gives the target class a probability below 0.5 on this image; iGOS++ masks are unreliable "
    "(often adversarial) for low-confidence or wrong predictions"
)
# Order of the four integrated-gradient terms in every (image, term, step) stream.
TERMS = ("deletion_product", "insertion_product", "deletion_mask", "insertion_mask")
# +1: the score counts towards the objective (deletion, to be lowered); -1: insertion, to be raised.
TERM_SIGNS = (1.0, -1.0, 1.0, -1.0)
# Most path-image pixels in one forward/backward call on a CPU (20 images at 224 x 224): a
# ResNet-18 on one thread costs 52 ms an image forward and backward in chunks of 8 or 20, 89 ms in
# chunks of 64, whose activations no longer fit the caches.
CPU_CHUNK_PIXELS = 20 * 224 * 224


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bfloat16 tiles (Intel Sapphire Rapids and later), which oneDNN uses for
    bfloat16 convolutions and matrix products.

    Asks torch (``torch._C._cpu._init_amx``, which also requests the tiles from Linux), else reads the
    ``amx_bf16`` flag in /proc/cpuinfo; False when neither answers.
    """
    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    if init is not None:
        try:
            return bool(init())
        except RuntimeError:
            return False
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def autocast_dtype(precision: str, device: torch.device | None) -> torch.dtype | None:
    """The autocast dtype of the model's forward passes, or None for float32.

    ``auto``: bfloat16 on a CPU with AMX (``cpu_has_amx``), float32 on any other CPU and on CUDA.
    """
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "auto" and (device is None or device.type == "cpu") and cpu_has_amx():
        return torch.bfloat16
    return None


def mask_grid(height: int, width: int, mask_size: int) -> tuple[int, int]:
    """Mask cells (rows, columns): ``mask_size`` along the shorter side, the longer side in proportion.

    Keeping the aspect ratio keeps cells square in pixels, so total variation weighs both directions
    alike; ``mask_size`` equal to the shorter side gives exactly one cell per pixel.

    Raises:
        InvalidInput (code ``invalid_params``): ``mask_size`` exceeds the shorter side of the input.
    """
    short = min(height, width)
    if mask_size > short:
        raise InvalidInput(
            f"mask_size {mask_size} is larger than the model input's shorter side ({height}x{width}); "
            f"use at most {short} (the input resolution)",
            code="invalid_params",
        )
    if height <= width:
        return mask_size, min(width, round(mask_size * width / height))
    return min(height, round(mask_size * height / width)), mask_size


def blur_baseline(images: torch.Tensor, kernel_fraction: float) -> torch.Tensor:
    """The paper's baseline: a strong Gaussian blur (51 x 51, sigma 50 on 224 x 224), scaled to the image.

    The kernel side is ``kernel_fraction`` of the shorter side, made odd, with sigma = side - 1 as the
    published code sets it; borders are reflected.
    """
    side = max(3, 2 * round(kernel_fraction * min(images.shape[-2:]) / 2) + 1)
    return gaussian_blur(images, [side, side], [float(side - 1)] * 2)


def bilateral_weights(images: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(-dI^2 / sigma)`` between vertical and horizontal neighbours, dI^2 averaged over channels.

    Returns B x 1 x (H-1) x W and B x 1 x H x (W-1) tensors: near 1 inside flat regions, near 0 across edges.
    """
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).pow(2).mean(1, keepdim=True)
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).pow(2).mean(1, keepdim=True)
    return torch.exp(-vertical / sigma), torch.exp(-horizontal / sigma)


def upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling with aligned corners (the published code's ``UpsamplingBilinear2d``)."""
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=True)


def regulariser(
    masks: torch.Tensor,
    weights: tuple[torch.Tensor, torch.Tensor],
    l1_weight: float,
    btv_weight: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The regulariser of the product mask: ``l1 * mean|1 - M| + btv * BTV``, per image.

    BTV = (TV at mask resolution + bilateral TV at image resolution) / 2, each the sum over the two
    directions of the mean of ``|difference|^beta`` (bilateral: weighted by ``weights``).

    Returns:
        (total, l1 term, btv term), each of shape B, unweighted terms as the loss reports them.
    """
    l1 = (1 - masks).abs().flatten(1).mean(1)
    tv = _mean_power(masks[:, :, 1:] - masks[:, :, :-1], beta) + _mean_power(
        masks[..., 1:] - masks[..., :-1], beta
    )
    full = upsample(masks, (weights[1].shape[-2], weights[0].shape[-1]))
    bilateral = _mean_power(full[:, :, 1:] - full[:, :, :-1], beta, weights[0]) + _mean_power(
        full[..., 1:] - full[..., :-1], beta, weights[1]
    )
    btv = 0.5 * (tv + bilateral)
    return l1_weight * l1 + btv_weight * btv, l1, btv


def _mean_power(differences: torch.Tensor, beta: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    powered = differences.abs().pow(beta)
    if weights is not None:
        powered = powered * weights
    return powered.flatten(1).mean(1)


@dataclass
class Settings:
    """The validated parameters in the form the optimisation uses them."""

    grid: tuple[int, int]
    iterations: int
    steps: int
    l1_weight: float
    btv_weight: float
    btv_beta: float
    noise_std: float
    step_size: float
    armijo_beta: float
    step_decay: float
    min_step_size: float
    chunk: int
    warm_start: bool
    shared_noise: bool
    search_points: int
    # Autocast dtype of the path images' forward passes (None: float32).
    autocast: torch.dtype | None

    @classmethod
    def from_params(
        cls, params: dict[str, Any], height: int, width: int, device: torch.device | None = None
    ) -> Settings:
        grid = mask_grid(height, width, params["mask_size"])
        full_resolution = grid == (height, width)
        chunk = params["internal_batch_size"]
        if device is None or device.type == "cpu":
            chunk = min(chunk, max(1, CPU_CHUNK_PIXELS // (height * width)))
        return cls(
            grid=grid,
            iterations=params["iterations"],
            steps=params["integration_steps"],
            l1_weight=params["l1_weight_full_resolution"] if full_resolution else params["l1_weight"],
            btv_weight=params["btv_weight"],
            btv_beta=params["btv_beta"],
            noise_std=params["noise_std"],
            step_size=params["step_size"],
            armijo_beta=params["armijo_beta"],
            step_decay=params["step_decay"],
            min_step_size=params["min_step_size"],
            chunk=chunk,
            warm_start=params["line_search_start"] == "warm",
            shared_noise=params["line_search_noise"] == "shared",
            search_points=min(params["line_search_points"], params["integration_steps"]),
            autocast=autocast_dtype(params["precision"], device),
        )


def evenly_spaced_points(steps: int, count: int) -> torch.Tensor:
    """Indices of ``count`` of the ``steps`` path points, evenly spaced and ending at alpha = 1.

    With alphas 1/N, ..., 1 these are the right Riemann sum of ``count`` intervals when ``count``
    divides N (20 steps, 5 points: alpha 0.2, 0.4, ..., 1.0).
    """
    return (torch.arange(1, count + 1) * steps / count).round().long() - 1


class Problem:
    """What stays fixed while the masks of one batch are optimised: images, baselines, noise sources."""

    def __init__(
        self, model: nn.Module, images: torch.Tensor, targets: list[int], params: dict, settings: Settings
    ):
        self.model = model
        self.settings = settings
        self.images = images
        self.baselines = blur_baseline(images, params["blur_kernel_fraction"])
        self.differences = images - self.baselines
        self.weights = bilateral_weights(images, params["btv_sigma"])
        self.targets = torch.tensor(targets, device=images.device)
        self.size = (images.shape[-2], images.shape[-1])
        steps = settings.steps
        # The published path points: alpha = 1/N, 2/N, ..., 1 (right Riemann sum).
        self.alphas = torch.linspace(1 / steps, 1, steps, device=images.device)
        self.all_points = torch.arange(steps, device=images.device)
        self.search_points = evenly_spaced_points(steps, settings.search_points).to(images.device)
        # One generator per image, all with the same seed: image i draws the same noise alone or batched.
        self.generators = [torch.Generator(images.device).manual_seed(params["seed"]) for _ in targets]
        self.signs = torch.tensor(TERM_SIGNS, device=images.device)
        # Noise of the last gradient pass at the search points, per image (``line_search_noise`` shared).
        self.kept_noise: dict[int, torch.Tensor] = {}
        self.memory_format = torch.contiguous_format

    def path_masks(self, masks_del: torch.Tensor, masks_ins: torch.Tensor) -> torch.Tensor:
        """The mask of each of the four terms at image resolution: B x 4 x 1 x H x W."""
        up_del, up_ins = upsample(masks_del, self.size), upsample(masks_ins, self.size)
        product = up_del * up_ins
        return torch.stack((product, product, up_del, up_ins), dim=1)

    def path_scores(
        self,
        rows: torch.Tensor,
        path_masks: torch.Tensor,
        points: torch.Tensor,
        noise: _NoiseStream,
        with_gradient: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target probability at each path point of each term for the images ``rows``, optionally its gradient.

        All (image, term, point) path images form one stream cut into chunks of ``settings.chunk``.
        With ``with_gradient``, each chunk's share of the halved objective ``0.5 * sum(sign * score)``
        (scores the means over ``points``) is differentiated with respect to ``path_masks`` at once, so
        memory stays bounded by one chunk (``torch.autograd.grad``: the model's ``.grad`` stays untouched).

        Returns:
            len(rows) x 4 x len(points) probabilities, and the gradient (shaped like ``path_masks``) or None.
        """
        count, per_image = len(points), 4 * len(points)
        total = len(rows) * per_image
        probs = torch.empty(total, device=self.images.device)
        gradient = torch.zeros_like(path_masks) if with_gradient else None
        alphas = self.alphas[points]
        for start in range(0, total, self.settings.chunk):
            end = min(start + self.settings.chunk, total)
            flat = torch.arange(start, end, device=self.images.device)
            row, term = rows[flat // per_image], (flat // count) % 4
            chunk_noise = noise.take(start, end - start)
            pieces = [
                self._path_piece(int(rows[local]), term_index, path_masks[local, term_index], alphas[first:last],
                                 chunk_noise[offset : offset + last - first])
                for local, term_index, first, last, offset in _pieces(start, end, count)
            ]
            path = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
            with self.autocast(with_gradient):
                logits = self.model(path.contiguous(memory_format=self.memory_format))
            chunk_probs = torch.softmax(logits.float(), dim=1).gather(1, self.targets[row].view(-1, 1)).squeeze(1)
            if gradient is not None:
                objective = 0.5 * (self.signs[term] * chunk_probs).sum() / count
                gradient += torch.autograd.grad(objective, path_masks)[0]
            probs[start:end] = chunk_probs.detach()
        return probs.view(len(rows), 4, count), gradient

    def autocast(self, with_gradient: bool) -> contextlib.AbstractContextManager:
        """Autocast (``precision``) for the gradient passes; the line search's passes stay float32.

        In bfloat16 the line search's Armijo test compares losses whose rounding error is as large as
        the decrease it tests for (a ResNet-18 X-ray: deletion 0.567 against 0.539 in float32), while
        bfloat16 gradients give float32's heatmap (0.538).
        """
        if self.settings.autocast is None or not with_gradient:
            return contextlib.nullcontext()
        return torch.autocast(self.images.device.type, dtype=self.settings.autocast)

    def _path_piece(
        self, row: int, term: int, mask: torch.Tensor, alphas: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The noisy path images of one image and term at the path points ``alphas``: k x C x H x W.

        Deletion paths run baseline + alpha*M*(image - baseline), from the blur to the masked image;
        insertion paths run image - alpha*M*(image - baseline) = baseline + (1 - alpha*M)*(...), from
        the image to the masked blur. The weight broadcasts over the points and channels, so no
        per-path copy of the image or the baseline is made.
        """
        weight = alphas.view(-1, 1, 1, 1) * mask
        if term % 2 == 1:
            weight = 1 - weight
        return torch.addcmul(self.baselines[row] + noise, self.differences[row], weight)

    def loss(
        self, rows: torch.Tensor, masks_del: torch.Tensor, masks_ins: torch.Tensor, points: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The objective and its terms over the path ``points`` for the images ``rows``, without gradients.

        The noise is the last gradient pass's (``line_search_noise`` shared, only at the search points)
        or a fresh draw (fresh, the paper; and always for other points).
        """
        shared = self.settings.shared_noise and torch.equal(points, self.search_points)
        noise = self.kept_stream(rows) if shared else self.fresh_stream(rows, points)
        with torch.no_grad():
            probs, _ = self.path_scores(rows, self.path_masks(masks_del, masks_ins), points, noise, False)
            return self._combine(rows, probs.mean(2), masks_del * masks_ins)

    def loss_and_gradient(
        self, masks_del: torch.Tensor, masks_ins: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The objective at the current masks of every image, and its total gradient for both masks.

        The gradient is ``0.5 * grad(IG terms) + grad(regulariser)``, the published weighting. The IG
        part is taken with respect to the image-resolution path masks chunk by chunk, then carried
        back through the upsampling to the mask cells in one step.

        Returns:
            the loss terms over all path points; with shared line-search noise and float32 passes also
            the loss at the search points from the same forward values (the line search's base, for
            free), else None;
            and the gradients for the deletion and the insertion mask.
        """
        rows = torch.arange(len(masks_del), device=masks_del.device)
        masks_del, masks_ins = masks_del.detach().requires_grad_(), masks_ins.detach().requires_grad_()
        path_masks = self.path_masks(masks_del, masks_ins)
        leaf = path_masks.detach().requires_grad_()
        keep = self.settings.shared_noise
        noise = self.fresh_stream(rows, self.all_points, keep_search_points=keep)
        probs, path_gradient = self.path_scores(rows, leaf, self.all_points, noise, with_gradient=True)
        product = masks_del * masks_ins
        loss = self._combine(rows, probs.mean(2), product)
        chained = (path_masks * path_gradient).sum() + loss["regulariser"].sum()
        grad_del, grad_ins = torch.autograd.grad(chained, (masks_del, masks_ins))
        loss = {name: value.detach() for name, value in loss.items()}
        search_base = None
        # After a bfloat16 gradient pass the line search evaluates its float32 base itself.
        if keep and self.settings.autocast is None:
            search_base = self._combine(rows, probs[:, :, self.search_points].mean(2), product.detach())["loss"]
        return loss, search_base, grad_del, grad_ins

    def fresh_stream(self, rows: torch.Tensor, points: torch.Tensor, keep_search_points: bool = False) -> _NoiseStream:
        """New noise: each image draws 4 x steps noise images from its generator (the published order)."""
        shape = (4, self.settings.steps, *self.images.shape[1:])

        def block(row: int) -> torch.Tensor:
            if self.settings.noise_std == 0:
                noise = torch.zeros(shape, device=self.images.device)
            else:
                noise = torch.randn(shape, generator=self.generators[row], device=self.images.device)
                noise *= self.settings.noise_std
            if keep_search_points:
                self.kept_noise[row] = noise[:, self.search_points].flatten(0, 1)
            return noise.flatten(0, 1) if len(points) == self.settings.steps else noise[:, points].flatten(0, 1)

        return _NoiseStream(rows, 4 * len(points), block)

    def kept_stream(self, rows: torch.Tensor) -> _NoiseStream:
        """The last gradient pass's noise at the search points."""
        return _NoiseStream(rows, 4 * len(self.search_points), self.kept_noise.__getitem__)

    def _combine(
        self, rows: torch.Tensor, terms: torch.Tensor, product: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        weights = (self.weights[0][rows], self.weights[1][rows])
        total_reg, l1, btv = regulariser(product, weights, s.l1_weight, s.btv_weight, s.btv_beta)
        loss = {name: terms[:, i] for i, name in enumerate(TERMS)}
        loss.update(l1=l1, btv=btv, regulariser=total_reg)
        loss["loss"] = (terms * self.signs).sum(1) + total_reg
        return loss


def _pieces(start: int, end: int, count: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The (image, term) runs of positions [start, end) of a stream of ``count`` points per term.

    Yields (image, term, first point, end point, offset of the run in the chunk).
    """
    position = start
    while position < end:
        block, first = divmod(position, count)
        stop = min(end, (block + 1) * count)
        yield block // 4, block % 4, first, first + stop - position, position - start
        position = stop


class _NoiseStream:
    """Path noise for the (image, term, point) stream of ``rows``, one image's block at a time.

    ``block(row)`` gives image ``row``'s ``per_image`` noise images; it is called the first time a
    chunk reaches that image, and the block is freed once the chunks have moved past it.
    """

    def __init__(self, rows: torch.Tensor, per_image: int, block: Callable[[int], torch.Tensor]):
        self.rows = rows.tolist()
        self.per_image = per_image
        self.block = block
        self.drawn: dict[int, torch.Tensor] = {}

    def take(self, start: int, count: int) -> torch.Tensor:
        first, last = start // self.per_image, (start + count - 1) // self.per_image
        for local in [k for k in self.drawn if k < first]:
            del self.drawn[local]
        pieces = []
        for local in range(first, last + 1):
            if local not in self.drawn:
                self.drawn[local] = self.block(self.rows[local])
            begin = max(start - local * self.per_image, 0)
            end = min(start + count - local * self.per_image, self.per_image)
            pieces.append(self.drawn[local][begin:end])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


@dataclass
class Optimised:
    """The result of ``optimise``: both masks (B x 1 x rows x columns, 1 = keep the image) and a record."""

    problem: Problem
    masks_del: torch.Tensor
    masks_ins: torch.Tensor
    # Target probability on the image and on the baseline, per image.
    start_scores: dict[str, torch.Tensor]
    # Loss terms (over all path points) at the first evaluation and after the last step; per
    # iteration the loss after its step as the line search measured it, and the step.
    initial: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    losses: list[list[float]]
    steps: list[list[float]]

    def heatmaps(self) -> dict[str, torch.Tensor]:
        """B x H x W maps, high = important, of the deletion mask, the insertion mask and their product."""
        size = self.problem.size
        return {
            "deletion_mask": 1 - upsample(self.masks_del, size)[:, 0],
            "insertion_mask": 1 - upsample(self.masks_ins, size)[:, 0],
            "product": 1 - upsample(self.masks_del * self.masks_ins, size)[:, 0],
        }


def optimise(
    model: nn.Module, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
) -> Optimised:
    """Run the iGOS++ optimisation for a batch of images (the explainer minus its metrics).

    Args:
        model: a classifier in eval mode (B x C x H x W in [0, 1] -> B x K logits).
        images: B x C x H x W in [0, 1], on the model's device.
        targets: the class to explain for each image.
        params: validated ``igos_pp`` parameters with defaults filled.
        progress: called after every iteration with the fraction done and the current loss(es);
            an exception it raises (``JobCancelled``) stops the optimisation there.

    Raises:
        InvalidInput: ``invalid_params`` for a ``mask_size`` above the input's shorter side,
            ``target_out_of_range`` for a class the model does not have.
    """
    # A job may run explainers under inference mode; the optimisation needs autograd, for the masks
    # only: with the weights frozen autograd skips their gradient bookkeeping (a ResNet-18 forward and
    # backward on a CPU: 7% faster). The guard gives the weights their flags back.
    with torch.inference_mode(False), torch.enable_grad(), model_left_as_found(model):
        model.requires_grad_(False)
        images = images.detach().clone().float()
        settings = Settings.from_params(params, images.shape[-2], images.shape[-1], images.device)
        problem = Problem(model, images, targets, params, settings)
        start_scores = _start_scores(problem)
        masks_del = torch.ones(len(targets), 1, *settings.grid, device=images.device)
        masks_ins = torch.ones_like(masks_del)
        first_steps = torch.full((len(targets),), settings.step_size, device=images.device)
        losses, steps = [], []
        for iteration in range(settings.iterations):
            loss, search_base, grad_del, grad_ins = problem.loss_and_gradient(masks_del, masks_ins)
            if iteration == 0:
                initial = loss
            grads = (grad_del, grad_ins)
            step, reached = _line_search(problem, masks_del, masks_ins, grads, search_base, first_steps)
            masks_del = (masks_del - step.view(-1, 1, 1, 1) * grad_del).clamp(0, 1)
            masks_ins = (masks_ins - step.view(-1, 1, 1, 1) * grad_ins).clamp(0, 1)
            first_steps = _next_first_steps(settings, step)
            losses.append(reached["loss"].tolist())
            steps.append(step.tolist())
            shown = ", ".join(f"{value:.4f}" for value in losses[-1][:8])
            note = f"iteration {iteration + 1}/{settings.iterations}, loss {shown}"
            progress(0.95 * (iteration + 1) / settings.iterations, note)
        final = reached
        if settings.search_points < settings.steps:
            # The line search measured the loss on a few points only; report it over the whole path.
            final = problem.loss(torch.arange(len(targets), device=images.device), masks_del, masks_ins,
                                 problem.all_points)
    return Optimised(problem, masks_del, masks_ins, start_scores, initial, final, losses, steps)


def _start_scores(problem: Problem) -> dict[str, torch.Tensor]:
    """The target probability on the image and on the baseline; refuses targets the model lacks.

    Also picks the memory format of the path images (``_preferred_memory_format``) on this first call.
    """
    with torch.no_grad():
        logits, problem.memory_format = _preferred_memory_format(
            problem.model, torch.cat((problem.images, problem.baselines))
        )
    classes = logits.shape[1]
    if int(problem.targets.max()) >= classes or int(problem.targets.min()) < 0:
        raise InvalidInput(
            f"target class out of range: this model has classes 0..{classes - 1}", code="target_out_of_range"
        )
    probs = torch.softmax(logits, 1).view(2, len(problem.targets), classes)
    index = problem.targets.view(1, -1, 1).expand(2, -1, 1)
    image_score, baseline_score = probs.gather(2, index).squeeze(2)
    return {"image": image_score, "baseline": baseline_score}


def _preferred_memory_format(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.memory_format]:
    """The model's logits on ``batch``, and the memory format its path images should have.

    On a CPU, channels-last: oneDNN's convolutions run faster on it than on NCHW (a ResNet-18 at
    224 x 224 in batches of 20, one thread, forward and backward: 66 against 71 ms an image in
    float32, 24 against 32 in bfloat16), with the same result up to float rounding. A model that cannot take it (``.view`` on an activation, say) raises, and gets NCHW.
    On CUDA NCHW is kept: channels-last was not measured there.
    """
    if batch.device.type == "cpu" and batch.ndim == 4:
        try:
            return model(batch.contiguous(memory_format=torch.channels_last)), torch.channels_last
        except RuntimeError:
            pass
    return model(batch), torch.contiguous_format


def _line_search(
    problem: Problem,
    masks_del: torch.Tensor,
    masks_ins: torch.Tensor,
    grads: tuple[torch.Tensor, torch.Tensor],
    search_base: torch.Tensor | None,
    first_steps: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Armijo backtracking per image: shrink the step until ``loss(new) <= loss - beta * step * |g|^2``.

    Each image starts from its ``first_steps`` entry, and only images whose condition still fails are
    re-evaluated. The losses are over the search points; ``search_base`` is the loss at the current
    masks there, or None to evaluate it first (fresh noise, the paper). A step that shrinks below
    ``min_step_size`` is kept as it is (a negligible move), as in the published code.

    Returns:
        The step per image and the loss terms at the masks that step leads to.
    """
    s = problem.settings
    count = len(first_steps)
    all_rows = torch.arange(count, device=first_steps.device)
    if search_base is None:
        search_base = problem.loss(all_rows, masks_del, masks_ins, problem.search_points)["loss"]
    grad_del, grad_ins = grads
    step = first_steps.clone()
    slope = -s.armijo_beta * (grad_del.pow(2).flatten(1).sum(1) + grad_ins.pow(2).flatten(1).sum(1))
    active = torch.ones(count, dtype=torch.bool, device=step.device)
    reached: dict[str, torch.Tensor] = {}
    while active.any():
        rows = active.nonzero().squeeze(1)
        trial = step[rows].view(-1, 1, 1, 1)
        new_del = (masks_del[rows] - trial * grad_del[rows]).clamp(0, 1)
        new_ins = (masks_ins[rows] - trial * grad_ins[rows]).clamp(0, 1)
        loss = problem.loss(rows, new_del, new_ins, problem.search_points)
        for name, value in loss.items():
            reached.setdefault(name, torch.zeros(count, device=value.device))[rows] = value
        failed = (loss["loss"] > search_base[rows] + step[rows] * slope[rows]) & (step[rows] >= s.min_step_size)
        active[rows] = failed
        step[rows[failed]] *= s.step_decay
    return step, reached


def _next_first_steps(settings: Settings, accepted: torch.Tensor) -> torch.Tensor:
    """Where each image's next line search starts.

    The paper restarts from ``step_size`` every iteration. Warm-started, it starts one decay above the
    step just accepted (capped at ``step_size``), so a step that suits the mask is found again in
    about two trials instead of five or six; an image whose search ran below ``min_step_size``
    restarts from ``step_size``, so a collapsed step cannot stall it for the rest of the run.
    """
    restart = torch.full_like(accepted, settings.step_size)
    if not settings.warm_start:
        return restart
    warm = (accepted / settings.step_decay).clamp(max=settings.step_size)
    return torch.where(accepted < settings.min_step_size, restart, warm)


class IgosPP(Explainer):
    """iGOS++ (Khorram, Lawson, Fuxin; ACM-CHIL 2021, arXiv:2012.15783) for any classifier.

    Works on CPU and CUDA, any input size and aspect ratio, grey or RGB, softmax or (two-logit)
    sigmoid models; the score is the softmax probability of the target class. Details per image:
    iterations, mask resolution, initial and final loss with its terms, loss and step per iteration,
    and the deletion/insertion AUC of the deletion mask, the insertion mask and their product.

    Example:
        >>> explainer = IgosPP(classifier)
        >>> params = CATALOGUE["igos_pp"].resolve_params({"mask_size": 14})
        >>> explanation = explainer.explain(images, [1] * len(images), params)
        >>> explanation.heatmaps.shape  # B x H x W, high = important
    """

    name: ClassVar[str] = "igos_pp"

    def _explain(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        result = optimise(self.model, images, targets, params, progress)
        heatmaps = {name: heatmap.detach() for name, heatmap in result.heatmaps().items()}
        aucs, auc_settings = _mask_aucs(self.model, result.problem, heatmaps, params["metric_steps"])
        progress(1.0, "deletion/insertion AUC of the deletion, insertion and product masks")
        details = []
        for i in range(len(targets)):
            final = {name: round(float(value[i]), 6) for name, value in result.final.items()}
            details.append(
                {
                    "iterations": result.problem.settings.iterations,
                    "mask_resolution": list(result.problem.settings.grid),
                    "l1_weight_used": result.problem.settings.l1_weight,
                    "initial_loss": round(float(result.initial["loss"][i]), 6),
                    "final_loss": final.pop("loss"),
                    "final_loss_terms": final,
                    "loss_per_iteration": [round(losses[i], 6) for losses in result.losses],
                    "step_per_iteration": [steps[i] for steps in result.steps],
                    "target_score": round(float(result.start_scores["image"][i]), 6),
                    "baseline_score": round(float(result.start_scores["baseline"][i]), 6),
                    "mask_auc": {name: auc[i] for name, auc in aucs.items()},
                    "mask_auc_settings": auc_settings,
                }
            )
            if result.start_scores["image"][i] < 0.5:
                details[-1]["warning"] = LOW_CONFIDENCE
        return Explanation(heatmaps=heatmaps["product"], details=details)


def _mask_aucs(
    model: nn.Module, problem: Problem, heatmaps: dict[str, torch.Tensor], steps: int
) -> tuple[dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Deletion and insertion AUC of each mask per image (the paper's supplementary Table 6).

    Measured with the service's own metric (``workers.scoring.deletion_insertion`` with its default
    substrates), the protocol of every method's main faithfulness figure, so the product's figures
    are those of the job's main figure and all methods compare on one protocol.

    Returns:
        mask name -> per image ``{"deletion_auc", "insertion_auc"}``, and the metric's settings.
    """
    aucs: dict[str, list[dict[str, float]]] = {name: [] for name in heatmaps}
    settings: dict[str, Any] = {}
    for i, target in enumerate(problem.targets.tolist()):
        image = problem.images[i : i + 1]
        for name, heatmap in heatmaps.items():
            scores = scoring.deletion_insertion(model, image, heatmap[i].detach(), target, steps=steps)
            aucs[name].append({key: round(scores[key], 6) for key in ("deletion_auc", "insertion_auc")})
            settings = scores["settings"]
    return aucs, settings
