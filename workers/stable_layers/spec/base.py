"""Shared pieces of the run-spec models: the strict base class, errors, constants."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

QWEN_LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
]


CRITERIA = (
    "semantic_separation",
    "alpha_cleanliness",
    "background_inpainting",
    "feature_distribution",
    "content_validity",
)
"""The five edit-centric criteria of the Stable-Layers rubric, in a fixed order."""


class SpecError(ValueError):
    """A run spec that cannot be used; the message names the file and the field path."""


class Strict(BaseModel):
    """Base of every spec model: unknown fields are errors, docstrings become descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        validate_assignment=True,
    )
