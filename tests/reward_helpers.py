"""Shared helpers of the reward tests: colour-coded groups and a fake judge that reads them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import numpy as np
from PIL import Image

from stable_layers.reward import build_scorer
from stable_layers.reward.base import Candidate, Group, GroupScore
from stable_layers.spec import CRITERIA, RewardSpec

SIZE = 32


def colour(k: int) -> tuple[int, int, int]:
    """A distinct, exactly reproducible colour per candidate index."""
    return (40 + 13 * k, 250 - 11 * k, (90 + 61 * k) % 256)


def coloured_group(n: int, image_id: str = "img") -> Group:
    """Candidate k: an opaque background of colour(k) and a small white square on top."""
    image = np.zeros((SIZE, SIZE, 4), np.uint8)
    image[...] = (10, 10, 10, 255)
    cands = []
    for k in range(n):
        bg = np.zeros_like(image)
        bg[...] = (*colour(k), 255)
        fg = np.zeros_like(image)
        fg[4:10, 4:10] = (255, 255, 255, 255)
        cands.append(Candidate([bg, fg]))
    return Group(image_id, image, cands)


def decode_image(body: dict[str, Any]) -> np.ndarray:
    parts = body["messages"][-1]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


def candidates_by_row(img: np.ndarray, n: int) -> list[int]:
    """Candidate indices in top-to-bottom order, found by their exact colours in the image."""
    rows = []
    for k in range(n):
        ys = np.nonzero((img == np.array(colour(k), np.uint8)).all(axis=-1))[0]
        if len(ys):
            rows.append((float(ys.mean()), k))
    return [k for _, k in sorted(rows)]


def colour_judge(n: int, *, fail_for: set[int] = frozenset(), scale: int = 10):
    """Answer function for FakeJudgeServer: stage 1 scores candidate k as k on every criterion,
    stage 2 scores the candidate in each printed row as k; candidates in `fail_for` get garbage."""

    def answer(body: dict[str, Any]) -> str:
        img = decode_image(body)
        order = candidates_by_row(img, n)
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        if "semantic_separation" in props:
            assert len(order) == 1, f"a stage-1 panel shows one candidate, saw {order}"
            k = order[0]
            if k in fail_for:
                return "I think it is fine."
            return json.dumps(
                {**dict.fromkeys(CRITERIA, min(k, scale)), "blank_layer": False, "duplicate_of_composite": False}
            )
        assert len(order) == n, f"the grid should show all {n} candidates, saw {order}"
        return json.dumps({str(pos + 1): min(k, scale) for pos, k in enumerate(order)})

    return answer


def varied_answer():
    """Valid answers whose scores differ from request to request (so groups have advantages)."""
    count = iter(range(10**6))

    def answer(body):
        k = next(count)
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        return json.dumps(
            {key: False if p["type"] == "boolean" else (k + i) % 11 for i, (key, p) in enumerate(props.items())}
        )

    return answer


def score(spec: RewardSpec, group: Group) -> GroupScore:
    """Score one group with a fresh scorer of `spec`, closing its client afterwards."""

    async def run() -> GroupScore:
        scorer = build_scorer(spec)
        try:
            return await scorer.score_group(group)
        finally:
            await scorer.aclose()

    return asyncio.run(run())
