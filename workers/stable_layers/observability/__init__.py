"""What a training run shows while it runs, and afterwards (docs/metrics.md): the Prometheus
exporter (`prometheus.py`), the sampled rollout records written to the run's store
(`rollouts.py`), the experiment trackers of `metrics.reportTo` (`trackers.py`), all training
callbacks, and the HTML viewer of the rollout records (`viewer.py`). None imports torch at module
level (the TensorBoard tracker imports torch's writer when it is built).
"""

from stable_layers.observability.prometheus import PrometheusCallback, exporter_from_spec
from stable_layers.observability.rollout_view import StepsError, parse_steps
from stable_layers.observability.rollouts import RolloutRecorder, recorder_from_spec
from stable_layers.observability.trackers import (
    TensorBoardTracker,
    TrackerMissingError,
    WandbTracker,
    trackers_from_spec,
)
from stable_layers.observability.viewer import NoRecordsError, ViewerResult, build_viewer

__all__ = [
    "NoRecordsError",
    "PrometheusCallback",
    "RolloutRecorder",
    "StepsError",
    "TensorBoardTracker",
    "TrackerMissingError",
    "ViewerResult",
    "WandbTracker",
    "build_viewer",
    "exporter_from_spec",
    "parse_steps",
    "recorder_from_spec",
    "trackers_from_spec",
]
