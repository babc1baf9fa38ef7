"""Image sources: training images (`sources.py`), synthetic designs with exact layers
(`synthetic.py`) and Crello designs rendered for the LayerD protocol (`crello.py`)."""

from stable_layers.data.crello import CrelloDesign, CrelloError, CrelloStats, iter_designs
from stable_layers.data.sources import DataSourceError, ImageRecord, SourceStats, iter_images
from stable_layers.data.synthetic import SyntheticDesign, design_id, make_design, split_of, split_seeds

__all__ = [
    "CrelloDesign",
    "CrelloError",
    "CrelloStats",
    "DataSourceError",
    "ImageRecord",
    "SourceStats",
    "SyntheticDesign",
    "design_id",
    "iter_designs",
    "iter_images",
    "make_design",
    "split_of",
    "split_seeds",
]
