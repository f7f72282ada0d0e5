"""Figures: image | heatmap overlays, mean perturbation curves."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def save_overlays(
    path: Path, images: Tensor, maps: dict[str, Tensor], labels: Tensor | None = None, n: int = 8
) -> None:
    """A grid: one row per image (first ``n``), columns = image, then each method's heatmap overlaid.

    Args:
        images: ``(N, C, H, W)`` in [0, 1].
        maps: method name → heatmaps ``(N, 1, H, W)`` in [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, images.shape[0])
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n), squeeze=False)
    for i in range(n):
        img = images[i].detach().cpu().permute(1, 2, 0).clamp(0, 1)
        img = img.squeeze(-1) if img.shape[-1] == 1 else img
        axes[i, 0].imshow(img, cmap="gray" if img.dim() == 2 else None)
        axes[i, 0].set_title("image" if labels is None else f"label {int(labels[i])}", fontsize=8)
        for j, (name, h) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(img, cmap="gray" if img.dim() == 2 else None)
            axes[i, j].imshow(h[i, 0].detach().cpu(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i, j].set_title(name, fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_curves(
    path: Path, panels: dict[str, tuple[str, dict[str, tuple[Tensor, Tensor]]]]
) -> None:
    """Mean curves, one panel per curve family, each on its own x-axis.

    Args:
        panels: title → (x-axis label, {curve name → (x ``(K,)``, per-sample curves
            ``(N, K)``)}); NaNs are ignored in the mean.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, (xlabel, curves)) in zip(axes.flat, panels.items(), strict=False):
        for name, (x, c) in curves.items():
            ax.plot(x.cpu(), torch.nanmean(c.double(), 0).cpu(), label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("score", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
