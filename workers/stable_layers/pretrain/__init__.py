"""`stable-layers pretrain-tiny`: the tiny model's pretraining on synthetic designs.

`pretrain_tiny(out, PretrainConfig(...))` runs the two phases — the RGBA VAE (`vae.py`), then the
layered transformer (`dit.py`) — resumably (`run.py`); `write_card` evaluates the result on
held-out designs and writes its model card (`card.py`, `card_text.py`); `report.py` draws the
progress and the loss curves.
"""

from stable_layers.pretrain.card import CardSettings, write_card
from stable_layers.pretrain.config import PretrainConfig
from stable_layers.pretrain.report import NullReporter, RichReporter
from stable_layers.pretrain.run import PretrainError, pretrain_tiny

__all__ = [
    "CardSettings",
    "NullReporter",
    "PretrainConfig",
    "PretrainError",
    "RichReporter",
    "pretrain_tiny",
    "write_card",
]
