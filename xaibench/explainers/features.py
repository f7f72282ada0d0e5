"""Inputs for perturbation explainers: feature masks and reference sets.

- :func:`feature_mask` groups pixels into interpretable features for
  Occlusion-style, LIME and SHAP methods: a square patch grid (torch, default)
  or SLIC superpixels (scikit-image, computed per image on the CPU).
- :func:`baseline_distribution` gives the reference set of the SHAP methods.
  The single "absent" image of the other methods is
  :func:`xaibench.baselines.make_baseline`, shared with the metrics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from xaibench.baselines import make_baseline  # noqa: F401  (re-exported by xaibench.explainers)

MASK_KINDS = ("grid", "slic")
DISTRIBUTION_KINDS = ("uniform", "constant")


def feature_mask(
    images: Tensor, kind: str = "grid", *, patch: int = 8, n_segments: int = 64
) -> Tensor:
    """Integer feature ids per pixel, shared by all channels.

    Args:
        images: ``(N, C, H, W)``.
        kind: ``"grid"`` (``patch``×``patch`` squares, ids row-major) or
            ``"slic"`` (SLIC superpixels on the min-max scaled image; about
            ``n_segments`` per image).
        patch: side of a grid cell in pixels (edge cells may be smaller).
        n_segments: SLIC's target number of superpixels.

    Returns:
        ``(N, 1, H, W)`` int64 ids starting at 0, on ``images.device``.
    """
    n, c, h, w = images.shape
    if kind == "grid":
        if not (isinstance(patch, int) and patch >= 1):
            raise ValueError(f"patch={patch!r} must be an integer >= 1 (pixels per grid cell side)")
        cols = -(-w // patch)
        rows = torch.arange(h, device=images.device) // patch  # (H,)
        colid = torch.arange(w, device=images.device) // patch  # (W,)
        ids = rows[:, None] * cols + colid[None, :]  # (H, W)
        return ids.expand(n, 1, h, w).clone()
    if kind == "slic":
        from skimage.segmentation import slic

        x = images.detach().float()
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)
        arr = x.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C) for scikit-image
        # RGB in [0, 1] without Lab conversion; compactness 1 balances colour and
        # space at that scale (scikit-image 0.26 returns a single segment on
        # small images with its Lab default)
        segs = [
            slic(
                a,
                n_segments=n_segments,
                compactness=1.0,
                convert2lab=False,
                start_label=0,
                channel_axis=-1,
            )
            for a in arr
        ]  # scikit-image segments one image at a time
        return torch.from_numpy(np.stack(segs)).long().unsqueeze(1).to(images.device)
    raise ValueError(f"feature mask kind={kind!r} is unknown; choose one of {list(MASK_KINDS)}")


def baseline_distribution(
    images: Tensor, n: int, kind: str | float = "uniform", *, seed: int = 0
) -> Tensor:
    """``n`` reference images for GradientShap / DeepLiftShap, shared by the batch.

    Args:
        images: ``(N, C, H, W)``; the batch's value range bounds ``"uniform"``.
        n: number of references (>= 2 for DeepLiftShap).
        kind: ``"uniform"`` (i.i.d. uniform noise in ``[images.min(), images.max()]``)
            or a number (``n`` copies of that constant image).
        seed: seed of the noise (drawn on the CPU, so equal on every device).

    Returns:
        ``(n, C, H, W)`` on ``images.device``.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n_baselines={n!r} must be an integer >= 1")
    shape = (n, *images.shape[1:])
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        return torch.full(shape, float(kind), dtype=images.dtype, device=images.device)
    if kind == "uniform":
        g = torch.Generator().manual_seed(int(seed))
        lo, hi = images.min(), images.max()
        noise = torch.rand(shape, generator=g, dtype=torch.float64)
        return (lo + (hi - lo) * noise.to(device=images.device, dtype=images.dtype)).contiguous()
    raise ValueError(
        f"baseline distribution {kind!r} is unknown; give a number or one of {list(DISTRIBUTION_KINDS)}"
    )
