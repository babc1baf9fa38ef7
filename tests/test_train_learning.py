"""Learning sanity: on the tiny model with a simple reward (mean alpha of the top layer → 1), twenty
iterations of the full loop raise the mean reward well beyond its iteration-to-iteration noise.

The random tiny VAE decodes almost every latent to alpha ≈ 0.51 (its output conv is near zero), so
no policy could move the reward; the test scales that last conv up so decoded alpha depends on the
latents (within-group reward std ≈ 0.03), which leaves the sampler/transformer/LoRA untouched.
"""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from stable_layers.reward.base import CandidateScore, Group, GroupScore
from stable_layers.spec import parse_run_spec


class TopLayerAlpha:
    """Reward −|mean alpha of the top layer − target|."""

    name = "top-layer-alpha"

    def __init__(self, target: float = 1.0):
        self.target = target

    async def score_group(self, group: Group) -> GroupScore:
        alphas = [c.layers[-1][..., 3].astype(np.float64).mean() / 255 for c in group.candidates]
        return GroupScore(group.image_id, [CandidateScore(reward=-abs(a - self.target)) for a in alphas])

    async def aclose(self) -> None:
        pass


def _sensitive_decoder(policy) -> None:
    with torch.no_grad():
        policy.pipe.vae.decoder.conv_out.weight.mul_(40)
        policy.pipe.vae.decoder.conv_out.bias.mul_(40)


@pytest.mark.slow
def test_reward_rises_beyond_noise(tmp_path):
    from stable_layers.trainer.loop import train

    spec = parse_run_spec(
        {
            "model": {"preset": "tiny-random", "device": "cpu", "gradientCheckpointing": False},
            "lora": {"rank": 8, "alpha": 16},
            "data": {"kind": "synthetic", "numImages": 8, "seed": 0},
            "sampler": {
                "trainSteps": 4,
                "sdeWindowSize": 0,
                "sdeWindowRange": [0, 2],
                "resolution": 32,
                "layers": 2,
                "noiseLevel": 1.0,
                "seed": 7,
            },
            "grpo": {
                "groupSize": 4,
                "imagesPerIteration": 4,
                "lr": 0.02,
                "optimizerStepsPerIteration": 1,
                "clipRange": 1e-3,
            },
            "distributed": {"engine": "torch"},
            "checkpoint": {"everySteps": 1000},
        }
    )
    train(spec, tmp_path, max_steps=20, scorer=TopLayerAlpha(), on_policy_loaded=_sensitive_decoder)
    rewards = [json.loads(line)["reward_mean"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rewards) == 20
    first, last = rewards[:5], rewards[-5:]
    gain = statistics.mean(last) - statistics.mean(first)
    noise = ((statistics.variance(first) + statistics.variance(last)) / 5) ** 0.5  # std. error of the difference
    assert gain > 0.015, rewards
    assert gain > 4 * noise, (gain, noise, rewards)
