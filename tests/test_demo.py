"""The demo at its real size (``make demo``): minutes on 2 cores, so ``@pytest.mark.slow``
(``make test-full``). The README's claims about it are checked here."""

from __future__ import annotations

import pytest

from xaibench import pipeline


@pytest.mark.slow
def test_demo_classifier_learns_and_lax_beats_gradcam(cfg_factory):
    summary = pipeline.train(cfg_factory(["experiment=demo"]))
    assert summary["base_classifier"]["test_acc"] >= 0.9
    assert list(summary["test"]) == [
        "lax",
        "kpcacam",
        "gradcam",
        "gradcampp",
        "layercam",
        "finercam",
    ]
    lax, gradcam = summary["test"]["lax"], summary["test"]["gradcam"]
    assert lax["msi"]["n"] == gradcam["msi"]["n"] == 500
    # LAX is trained for MSI: its whole 95 % CI lies above Grad-CAM's
    assert lax["msi"]["ci_low"] > gradcam["msi"]["ci_high"]
