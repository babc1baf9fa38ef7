"""`build_scorer`: the one place a `RewardSpec` becomes a `RewardScorer`."""

from __future__ import annotations

from stable_layers.reward.base import RewardScorer
from stable_layers.spec import RewardSpec


def build_scorer(spec: RewardSpec | None = None) -> RewardScorer:
    """Scorer for `spec.kind`. Heavy dependencies (openai, transformers) load only for their kind.

    `pixel` is synchronous math; `openai` opens an `AsyncOpenAI` client lazily on first use (so a
    scorer can be built outside the event loop that will use it); `transformers` loads the VLM
    on first use.
    """
    spec = spec or RewardSpec()
    if spec.kind == "pixel":
        from stable_layers.reward.pixel import PixelScorer

        return PixelScorer(spec)
    if spec.kind == "openai":
        from stable_layers.reward.openai_backend import OpenAIBackend
        from stable_layers.reward.vlm import VLMScorer

        return VLMScorer(OpenAIBackend(spec.openai), spec)
    if spec.kind == "transformers":
        from stable_layers.reward.hf_backend import TransformersBackend
        from stable_layers.reward.vlm import VLMScorer

        return VLMScorer(TransformersBackend(spec.transformers), spec)
    raise ValueError(f"reward.kind: unknown scorer {spec.kind!r}; allowed: pixel, openai, transformers")
