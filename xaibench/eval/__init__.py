"""Evaluation: the test-stage callback, aggregation into tables, figures (DESIGN §7)."""

from xaibench.eval.aggregate import bootstrap_ci, summarize, write_per_sample, write_tables
from xaibench.eval.callback import EvaluationCallback, gather_rows
from xaibench.eval.figures import save_curves, save_overlays
from xaibench.eval.module import ExplainerTestModule

__all__ = [
    "EvaluationCallback",
    "ExplainerTestModule",
    "bootstrap_ci",
    "gather_rows",
    "save_curves",
    "save_overlays",
    "summarize",
    "write_per_sample",
    "write_tables",
]
