"""The in-process transformers judge with a tiny random Qwen2.5-VL (no downloads).

A random model cannot judge: these tests check the plumbing (chat prompt with the image tokens,
greedy generation, decoding) and that garbage answers go through the failure policy honestly.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from reward_helpers import coloured_group

from stable_layers.reward.hf_backend import TransformersBackend
from stable_layers.reward.vlm import VLMScorer
from stable_layers.spec import CRITERIA, RewardSpec, TransformersJudgeSpec

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_vlm():
    from stable_layers.policy.tiny import build_processor, build_text_encoder, build_tokenizer

    tok = build_tokenizer()
    return build_text_encoder(tok, seed=0), build_processor(tok)


def small_spec() -> RewardSpec:
    spec = RewardSpec(kind="transformers", tile_size=64, grid_max_side=256)
    spec.transformers.max_new_tokens = 16
    return spec


def test_generate_runs_the_real_model_classes(tiny_vlm, monkeypatch):
    model, proc = tiny_vlm
    backend = TransformersBackend(TransformersJudgeSpec(max_new_tokens=16), model=model, processor=proc)
    seen = {}
    real_generate = model.generate

    def spy(**kw):
        seen.update(kw)
        return real_generate(**kw)

    monkeypatch.setattr(model, "generate", spy)
    text = backend.generate("system text", "score this", np.zeros((64, 64, 3), np.uint8))
    assert isinstance(text, str)
    image_token = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((seen["input_ids"] == image_token).sum()) > 1  # the processor expanded the image
    assert seen["do_sample"] is False and seen["max_new_tokens"] == 16
    assert "pixel_values" in seen
    # a random model rambles: 16 tokens without an end token is reported as cut off
    assert backend.last_finish_reason == "length"


def test_random_model_answers_fail_and_are_counted(tiny_vlm):
    model, proc = tiny_vlm
    spec = small_spec()
    scorer = VLMScorer(TransformersBackend(spec.transformers, model=model, processor=proc), spec)
    result = asyncio.run(scorer.score_group(coloured_group(3)))
    # 3 panels + 1 grid, each asked twice: garbage is never valid JSON
    assert result.stats["requests"] == 8 and result.stats["requests_parse_error"] == 8
    assert result.stats["requests_truncated"] == 8  # each rambled to maxNewTokens
    assert result.stats["reasks"] == 4 and result.stats["stage1_fallbacks"] == 3 and result.stats["stage2_failed"] == 1
    assert len(set(result.rewards)) == 1  # the whole group gets zero advantage
    assert len(result.latencies) == 8


def test_valid_answers_flow_through(tiny_vlm, monkeypatch):
    """Same backend, with generation replaced by fixed valid JSON: parsing and combination work."""
    model, proc = tiny_vlm
    spec = small_spec()
    backend = TransformersBackend(spec.transformers, model=model, processor=proc)

    def fake_generate(system, prompt, image):
        if "candidate decompositions" in prompt:
            return json.dumps({"1": 10, "2": 0})
        return json.dumps({**dict.fromkeys(CRITERIA, 5), "blank_layer": False, "duplicate_of_composite": False})

    monkeypatch.setattr(backend, "generate", fake_generate)
    spec.penalties.recomposition_error = 0.0
    result = asyncio.run(VLMScorer(backend, spec).score_group(coloured_group(2)))
    assert sorted(s.stages["2"] for s in result.scores) == [0.0, 1.0]
    assert all(s.stages["1"] == 0.5 for s in result.scores)
    assert sorted(result.rewards) == pytest.approx([0.25, 0.75])
