"""curves.png: each curve is drawn over the grid its metric returned (Show/Hide over
[α_min, 1], value and percent modes over their own steps), one panel per family."""

from __future__ import annotations

import torch

from xaibench.eval.callback import curve_grid
from xaibench.eval.figures import save_curves


def test_each_curve_gets_the_grid_of_its_mode():
    res = {
        "show_curve": torch.zeros(4, 6),
        "alphas": torch.linspace(0.5, 1, 6),
        "insertion_curve_value": torch.zeros(4, 11),
        "steps_value": torch.linspace(0, 1, 11),
        "insertion_curve_percent": torch.zeros(4, 6),
        "steps_percent": torch.linspace(0, 1, 6) ** 2,
    }
    name, x = curve_grid("show_curve", 6, res)
    assert name == "alphas" and x[0] == 0.5  # not [0, 1]
    assert curve_grid("insertion_curve_value", 11, res)[0] == "steps_value"
    name, x = curve_grid("insertion_curve_percent", 6, res)  # same length as alphas
    assert name == "steps_percent" and torch.allclose(x, torch.linspace(0, 1, 6).double() ** 2)
    name, x = curve_grid("irof_curve", 5, res)
    assert name is None and torch.equal(x, torch.linspace(0, 1, 5, dtype=torch.float64))


def test_save_curves_draws_one_panel_per_family(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    c = torch.rand(3, 5)
    panels = {
        "paper: Show / Hide": ("α", {"show_curve": (torch.linspace(0.5, 1, 5), c)}),
        "irof: curves": ("fraction", {"irof_curve": (torch.linspace(0, 1, 5), c)}),
    }
    figures = []
    orig = plt.Figure.savefig
    try:
        plt.Figure.savefig = lambda self, *a, **k: (figures.append(self), orig(self, *a, **k))[1]
        save_curves(tmp_path / "curves.png", panels)
    finally:
        plt.Figure.savefig = orig
    axes = [ax for ax in figures[0].axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == list(panels)
    assert axes[0].get_xlim()[0] >= 0.45  # the Show/Hide panel starts near α_min
    assert (tmp_path / "curves.png").stat().st_size > 0
