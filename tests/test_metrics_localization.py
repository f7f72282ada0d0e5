"""Localization scores by hand."""

from __future__ import annotations

import math

import torch

from xaibench.metrics import localization


def test_localization_by_hand():
    masks = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    masks[:, 0, 0, 0] = True
    masks[:, 0, 0, 1] = True  # top row is the object
    h = torch.tensor(
        [
            [[[1.0, 0.6], [0.2, 0.2]]],  # perfect: max inside, mass 1.6/2, top-2 inside, IoU 1
            [[[0.0, 0.5], [1.0, 0.5]]],  # max outside; top-2 = {1.0 at (1,0), 0.5 at (0,1)}
            [[[0.0, 0.0], [0.0, 0.0]]],  # zero map: mass undefined
        ]
    )
    out = localization(
        None, torch.zeros(3, 3, 2, 2), h, torch.zeros(3, dtype=torch.int64), masks=masks
    )
    assert out["pointing_game"].tolist() == [1.0, 0.0, 1.0]
    assert math.isclose(out["relevance_mass"][0], 0.8, rel_tol=1e-6)
    assert math.isclose(out["relevance_mass"][1], 0.25, rel_tol=1e-6)
    assert math.isnan(out["relevance_mass"][2])
    assert out["relevance_rank"].tolist() == [1.0, 0.5, 1.0]
    # IoU at α_min = 0.5: {(0,0),(0,1)} vs mask -> 1; {(0,1),(1,0),(1,1)} -> 1/4; {} -> 0
    assert out["iou"].tolist() == [1.0, 0.25, 0.0]


def test_empty_mask_is_nan():
    out = localization(
        None,
        torch.zeros(1, 1, 2, 2),
        torch.rand(1, 1, 2, 2),
        torch.zeros(1, dtype=torch.int64),
        masks=torch.zeros(1, 1, 2, 2, dtype=torch.bool),
    )
    assert all(math.isnan(float(v)) for v in out.values())
