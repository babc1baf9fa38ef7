"""What a training run shows while it runs, as training callbacks (docs/metrics.md): the
Prometheus exporter (`prometheus.py`) and the sampled rollout records written to the run's store
(`rollouts.py`). Neither imports torch.
"""

from stable_layers.observability.prometheus import PrometheusCallback, exporter_from_spec
from stable_layers.observability.rollouts import RolloutRecorder, recorder_from_spec

__all__ = ["PrometheusCallback", "RolloutRecorder", "exporter_from_spec", "recorder_from_spec"]
