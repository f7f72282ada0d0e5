"""Every ``python train.py`` / ``python eval.py`` command the README shows runs, as written,
through the real entry points (in-process Hydra apps), with tiny sizes appended.

Allowed changes, and only these: sizes (images, width, epochs, metric grids, samples of
the learned and sampling explainers, a study's inputs and samples), a sweep over the whole registry cut to three points, data paths
pointing at tiny copies of the official formats, ``trainer=gpu`` → ``trainer=cpu`` on a
machine without CUDA, and the README's placeholder checkpoint path replaced by the one an
earlier command wrote. A README command that fails here fails the suite.
"""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from fixtures import make_cifar, make_cub, make_mnist

README = (ROOT / "README.md").read_text()

TINY = {
    # the stride2 stem: a quarter of the default stem's compute at 64 px
    "synthetic_digits": [
        "dataset.n_train=64",
        "dataset.n_val=16",
        "dataset.n_test=8",
        "model.net.stem=stride2",
    ],
    "synthetic_mnist": [
        "dataset.n_train=64",
        "dataset.n_val=16",
        "dataset.n_test=8",
        "model.net.stem=stride2",
    ],
    "cifar10": ["dataset.val_size=20", "dataset.num_workers=0"],
    "cub200": ["dataset.image_size=64", "dataset.num_workers=0"],
}
COMMON = ["model.net.width=0.125", "model.max_epochs=1", "dataset.batch_size=32"]
METRIC_FAST = {
    "paper": ["metric.paper.step=0.1", "metric.paper.percent_step=0.1"],
    "qge": ["metric.qge_msi.step=0.1", "metric.qge_deletion.step=0.1"],
    "faithfulness": [
        "metric.faithfulness_correlation.nr_runs=5",
        "metric.infidelity_correlation.nr_runs=5",
        "dataset.hparams.metric_chunk=1024",
    ],
}
EXPLAINER_FAST = {"lax": ["explainer.max_epochs=1", "explainer.val_samples=8"]}
# the learned and sampling methods in any role (sweep point, compare_with row): tiny sizes
SETTINGS_FAST = [
    "++explainer_settings.lax.max_epochs=1",
    "++explainer_settings.lax.val_samples=8",
    "++explainer_settings.deepfaith.max_epochs=1",
    "++explainer_settings.deepfaith.val_samples=8",
    "++explainer_settings.deepfaith.prior_samples=16",
    "++explainer_settings.deepfaith.prior_methods=[saliency,gradcam]",
    "++explainer_settings.deepfaith.n_subsets=4",
    "++explainer_settings.lime.n_samples=16",
    "++explainer_settings.kernel_shap.n_samples=16",
]
# metric files an experiment selects itself (their fast settings apply)
EXPERIMENT_METRICS = {
    "benchmark_all": "[paper,localization,faithfulness]",
    "deepfaith_ablation": "[paper,faithfulness]",
    "qge_images": "[localization]",
    "qge_reliability": "[msi,localization,faithfulness]",
}
# a study's own sizes (inputs, permutations ranked, explanations sampled)
STUDY_FAST = {
    "qge_tabular": ["study.n_inputs=1", "study.rank_sample=20000", "study.seeds=1"],
    "qge_images": [
        "study.n_inputs=1",
        "study.n_explanations=8",
        "study.ks=[1,2]",
        "study.correct_only=false",
        "study.metrics=[pixel_flipping,localization]",
        "~study.datasets.cifar10",  # the sandbox's CIFAR copy is too small for its val_size
    ],
    "qge_reliability": [
        "study.n_samples=4",
        "study.draws=1",
        "compare_with=[gradcam,random]",
        "metric.msi.step=0.1",
        "metric.faithfulness_deletion.features_in_step=4096",
    ],
    "metric_agreement": [
        "compare_with=[saliency,gradcam,random]",
        "study.method_overrides.lax.explainer.max_epochs=1",
        "study.method_overrides.lax.explainer.val_samples=8",
        "study.n_images=4",
        "study.batch_size=4",
        "metric.paper.step=0.1",
        "metric.paper.percent_step=0.1",
        "metric.qge_msi.step=0.1",
        "metric.pixel_flipping.features_in_step=4096",
    ],
}
# a sweep over the whole registry, shortened to three of its points (one learned of each kind)
SWEEP_SHORT = {"benchmark_all": ["hydra.sweeper.params.explainer='lax,deepfaith,gradcam'"]}


def readme_blocks() -> list[tuple[str, list[str]]]:
    """Every fenced block of the README as ``(language, lines)``."""
    blocks, current = [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[1].append(line)
    return blocks


def readme_commands() -> list[str]:
    """The ``python train.py|eval.py`` lines of the README's bash blocks, comments stripped."""
    cmds = []
    for lang, lines in readme_blocks():
        for line in lines if lang == "bash" else []:
            m = re.search(r"python (train|eval)\.py.*", line.split(" #")[0].strip())
            if m:
                cmds.append(m.group(0).strip())
    return cmds


def readme_error_examples() -> list[tuple[str, str]]:
    """``$ python ...`` examples in plain blocks with the first line they print."""
    return [
        (lines[0][2:], lines[1])
        for lang, lines in readme_blocks()
        if not lang and lines and lines[0].startswith("$ python")
    ]


def choice(args: list[str], group: str, default: str) -> str:
    for a in args:
        if a.startswith(f"{group}="):
            return a.split("=", 1)[1]
    return default


def tiny_args(args: list[str]) -> list[str]:
    """The command's own arguments plus tiny sizes for what it selects (its values win for
    keys it sets, except sizes)."""
    experiment = choice(args, "experiment", "")
    dataset = choice(args, "dataset", "synthetic_digits")
    default_metrics = EXPERIMENT_METRICS.get(experiment, "[paper,localization]")
    metrics = choice(args, "metric", default_metrics).strip("[]").split(",")
    search = choice(args, "hparams_search", "")
    explainer = choice(args, "explainer", "lax" if experiment == "demo" or search else "none")
    extra = [*TINY[dataset], *COMMON, *EXPLAINER_FAST.get(explainer, []), *SETTINGS_FAST]
    extra += SWEEP_SHORT.get(experiment, []) + STUDY_FAST.get(experiment, [])
    if search:  # two trials instead of the sweep's twenty
        extra += ["hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2"]
    extra += [o for m in metrics for o in METRIC_FAST.get(m, [])]
    keys = {e.split("=")[0] for e in extra}
    kept = [a for a in args if a.split("=")[0].lstrip("+") not in keys]
    return [*kept, *extra]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A data folder holding tiny CIFAR / CUB / MNIST copies, and shared cache/log folders."""
    root = tmp_path_factory.mktemp("readme")
    data = root / "data"
    make_cifar(data, n_per_batch=20)
    make_cub(data)
    make_mnist(data, n_train=96, n_test=40)
    return {"data": data, "logs": root / "logs", "cache": root / "cache", "ckpt": {}}


def run_entry(script: str, args: list[str], sandbox, monkeypatch) -> None:
    """Run ``train.py`` / ``eval.py`` as ``__main__`` in this process with ``args``."""
    paths = [
        f"paths.log_dir={sandbox['logs']}",
        f"paths.cache_dir={sandbox['cache']}",
        "trainer.enable_progress_bar=false",
    ]
    if not any(a.startswith("paths.data_dir") for a in args):
        paths.append(f"paths.data_dir={sandbox['data']}")
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *args, *paths])
    runpy.run_path(str(ROOT / f"{script}.py"), run_name="__main__")


def latest(folder: Path, pattern: str, inside: str = "") -> Path:
    """The newest file named ``pattern`` under ``folder`` whose path contains ``inside``."""
    hits = [p for p in folder.rglob(pattern) if inside in str(p)]
    assert hits, f"nothing matches {pattern} under {folder}"
    return max(hits, key=lambda p: p.stat().st_mtime)


COMMANDS = readme_commands()


def test_readme_has_the_documented_commands():
    joined = "\n".join(COMMANDS)
    for expected in ("python train.py 'metric=[paper,qge,faithfulness]'", "python eval.py", " -m "):
        assert expected in joined


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, sandbox, monkeypatch):
    if "hparams_search=lax_optuna" in command:
        pytest.importorskip(
            "hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'"
        )
    words = shlex.split(command)
    script, args = words[1].removesuffix(".py"), words[2:]
    args = [a.replace("paths.data_dir=/data", f"paths.data_dir={sandbox['data']}") for a in args]
    if not torch.cuda.is_available():
        args = [("trainer=cpu" if a == "trainer=gpu" else a) for a in args]
    if script == "eval":  # the README's placeholder path: the weights an earlier command wrote
        weights = latest(sandbox["logs"], "lax.pt", inside="synthetic_digits-lax")
        args = [f"ckpt_path={weights}" if a.startswith("ckpt_path=") else a for a in args]
    multirun = "-m" in args
    args = (["-m"] if multirun else []) + tiny_args([a for a in args if a != "-m"])
    run_entry(script, args, sandbox, monkeypatch)
    summary = latest(sandbox["logs"], "summary.json")
    assert summary.stat().st_size > 0


@pytest.mark.parametrize(("command", "first_line"), readme_error_examples())
def test_readme_error_examples(command, first_line, sandbox, monkeypatch, capsys, tmp_path):
    words = shlex.split(command)
    args = [a.replace("/empty/dir", str(tmp_path)) for a in words[2:]]
    with pytest.raises(SystemExit) as e:
        run_entry(words[1].removesuffix(".py"), args, sandbox, monkeypatch)
    assert e.value.code == 1
    assert first_line in capsys.readouterr().err
