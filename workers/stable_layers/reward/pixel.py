"""The deterministic pixel scorer: the five rubric criteria measured from pixels, no VLM.

It is the embedded default reward (the training loop runs with no judge) and it supplies the
deterministic measures behind the penalties of the VLM scorers. Everything here is a pure function
of (input image, layers); the same inputs always give the same scores.

Per-pixel quantities (alpha a_i ∈ [0,1], layers back to front, index 0 = background):
  visible weight  v_i = a_i · Π_{j>i} (1 − a_j)        (how much of layer i shows in the composite)
  coverage_i      = fraction of pixels with a_i ≥ 0.25 (semi-transparent overlays count)
  visible_i       = fraction of pixels with v_i ≥ 0.25

Separation credit: `separated` = share of the canvas where a foreground layer that is not a copy
of the composite is present; credit = min(1, separated / 0.05). Separation and inpainting are
scored on what was actually separated: a stack that leaves everything in layer 0 gets no credit
for either (without it both were a vacuous 1.0 and that trivial stack outscored real, imperfect
decompositions — a free lunch a policy could learn).

Criteria, each in [0, 1] (`spec.CRITERIA` order):
  semantic_separation    credit · (1 − duplicates / foreground layers) · (1 − shared), where a
                         foreground layer is a duplicate of the composite when it is opaque on
                         ≥ 90 % of the canvas and matches the input there (mean abs. difference
                         < 0.06), and `shared` is the share of the foreground's present pixels
                         that two layers both hold with the same colour (occlusion, different
                         colours, is fine).
  alpha_cleanliness      exp(−soft / 0.1): `soft` is the mean, over non-blank layers, of the
                         fraction of pixels whose alpha is neither ≈0 nor ≈1 (0.04 < a < 0.96)
                         and varies locally (3×3 std > 0.02). Clean cut-outs only have such pixels
                         on anti-aliased edges; a uniformly semi-transparent element has none
                         inside; alpha noise and colour haze bleeding into transparent areas
                         raise it.
  background_inpainting  credit · opaque fraction of layer 0 × (1 − copied), where `copied` is the
                         share of pixels under the separated foreground (union alpha ≥ 0.5 of the
                         non-duplicate layers) at which layer 0 is opaque and equals the input (max
                         channel difference < 0.06): objects left in the background instead of
                         being removed and inpainted.
  feature_distribution   share of the L layers that are neither blank (coverage below
                         `blankAlpha`), hidden (visible below `blankAlpha`) nor a duplicate of the
                         composite: content spread over the slots rather than one layer holding
                         everything.
  content_validity       1 − min(1, e / recompositionTolerance), e = mean absolute error between
                         the layers composited on white and the input on white.

`nothing_separated` is set when a stack of two or more layers has no separated content at all
(separated < `blankAlpha`); the `nothingSeparated` penalty applies to it.

Thresholds are our choices (documented in docs/reward.md); `PixelRewardSpec` exposes the two that
matter for real images.
"""

from __future__ import annotations

import time

import numpy as np

from stable_layers.layers import as_rgba_array, composite, resize_layer, stack_float
from stable_layers.reward.base import CandidateScore, Group, GroupScore, PixelMeasures
from stable_layers.reward.combine import apply_penalties, group_stats, weighted_mean
from stable_layers.spec import CRITERIA, PixelRewardSpec, RewardSpec

SOFT_LO, SOFT_HI = 0.04, 0.96
SOFT_SCALE = 0.1
SOFT_LOCAL_STD = 0.02
PRESENT = 0.25
MATCH_TOL = 0.06
DUPLICATE_COVERAGE = 0.9
SEPARATED_FULL = 0.05


def _conform(image: np.ndarray, layers: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """RGBA uint8 input and layers at the input's size (layers are resized if they differ)."""
    img = as_rgba_array(image)
    h, w = img.shape[:2]
    out = [resize_layer(as_rgba_array(lay), (w, h)) for lay in layers]
    return img, out


def _shared_content(rgb: np.ndarray, alpha: np.ndarray) -> float:
    """Share of the foreground's present pixels held by two layers with the same colour.

    Occlusion (two layers present, different colours) is what layered designs are made of and is
    not penalised; the same content in two layers is a failure to separate.
    """
    present = alpha >= PRESENT
    union = present.any(axis=0)
    if not union.any():
        return 0.0
    shared = np.zeros_like(union)
    for i in range(len(alpha)):
        for j in range(i + 1, len(alpha)):
            both = present[i] & present[j]
            if both.any():
                shared |= both & (np.abs(rgb[i] - rgb[j]).max(axis=-1) < MATCH_TOL)
    return float(shared.sum() / union.sum())


def _soft_fraction(a: np.ndarray) -> float:
    """Share of pixels with intermediate alpha that also varies locally (noise, haze, edges)."""
    from scipy.ndimage import uniform_filter

    mean = uniform_filter(a, size=3, mode="nearest")
    var = np.maximum(uniform_filter(a * a, size=3, mode="nearest") - mean * mean, 0.0)
    soft = (a > SOFT_LO) & (a < SOFT_HI) & (var > SOFT_LOCAL_STD**2)
    return float(soft.mean())


def pixel_measures(image: np.ndarray, layers: list[np.ndarray], spec: PixelRewardSpec | None = None) -> PixelMeasures:
    """Measure one decomposition (`layers` back to front) of `image`; see the module docstring."""
    spec = spec or PixelRewardSpec()
    if not layers:
        raise ValueError("a candidate needs at least one layer")
    img, lays = _conform(image, layers)
    rgb, alpha = stack_float(lays)  # (L,H,W,3), (L,H,W)
    n = alpha.shape[0]
    target = composite([img], background=1.0)
    recomposed = composite(lays, background=1.0)
    err = float(np.mean(np.abs(recomposed - target)))

    # visible weight: a_i times the transmittance of everything above it
    above = np.ones_like(alpha)
    for i in range(n - 2, -1, -1):
        above[i] = above[i + 1] * (1.0 - alpha[i + 1])
    visible = alpha * above
    coverage = (alpha >= PRESENT).mean(axis=(1, 2))
    visible_cov = (visible >= PRESENT).mean(axis=(1, 2))
    blank = [i for i in range(n) if coverage[i] < spec.blank_alpha]
    hidden = [i for i in range(n) if i not in blank and visible_cov[i] < spec.blank_alpha]

    # duplicates of the composite: a copy separates nothing, whatever slot it sits in
    target_rgb = target
    dup: list[int] = []
    for i in range(1, n):
        opaque = alpha[i] >= 0.5
        if opaque.mean() >= DUPLICATE_COVERAGE:
            diff = np.abs(rgb[i][opaque] - target_rgb[opaque]).mean()
            if diff < MATCH_TOL:
                dup.append(i)
    fg = [i for i in range(1, n) if i not in dup]
    # what was actually separated: canvas share held by foreground layers that are not copies
    separated = float((alpha[fg] >= PRESENT).any(axis=0).mean()) if fg else 0.0
    credit = min(1.0, separated / SEPARATED_FULL)
    if n > 1:
        shared = _shared_content(rgb[1:], alpha[1:])
        semantic = credit * (1.0 - len(dup) / (n - 1)) * (1.0 - shared)
    else:
        semantic = 0.0  # one layer separates nothing

    # alpha cleanliness over the layers that hold something
    live = [i for i in range(n) if i not in blank]
    soft = float(np.mean([_soft_fraction(alpha[i]) for i in live])) if live else 1.0
    alpha_clean = float(np.exp(-soft / SOFT_SCALE))

    # background: opaque everywhere, not a copy of the input where separated objects are, and
    # only as much credit as there is separated content to have been inpainted behind
    bg_opaque = alpha[0] >= 0.5
    if fg:
        union = 1.0 - np.prod(1.0 - alpha[fg], axis=0)
        under = union >= 0.5
    else:
        under = np.zeros_like(bg_opaque)
    if under.any():
        same = np.abs(rgb[0] - target_rgb).max(axis=-1) < MATCH_TOL
        copied = float((same & bg_opaque & under).sum() / under.sum())
    else:
        copied = 0.0
    background = float(bg_opaque.mean()) * (1.0 - copied) * credit

    empty = set(blank) | set(hidden) | set(dup)
    feature = (n - len(empty)) / n
    validity = 1.0 - min(1.0, err / spec.recomposition_tolerance)

    criteria = dict(
        zip(
            CRITERIA,
            (float(np.clip(v, 0.0, 1.0)) for v in (semantic, alpha_clean, background, feature, validity)),
            strict=True,
        )
    )
    nothing = n > 1 and separated < spec.blank_alpha
    return PixelMeasures(criteria, err, blank, hidden, dup, separated, nothing)


class PixelScorer:
    """`RewardScorer` from pixels only: reward = weighted mean of the five criteria − penalties."""

    name = "pixel"

    def __init__(self, spec: RewardSpec | None = None) -> None:
        self.spec = spec or RewardSpec()

    def score_candidate(self, image: np.ndarray, layers: list[np.ndarray]) -> CandidateScore:
        m = pixel_measures(image, layers, self.spec.pixel)
        p = weighted_mean(m.criteria, self.spec.pixel.weights)
        reward, penalties = apply_penalties(p, m, self.spec.penalties)
        return CandidateScore(
            reward=reward,
            criteria=dict(m.criteria),
            stages={"1": p, "judge": p},
            flags={
                "blank_layer": m.any_blank,
                "duplicate_of_composite": m.any_duplicate,
                "nothing_separated": m.nothing_separated,
            },
            raw={"pixel": m.as_dict(), "penalties": penalties},
        )

    def score_group_sync(self, group: Group) -> GroupScore:
        t0 = time.perf_counter()
        scores = [self.score_candidate(group.image, c.layers) for c in group.candidates]
        stats = group_stats(scores)
        stats["score_seconds"] = time.perf_counter() - t0
        return GroupScore(group.image_id, scores, stats)

    async def score_group(self, group: Group) -> GroupScore:
        # cheap and CPU-bound: computing inline keeps results bit-identical and avoids a thread hop
        return self.score_group_sync(group)

    async def aclose(self) -> None:
        return None
