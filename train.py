"""Train (or load from cache) the base classifier, train the explainer, evaluate.

    python train.py                                   # synthetic_digits, paper model
    python train.py experiment=demo                   # the 2-CPU demo
    python train.py explainer=lax dataset=cub200      # LAX on CUB-200 (20 classes)
    python train.py -m explainer=gradcam,lax          # a Hydra multirun

See configs/train.yaml for the groups and README.md for the outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("XAIBENCH_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    """Compose, run, and hand ``optimized_metric`` to a sweeper if one is set."""
    from xaibench.pipeline import run_guarded, train

    summary = run_guarded(train, cfg)
    key = cfg.get("optimized_metric")
    if not key:
        return None
    from xaibench.pipeline import lookup_metric

    return lookup_metric(summary, key)


if __name__ == "__main__":
    main()
