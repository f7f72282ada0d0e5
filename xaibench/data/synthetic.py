"""The LAX paper's Synthetic MNIST recipe (§4.1, A.2) as a deterministic generator.

Each image is a ``size``×``size`` RGB canvas of uniform random noise, a few
random boxes as distractors, and one digit randomly scaled and placed; the
digit's pixel mask is the ground-truth region. Everything is drawn from one
``torch.Generator`` seeded by ``seed``, so the same call gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SyntheticRecipe:
    """Knobs of the generator (all fractions of the [0, 1] intensity range).

    Attributes:
        size: canvas side in pixels.
        digit_size: (min, max) side of the scaled digit in pixels.
        noise_max: background noise is U[0, noise_max] per pixel and channel.
        boxes: (min, max) number of distractor boxes.
        box_size: (min, max) box side in pixels.
        box_intensity: (min, max) box intensity.
        digit_intensity: (min, max) digit stroke intensity.
        mask_threshold: a digit pixel belongs to the mask where its (scaled)
            stroke value exceeds this fraction of the maximum.
    """

    size: int = 64
    digit_size: tuple[int, int] = (20, 34)
    noise_max: float = 0.5
    boxes: tuple[int, int] = (1, 3)
    box_size: tuple[int, int] = (6, 16)
    box_intensity: tuple[float, float] = (0.3, 0.8)
    digit_intensity: tuple[float, float] = (0.8, 1.0)
    mask_threshold: float = 0.3


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _uniform(g: torch.Generator, lo: float, hi: float, shape: tuple[int, ...] = (1,)) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def compose(
    digits: Tensor, labels: Tensor, n: int, seed: int, recipe: SyntheticRecipe = SyntheticRecipe()
) -> dict[str, Tensor]:
    """Compose ``n`` synthetic images from source digits.

    Args:
        digits: source digit strokes ``(M, h, w)`` in [0, 1].
        labels: their classes ``(M,)``.
        n: number of images to generate.
        seed: generator seed; same arguments give identical outputs.
        recipe: generator knobs.

    Returns:
        ``images`` ``(n, 3, S, S)`` uint8, ``labels`` ``(n,)`` int64,
        ``masks`` ``(n, 1, S, S)`` bool, ``source`` ``(n,)`` index into ``digits``.
    """
    if digits.ndim != 3 or len(digits) != len(labels) or len(digits) == 0:
        raise ValueError(
            f"digits must be (M,h,w) with M>0 matching labels, got {tuple(digits.shape)}"
        )
    g = torch.Generator().manual_seed(int(seed))
    s = recipe.size
    if recipe.digit_size[1] > s:
        raise ValueError(f"digit_size {recipe.digit_size} does not fit a {s}px canvas")
    images = torch.empty((n, 3, s, s), dtype=torch.uint8)
    masks = torch.zeros((n, 1, s, s), dtype=torch.bool)
    source = torch.randint(0, len(digits), (n,), generator=g)
    for i in range(n):  # generation only (cached once), not a hot path
        img = _uniform(g, 0.0, recipe.noise_max, (3, s, s))
        for _ in range(_randint(g, *recipe.boxes)):
            bh, bw = _randint(g, *recipe.box_size), _randint(g, *recipe.box_size)
            y, x = _randint(g, 0, s - bh), _randint(g, 0, s - bw)
            img[:, y : y + bh, x : x + bw] = _uniform(g, *recipe.box_intensity, (3, 1, 1))
        d = _randint(g, *recipe.digit_size)
        stroke = F.interpolate(
            digits[source[i]][None, None], size=(d, d), mode="bilinear", align_corners=False
        )[0]
        stroke = stroke.clamp(0, 1)
        y, x = _randint(g, 0, s - d), _randint(g, 0, s - d)
        colour = _uniform(g, *recipe.digit_intensity, (3, 1, 1))
        patch = img[:, y : y + d, x : x + d]
        img[:, y : y + d, x : x + d] = patch * (1 - stroke) + colour * stroke
        masks[i, 0, y : y + d, x : x + d] = stroke[0] > recipe.mask_threshold * stroke.max()
        images[i] = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return {"images": images, "labels": labels[source].long(), "masks": masks, "source": source}


def split_sources(m: int, fractions: tuple[float, float, float], seed: int) -> dict[str, Tensor]:
    """Disjoint train/val/test pools of source-digit indices (a seeded permutation).

    Composites of one split never reuse another split's source digits, so the
    test accuracy measures generalisation to unseen handwriting.
    """
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(int(seed)))
    n_tr = int(round(fractions[0] * m))
    n_va = int(round(fractions[1] * m))
    return {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
