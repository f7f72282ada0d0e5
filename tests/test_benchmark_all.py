"""experiment=benchmark_all sweeps every explainer YAML, and per-method settings
(``explainer_settings.<name>``) reach that method whichever role it has."""

from __future__ import annotations

from conftest import ROOT

from xaibench.build import build_explainer, explainer_configs

EXPLAINERS = sorted(p.stem for p in (ROOT / "configs" / "explainer").glob("*.yaml"))


def sweep_names(cfg) -> list[str]:
    return [n.strip() for n in str(cfg.hydra.sweeper.params.explainer).split(",")]


def test_benchmark_all_sweeps_every_explainer_with_valid_settings(cfg_factory):
    cfg = cfg_factory(["experiment=benchmark_all"])
    names = sweep_names(cfg)
    assert sorted(names) == [n for n in EXPLAINERS if n != "none"]
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert set(cfg.explainer_settings) <= set(names)
    for name in cfg.explainer_settings:  # each method's settings build (a typo fails here)
        point = cfg_factory(["experiment=benchmark_all", f"explainer={name}"])
        node = explainer_configs(point)[name]
        for key, value in cfg.explainer_settings[name].items():
            got = node[key]
            assert (
                all(got[k] == v for k, v in value.items())
                if hasattr(value, "items")
                else got == value
            )
        build_explainer(node, name)


def test_explainer_settings_reach_compare_with_rows(cfg_factory):
    cfg = cfg_factory(
        ["explainer=gradcam", "compare_with=[lime]", "+explainer_settings.lime.n_samples=16"]
    )
    nodes = explainer_configs(cfg)
    assert nodes["lime"].n_samples == 16
    assert build_explainer(nodes["lime"], "lime").n_samples == 16


def test_deepfaith_ablation_sweeps_the_four_variants(cfg_factory):
    cfg = cfg_factory(["experiment=deepfaith_ablation"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    variants = str(cfg.hydra.sweeper.params["+deepfaith_ablation"]).split(",")
    expected = {"full": ("full", True), "pc": ("pc", True), "lc": ("lc", True),
                "no_filter": ("full", False)}  # fmt: skip
    assert variants == list(expected)
    for v, (loss, use_filter) in expected.items():
        point = cfg_factory(["experiment=deepfaith_ablation", f"+deepfaith_ablation={v}"])
        node = explainer_configs(point)["deepfaith"]
        assert (node.loss, node.use_filter) == (loss, use_filter)
        build_explainer(node, "deepfaith")
