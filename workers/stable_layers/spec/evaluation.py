"""Spec section of evaluation: data, the LayerD protocol and layer-quality thresholds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stable_layers.spec.base import Strict


class EvalThresholds(Strict):
    """Thresholds of the layer-quality metrics (shared/docs/eval.md A.7). The Stable-Layers paper
    gives no definitions, so every default is [OURS: eval.md A.7 proposal]; tune once, then freeze."""

    coverage_alpha: float = Field(0.05, ge=0, lt=1)
    """A pixel counts as covered by a layer when its alpha exceeds this. Default 0.05."""
    blank_coverage: float = Field(0.001, ge=0, le=1)
    """A foreground layer is blank when its covered fraction is below this... Default 0.001."""
    blank_max_alpha: float = Field(0.05, ge=0, le=1)
    """...or when its maximum alpha is below this. Default 0.05."""
    duplicate_coverage: float = Field(0.9, ge=0, le=1)
    """A foreground layer may duplicate the composite when it covers more than this fraction...
    Default 0.9."""
    duplicate_l1: float = Field(0.05, ge=0, le=1)
    """...and, over white, lies within this mean L1 of the input. Default 0.05."""
    background_coverage: float = Field(0.95, ge=0, le=1)
    """Layer 0 is degenerate when it covers less than this fraction (not opaque)... Default 0.95."""
    background_copy_l1: float = Field(0.02, ge=0, le=1)
    """...or when, over white, it is within this mean L1 of the input on the pixels covered by the
    non-blank foreground layers (nothing was inpainted under them). Default 0.02."""
    haze_low: float = Field(0.02, ge=0, le=1)
    """Haze pixels have alpha strictly between `hazeLow` and `hazeHigh`. Default 0.02."""
    haze_high: float = Field(0.98, ge=0, le=1)
    """Upper bound of haze alpha. Default 0.98."""
    haze_band_px: int = Field(3, ge=0)
    """Semi-transparent pixels within this many pixels of the alpha = 0.5 contour are edge
    anti-aliasing, not haze. Default 3."""
    haze_fraction: float = Field(0.2, ge=0, le=1)
    """A layer is artifact-heavy when haze exceeds this share of its covered area... Default 0.2."""
    speckle_max_px: int = Field(16, ge=1)
    """...or when its alpha > 0.5 mask has many connected components smaller than this (pixels)...
    Default 16."""
    speckle_count: int = Field(20, ge=0)
    """...more than this many. Default 20."""


class CrelloEvalSpec(Strict):
    """How Crello designs become (composite, ground-truth layers) — LayerD's rules, eval.md A.1."""

    split: str = "test"
    """Split to evaluate. Default test [LayerD]."""
    revision: str = "5.1.0"
    """Hub revision when loading `cyberagent/crello` from the hub. Default 5.1.0 [LayerD]."""
    short_side: int = Field(512, ge=16, le=4096)
    """Rendered short side in pixels (LayerD's tool: 512; its library function: 360). Default 512."""
    max_layers: int = Field(10, ge=2, le=64)
    """Designs with more kept GT layers than this are skipped (and counted), because the model is
    asked for as many layers as the GT has. Default 10 [OURS]."""


class EvalSpec(Strict):
    every_steps: int = Field(0, ge=0)
    """Evaluate every this many optimizer steps; 0 = only at the end. Default 0 [OURS]."""
    data: str | None = None
    """Evaluation data, e.g. `crello:/data/crello` or `synthetic:heldout`. Default: none."""
    limit: int | None = Field(None, ge=1)
    """Evaluate at most this many designs. Default: all."""
    layers: int | Literal["gt"] = "gt"
    """Layers requested from the model per design: `gt` = the GT layer count L (needed for per-layer
    L1 by L), or a fixed number. Default gt [OURS: QIL's Crello setting is not published]."""
    seed: int = 42
    """Design i is decomposed with seed `seed + i`, identically for the base and the fine-tuned
    model. Default 42 [SL release: seed 42 + image index]."""
    max_edits: int = Field(5, ge=0, le=20)
    """LayerD protocol: maximum number of merges k. Default 5 [LayerD CLI]."""
    heldout_designs: int = Field(64, ge=1)
    """`synthetic:heldout`: how many held-out synthetic designs to generate. Default 64 [OURS]."""
    heldout_size: int = Field(256, ge=32, le=2048)
    """`synthetic:heldout`: side of the generated designs in pixels. Default 256 [OURS]."""
    gallery: int = Field(12, ge=0)
    """Designs shown in the HTML gallery. Default 12 [OURS: keeps the page light]."""
    bootstrap: int = Field(1000, ge=0)
    """Bootstrap resamples over designs for the 95% intervals of base→fine-tuned differences;
    0 disables. Default 1000 [OURS]."""
    workers: int = Field(0, ge=0)
    """Processes for the LayerD metric; 0 = one per CPU core. Default 0."""
    thresholds: EvalThresholds = Field(default_factory=EvalThresholds)
    """Thresholds of the blank / duplicate / degenerate / artifact metrics."""
    crello: CrelloEvalSpec = Field(default_factory=CrelloEvalSpec)
    """Crello loading and rendering options."""
