"""Evaluation: the LayerD protocol (`layerd.py`), the layer-quality metrics (`metrics.py`), the
paired-bootstrap summary (`stats.py`, `summary.py`), the HTML report (`report.py`, `plots.py`),
the runner that compares base and fine-tuned models (`runner.py`) and the periodic evaluation
hook of training (`periodic.py`)."""

from stable_layers.eval.layerd import aggregate_levels, at_level, evaluate_pair
from stable_layers.eval.metrics import design_metrics
from stable_layers.eval.periodic import PeriodicEvaluation
from stable_layers.eval.runner import EvalDataError, run_evaluation, score_design
from stable_layers.eval.stats import paired_bootstrap

__all__ = [
    "EvalDataError",
    "PeriodicEvaluation",
    "aggregate_levels",
    "at_level",
    "design_metrics",
    "evaluate_pair",
    "paired_bootstrap",
    "run_evaluation",
    "score_design",
]
