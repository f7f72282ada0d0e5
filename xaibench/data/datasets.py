"""Map-style datasets yielding ``(image, label, index)`` or ``(image, label, index, mask)``.

``image`` is ``(C, H, W)`` float in [0, 1] (model-input space: a removed pixel
is 0, as ``X ⊙ M``); ``label`` an int64 scalar; ``index`` the sample's
position in its split (used to de-duplicate under DDP); ``mask`` ``(1, H, W)``
bool, the ground-truth region where the dataset has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


class Batch(NamedTuple):
    """A collated batch: images ``(N,C,H,W)`` in [0,1], labels ``(N,)``, index ``(N,)``, masks ``(N,1,H,W)`` or None."""

    images: Tensor
    labels: Tensor
    index: Tensor
    masks: Tensor | None


def unpack_batch(batch: tuple | list) -> Batch:
    """Name the fields of a collated batch of 3 or 4 items."""
    if len(batch) == 3:
        return Batch(batch[0], batch[1], batch[2], None)
    if len(batch) == 4:
        return Batch(*batch)
    raise ValueError(f"a batch has 3 (image, label, index) or 4 (+ mask) items, got {len(batch)}")


def sample_key(key: int | tuple[int, int]) -> tuple[int, torch.Generator | None]:
    """The index and augmentation RNG of a sample key.

    A key is a plain index (augmentations then draw from the global torch RNG)
    or ``(index, sample_seed)`` from :class:`~xaibench.data.determinism.EpochSampler`
    (they draw from a generator seeded with ``sample_seed``, the same in any worker).
    """
    if isinstance(key, (tuple, list)):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


def flip_coin(rng: torch.Generator | None) -> bool:
    """A fair coin from ``rng`` (the global torch RNG if None): flip this sample?"""
    return bool(torch.rand((), generator=rng) < 0.5)


class TensorImageDataset(Dataset):
    """Images held in memory as uint8 ``(M, C, H, W)``; optional masks ``(M, 1, H, W)`` bool.

    Args:
        images: uint8 images.
        labels: int64 labels ``(M,)``.
        masks: ground-truth masks or None.
        augment: random horizontal flips (training only; the mask flips too).
        size: resize to ``size``×``size`` (bilinear; masks nearest) if given.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        masks: Tensor | None = None,
        *,
        augment: bool = False,
        size: int | None = None,
    ) -> None:
        self.images, self.labels, self.masks = images, labels.long(), masks
        self.augment, self.size = augment, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]):
        i, rng = sample_key(key)
        x = self.images[i].float() / 255.0
        m = self.masks[i] if self.masks is not None else None
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(
                x[None], size=(self.size, self.size), mode="bilinear", align_corners=False
            )[0]
            if m is not None:
                m = F.interpolate(m[None].float(), size=(self.size, self.size), mode="nearest")[
                    0
                ].bool()
        if self.augment and flip_coin(rng):
            x = x.flip(-1)
            m = m.flip(-1) if m is not None else None
        out = (x, self.labels[i], torch.tensor(i))
        return out if m is None else (*out, m)


class CubDataset(Dataset):
    """CUB-200-2011 images read lazily from disk, resized to ``size``², box as mask.

    Args:
        root: the ``CUB_200_2011/images`` folder.
        paths: image paths relative to ``root``.
        labels: remapped labels ``(M,)`` in ``[0, num_classes)``.
        boxes: ``(M, 4)`` (x, y, w, h) in original pixels.
        size: output side in pixels (224 in the paper).
        augment: random horizontal flips.
    """

    def __init__(
        self,
        root: Path,
        paths: list[str],
        labels: Tensor,
        boxes: Tensor,
        *,
        size: int = 224,
        augment: bool = False,
    ) -> None:
        self.root, self.paths, self.labels, self.boxes = Path(root), paths, labels.long(), boxes
        self.size, self.augment = size, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]):
        from PIL import Image

        i, rng = sample_key(key)
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w0, h0 = im.size
                im = im.resize((self.size, self.size), Image.BILINEAR)
                x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(
                    self.size, self.size, 3
                )
        except OSError as e:
            raise FileNotFoundError(
                f"CUB image {path} could not be read ({e}); is the CUB_200_2011/images/ folder complete?"
            ) from e
        x = x.permute(2, 0, 1).float() / 255.0
        bx, by, bw, bh = self.boxes[i].tolist()
        sx, sy = self.size / w0, self.size / h0
        m = torch.zeros((1, self.size, self.size), dtype=torch.bool)
        m[
            :, int(by * sy) : int(round((by + bh) * sy)), int(bx * sx) : int(round((bx + bw) * sx))
        ] = True
        if self.augment and flip_coin(rng):
            x, m = x.flip(-1), m.flip(-1)
        return x, self.labels[i], torch.tensor(i), m
