"""Evaluate an explainer on a cached base classifier (never trains the classifier).

    python eval.py explainer=gradcam                          # post-hoc, synthetic_digits
    python eval.py experiment=demo explainer=lax ckpt_path=outputs/.../lax_head.pt
    python eval.py dataset=cifar10 explainer=layercam 'metric=[paper,qge]'

See configs/eval.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("XAIBENCH_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    """Compose and run :func:`xaibench.pipeline.evaluate_only`."""
    from xaibench.pipeline import evaluate_only, run_guarded

    run_guarded(evaluate_only, cfg)


if __name__ == "__main__":
    main()
