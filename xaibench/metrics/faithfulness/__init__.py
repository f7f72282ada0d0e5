"""The ten faithfulness metrics of DeepFaith / Quantus, batched on the perturbation engine.

Registered names (directions in :mod:`xaibench.metrics.registry`), with the
variants each supports (``quantus`` = Quantus 0.6 on identical inputs and
draws; ``deepfaith`` = the DeepFaith code's definition; ``rise`` = Petsiuk et al.):

============================  ======  ==============================
name                          better  variants
============================  ======  ==============================
faithfulness_correlation (FC)  higher  quantus, deepfaith
faithfulness_estimate (FE)     higher  quantus, deepfaith
infidelity (INF, Quantus)      lower   quantus
infidelity_correlation (INF)   higher  deepfaith
monotonicity_correlation (MC)  higher  quantus, deepfaith
faithfulness_deletion (DEL)    lower   quantus (pixel flipping), deepfaith, rise
faithfulness_insertion (INS)   higher  deepfaith, rise
negative_perturbation (NEG)    higher  deepfaith
positive_perturbation (POS)    lower   deepfaith
region_perturbation (RP)       higher  quantus, deepfaith
irof (IROF)                    higher  quantus, deepfaith
============================  ======  ==============================

``DEEPFAITH_METRICS`` lists DeepFaith's ten (INF as ``infidelity_correlation``),
the set its prior filter scores with ``variant="deepfaith"``.
"""

from xaibench.metrics.faithfulness.faithfulness_correlation import faithfulness_correlation
from xaibench.metrics.faithfulness.faithfulness_estimate import faithfulness_estimate
from xaibench.metrics.faithfulness.infidelity import infidelity, infidelity_correlation
from xaibench.metrics.faithfulness.irof import irof
from xaibench.metrics.faithfulness.monotonicity import monotonicity_correlation
from xaibench.metrics.faithfulness.perturbation import negative_perturbation, positive_perturbation
from xaibench.metrics.faithfulness.pixel_flipping import (
    faithfulness_deletion,
    faithfulness_insertion,
)
from xaibench.metrics.faithfulness.region_perturbation import region_perturbation

DEEPFAITH_METRICS = (
    "faithfulness_correlation",
    "faithfulness_estimate",
    "infidelity_correlation",
    "monotonicity_correlation",
    "faithfulness_deletion",
    "faithfulness_insertion",
    "negative_perturbation",
    "positive_perturbation",
    "region_perturbation",
    "irof",
)
"""DeepFaith's ten faithfulness metrics, by registered name (call each with ``variant="deepfaith"``)."""

QUANTUS_METRICS = (
    "faithfulness_correlation",
    "faithfulness_estimate",
    "infidelity",
    "monotonicity_correlation",
    "faithfulness_deletion",
    "region_perturbation",
    "irof",
)
"""The metrics with a ``quantus`` variant (Quantus 0.6 has no insertion or NEG/POS)."""

__all__ = [
    "DEEPFAITH_METRICS",
    "QUANTUS_METRICS",
    "faithfulness_correlation",
    "faithfulness_deletion",
    "faithfulness_estimate",
    "faithfulness_insertion",
    "infidelity",
    "infidelity_correlation",
    "irof",
    "monotonicity_correlation",
    "negative_perturbation",
    "positive_perturbation",
    "region_perturbation",
]
