"""Do the explainers point at the digit? A sanity check on synthetic_digits.

With the demo classifier (``trained_digits``: ResNet18 width 0.25, stride2
stem, 64×64 inputs), the share of heatmap mass inside the digit's mask,
``Σ h·mask / Σ h``, averaged over 64 test images, must be clearly above the
mask's area fraction (what a random map scores on average). Noise
backgrounds and distractor boxes make that non-trivial.
"""

from __future__ import annotations

import pytest
import torch

from xaibench.explainers import get_explainer

# methods held to the bar, with their settings for 64 images on a CPU;
# eigencam/kpcacam are class-agnostic (first principal component, sign ambiguous)
# and the sanity baselines are reported but not held to it.
CHECKED = {
    "gradcam": {},
    "gradcampp": {},
    "layercam": {},
    "finercam": {},
    "scorecam": {},
    "ablationcam": {},
    "saliency": {},
    "input_x_gradient": {},
    "guided_backprop": {},
    "integrated_gradients": {"n_steps": 16},
    "deeplift": {},
    "lrp": {},
    "gradient_shap": {"n_samples": 8},
    "occlusion": {"window": 8, "stride": 8},
}
REPORTED = {"eigencam": {}, "kpcacam": {}, "random": {}, "center": {}}
# x area fraction: above the centre-bias map (x1.63 on this data). Measured with the
# trained_digits recipe: CAMs x2.17 (finercam) to x2.43, gradient methods x3.0-x8.0.
MARGIN = 1.8


@pytest.fixture(scope="module")
def mass_table(trained_digits):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model, x, y = trained_digits["model"], trained_digits["images"], trained_digits["labels"]
    mask = trained_digits["masks"].to(x.dtype)  # (N, 1, H, W) in {0, 1}
    area = mask.flatten(1).mean(1)  # (N,) fraction of pixels in the digit
    table = {}
    for name, kw in {**CHECKED, **REPORTED}.items():
        h = get_explainer(name, **kw)(model, x, y)
        inside = (h * mask).flatten(1).sum(1) / h.flatten(1).sum(1).clamp_min(1e-12)
        table[name] = (float(inside.mean()), float(area.mean()))
    torch.set_num_threads(n)
    print(f"\nmass in digit mask vs mask area (64 test images, acc {trained_digits['test_acc']:.3f}):")
    for name, (m, a) in table.items():
        print(f"  {name:22s} {m:.3f}  vs {a:.3f}  (x{m / a:.2f})")
    return table


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_mass_inside_digit_beats_area(mass_table, name):
    mass, area = mass_table[name]
    assert mass > MARGIN * area, f"{name}: mass in mask {mass:.3f} vs area {area:.3f}"


def test_random_map_scores_about_the_area(mass_table):
    mass, area = mass_table["random"]
    assert abs(mass - area) < 0.25 * area
