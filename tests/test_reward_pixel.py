"""The deterministic pixel scorer, penalties, the defect ladder and `build_scorer`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stable_layers.layers import composite_rgba
from stable_layers.reward import Candidate, Group, RewardScorer, build_scorer
from stable_layers.reward.judge_check import judge_check
from stable_layers.reward.ladder import DEFECT_FUNCS, LEVELS, make_ladder
from stable_layers.reward.pixel import PixelScorer, pixel_measures
from stable_layers.spec import CRITERIA, RewardSpec, SpecError, parse_run_spec


@pytest.fixture(scope="module")
def ladder():
    return make_ladder(3, 96)


def test_ground_truth_scores_high_and_is_deterministic(ladder):
    _, image, rungs = ladder
    m1 = pixel_measures(image, rungs[0])
    m2 = pixel_measures(image.copy(), [lay.copy() for lay in rungs[0]])
    assert m1.criteria == m2.criteria
    assert set(m1.criteria) == set(CRITERIA)
    assert m1.recomposition_error < 0.005
    assert m1.criteria["content_validity"] > 0.95 and m1.criteria["background_inpainting"] > 0.95
    assert m1.criteria["feature_distribution"] == 1.0 and not m1.blank_layers and not m1.duplicate_layers


@pytest.mark.parametrize(
    ("defect", "criterion"),
    [
        ("alpha_noise", "alpha_cleanliness"),
        ("colour_bleed", "alpha_cleanliness"),
        ("background_not_inpainted", "background_inpainting"),
        ("swapped_order", "feature_distribution"),
        ("blank_layer", "feature_distribution"),
        ("duplicated_composite", "semantic_separation"),
    ],
)
def test_each_defect_lowers_its_criterion(ladder, defect, criterion):
    _, image, rungs = ladder
    gt = rungs[0]
    bad = DEFECT_FUNCS[defect](gt, image, np.random.default_rng(0))
    before, after = pixel_measures(image, gt).criteria[criterion], pixel_measures(image, bad).criteria[criterion]
    assert after < before - 0.1, (defect, criterion, before, after)


def test_flags_blank_and_duplicate():
    bg = np.zeros((48, 48, 4), np.uint8)
    bg[...] = (200, 180, 40, 255)
    fg = np.zeros_like(bg)
    fg[10:30, 10:30] = (0, 0, 255, 255)
    image = composite_rgba([bg, fg])
    blank = pixel_measures(image, [bg, fg, np.zeros_like(bg)])
    assert blank.blank_layers == [2] and blank.criteria["feature_distribution"] == pytest.approx(2 / 3)
    dup = pixel_measures(image, [bg, fg, image])
    assert dup.duplicate_layers == [2] and dup.hidden_layers == [0, 1]
    assert dup.criteria["semantic_separation"] < 0.5


def test_recomposition_error_lowers_validity_and_triggers_penalty():
    bg = np.zeros((32, 32, 4), np.uint8)
    bg[...] = (255, 255, 255, 255)
    image = bg.copy()
    image[..., :3] = 0  # black input, white decomposition: error 1.0
    spec = RewardSpec()
    s = PixelScorer(spec).score_candidate(image, [bg])
    assert s.criteria["content_validity"] == 0.0
    assert s.raw["penalties"] == {"recomposition_error": spec.penalties.recomposition_error}
    assert s.reward == pytest.approx(s.stages["1"] - spec.penalties.recomposition_error)


def test_pixel_weights_change_the_reward(ladder):
    _, image, rungs = ladder
    only_bg = RewardSpec()
    only_bg.pixel.weights = {c: (1.0 if c == "background_inpainting" else 0.0) for c in CRITERIA}
    s = PixelScorer(only_bg).score_candidate(image, rungs[3])
    assert s.stages["1"] == pytest.approx(s.criteria["background_inpainting"])


def test_pixel_ranks_the_defect_ladder():
    """Issue acceptance: Spearman ≥ 0.8 between the pixel reward and the known quality order."""
    report = asyncio.run(judge_check(build_scorer(RewardSpec()), groups=4, size=96, repeats=2))
    assert report["spearman"]["reward"]["mean"] >= 0.8
    assert report["spearman"]["reward"]["min"] >= 0.8
    assert report["retest_var"]["reward"] == 0.0  # deterministic
    per = [report["per_level"]["defects"][lv]["reward"] for lv in LEVELS]
    assert per == sorted(per, reverse=True)


def test_build_scorer_kinds():
    scorer = build_scorer(RewardSpec())
    assert isinstance(scorer, RewardScorer) and scorer.name == "pixel"
    assert build_scorer(RewardSpec(kind="openai")).name == "vlm-openai"
    assert build_scorer(RewardSpec(kind="transformers")).name == "vlm-transformers"  # loads lazily


def test_pixel_group_score_stats(ladder):
    _, image, rungs = ladder
    result = asyncio.run(build_scorer().score_group(Group("x", image, [Candidate(r) for r in rungs])))
    assert len(result.scores) == len(rungs)
    assert result.stats["stage1_std"] > 0 and result.stats["reward_range"] > 0
    assert set(CRITERIA) == {k.split(".", 1)[1] for k in result.stats if k.startswith("criterion_mean.")}
    assert result.latencies == []


def test_reward_spec_validation():
    spec = parse_run_spec({"reward": {"kind": "openai", "stageWeight": 0.3, "openai": {"baseUrl": "http://j:8000/v1"}}})
    assert spec.reward.stage_weight == 0.3 and spec.reward.openai.base_url == "http://j:8000/v1"
    with pytest.raises(SpecError, match=r"reward\.weights.*unknown criteria"):
        parse_run_spec({"reward": {"weights": {"sharpness": 1.0}}})
    with pytest.raises(SpecError, match=r"reward\.stageWeight"):
        parse_run_spec({"reward": {"stageWeight": 1.5}})
    with pytest.raises(SpecError, match=r"reward\.openai\.apiKey"):
        parse_run_spec({"reward": {"openai": {"apiKey": "sk-inline"}}})
