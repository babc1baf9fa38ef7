"""Judge prompts, their JSON schemas, and strict parsing of the answers.

Stage 1 asks for one integer 0..scale per criterion plus two flags about one candidate panel.
Stage 2 shows the grid and asks for one integer per printed index, relative to the others and using
the full range. Both answers are constrained server-side by a JSON schema (vLLM
`response_format: json_schema`); the parsers still validate everything, because an in-process model
or a server without structured output can answer anything.
"""

from __future__ import annotations

import json
import re
from typing import Any

from stable_layers.spec import CRITERIA

CRITERIA_TEXT = {
    "semantic_separation": "distinct semantic elements sit in distinct layers; no layer repeats the whole image",
    "alpha_cleanliness": "clean alpha edges; no speckles, haze or colour bleeding into transparent areas",
    "background_inpainting": "layer 1 is a complete, plausible background with the foreground objects removed and the holes filled",
    "feature_distribution": "content is spread sensibly over the layers; no blank layer, no single layer holding everything",
    "content_validity": "layers are valid and artifact-free, and the recomposite faithfully reproduces the input",
}
FLAGS = ("blank_layer", "duplicate_of_composite")

SYSTEM = (
    "You are a strict, consistent judge of image layer decompositions. A decomposition splits an input "
    "image into RGBA layers ordered back to front; transparent areas are shown over a grey checkerboard. "
    "Answer only with the requested JSON."
)


def stage1_schema(scale: int) -> dict[str, Any]:
    props: dict[str, Any] = {c: {"type": "integer", "minimum": 0, "maximum": scale} for c in CRITERIA}
    props.update({f: {"type": "boolean"} for f in FLAGS})
    return {
        "type": "object",
        "properties": props,
        "required": [*CRITERIA, *FLAGS],
        "additionalProperties": False,
    }


def stage1_prompt(n_layers: int, scale: int) -> str:
    rubric = "\n".join(f"- {c}: {t}" for c, t in CRITERIA_TEXT.items())
    keys = ", ".join(f'"{c}": int' for c in CRITERIA)
    return (
        f"The image shows one decomposition as a row of tiles: the input, the recomposite (all layers "
        f"stacked back to front), then its {n_layers} layers from back (layer 1) to front.\n"
        f"Score each criterion with an integer from 0 (fails completely) to {scale} (perfect):\n{rubric}\n"
        f"Set blank_layer to true if any layer is empty or nearly empty, and duplicate_of_composite to true "
        f"if a foreground layer repeats the whole input image.\n"
        f"Reply with JSON only: {{{keys}, "
        f'"blank_layer": bool, "duplicate_of_composite": bool}}.'
    )


def stage2_schema(n: int, scale: int) -> dict[str, Any]:
    keys = [str(i + 1) for i in range(n)]
    return {
        "type": "object",
        "properties": {k: {"type": "integer", "minimum": 0, "maximum": scale} for k in keys},
        "required": keys,
        "additionalProperties": False,
    }


def stage2_prompt(n: int, n_layers: int, scale: int) -> str:
    return (
        f"The image shows {n} candidate decompositions of the same input, one per row, each numbered by the "
        f"large index on its left. Each row shows the input, the recomposite and {n_layers} layers from back "
        f"to front.\nCompare the candidates with each other on layer separation, alpha cleanliness, background "
        f"inpainting, spread of content over layers and fidelity of the recomposite. Give each candidate an "
        f"integer score from 0 to {scale} relative to the others: use the full range, give the best "
        f"candidate(s) {scale} and the worst 0 unless they are truly equal.\n"
        f'Reply with JSON only, one key per index: {{"1": int, …, "{n}": int}}.'
    )


class ParseError(ValueError):
    """An answer that is not the JSON the schema asked for."""


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def _load_object(text: str) -> dict[str, Any]:
    """The JSON object of an answer; tolerates code fences and text around one object."""
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty answer")
    m = _FENCE.search(text)
    body = m.group(1) if m else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ParseError(f"no JSON object in answer: {text[:120]!r}")
    try:
        obj = json.loads(body[start : end + 1])
    except json.JSONDecodeError as err:
        raise ParseError(f"invalid JSON ({err.msg}): {text[:120]!r}") from None
    if not isinstance(obj, dict):
        raise ParseError("answer is not a JSON object")
    return obj


def _score(obj: dict[str, Any], key: str, scale: int) -> int:
    if key not in obj:
        raise ParseError(f"missing key {key!r}")
    v = obj[key]
    # bool is an int subclass; an integral float (7.0) is accepted, 7.5 is not
    if isinstance(v, bool) or not isinstance(v, int | float) or float(v) != int(v):
        raise ParseError(f"{key!r} must be an integer, got {v!r}")
    if not 0 <= int(v) <= scale:
        raise ParseError(f"{key!r} = {v} outside 0..{scale}")
    return int(v)


def parse_stage1(text: str, scale: int) -> tuple[dict[str, int], dict[str, bool]]:
    """(integer score per criterion, flags) from a stage-1 answer, or `ParseError`."""
    obj = _load_object(text)
    scores = {c: _score(obj, c, scale) for c in CRITERIA}
    flags = {}
    for f in FLAGS:
        v = obj.get(f, False)
        if not isinstance(v, bool):
            raise ParseError(f"{f!r} must be a boolean, got {v!r}")
        flags[f] = v
    return scores, flags


def parse_stage2(text: str, n: int, scale: int) -> list[int]:
    """The G integer scores by printed index (1..G → list position 0..G-1), or `ParseError`."""
    obj = _load_object(text)
    extra = set(obj) - {str(i + 1) for i in range(n)}
    if extra:
        raise ParseError(f"unexpected keys {sorted(extra)}; expected exactly 1..{n}")
    return [_score(obj, str(i + 1), scale) for i in range(n)]
