"""The Flow-GRPO trainer: the loop (`loop.py`), one iteration's rollouts and scoring
(`collect.py`), the clipped-ratio update with RatioNorm and EMA (`update.py`, on the pure math of
`grpo.py`), checkpoint contents (`checkpoint.py`) and the DeepSpeed / torch.distributed engine
(`distributed.py`). Importing this package imports torch.
"""

from stable_layers.trainer.checkpoint import CheckpointError
from stable_layers.trainer.distributed import is_launched_worker
from stable_layers.trainer.judge_wait import JudgeUnavailableError
from stable_layers.trainer.loop import METRICS_FILE, NoLearningSignalError, TrainError, train

__all__ = [
    "METRICS_FILE",
    "CheckpointError",
    "JudgeUnavailableError",
    "NoLearningSignalError",
    "TrainError",
    "is_launched_worker",
    "train",
]
