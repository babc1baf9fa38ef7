"""The policy: Qwen-Image-Layered with a fixed prompt embedding and a peft LoRA, and its sampler.

`load_policy(spec)` loads the real pipeline or a tiny preset (`model.py`; adapters in both the
diffusers and the PEFT format: `adapters.py`); `sample_group` runs the SDE rollouts of one group
with per-step log-probabilities and `replay_log_prob` recomputes them with gradients
(`sampler.py`, on the pure math of `sde.py`); `decompose` is the deterministic Euler/Heun
decomposition of evaluation and `stable-layers decompose` (`inference.py`); `tiny.py` builds tiny random
components of the real classes, so everything runs with no download. Importing this package
imports torch and diffusers.
"""

from stable_layers.policy.adapters import (
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    Adapter,
    apply_adapter,
    read_adapter,
)
from stable_layers.policy.inference import OdeMethod, decompose, ode_sample, transformer_calls
from stable_layers.policy.model import (
    LORA_WEIGHT_NAME,
    TINY_ASSETS,
    Policy,
    PolicyLoadError,
    get_lora_keys,
    load_adapter,
    load_lora,
    load_policy,
    reference_policy,
    resolve_device,
    save_lora,
    tiny_installed,
)
from stable_layers.policy.sampler import (
    Rollout,
    decode,
    replay_log_prob,
    sample_group,
    sde_window,
    working_size,
)
from stable_layers.policy.sde import SdeType, sde_step_with_logprob
from stable_layers.policy.tiny import (
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
    tiny_pipeline,
)

__all__ = [
    "LORA_WEIGHT_NAME",
    "PEFT_CONFIG_NAME",
    "PEFT_WEIGHTS_NAME",
    "TINY_ASSETS",
    "Adapter",
    "OdeMethod",
    "Policy",
    "PolicyLoadError",
    "Rollout",
    "SdeType",
    "apply_adapter",
    "build_scheduler",
    "build_text_encoder",
    "build_tokenizer",
    "build_transformer",
    "build_vae",
    "decode",
    "decompose",
    "get_lora_keys",
    "load_adapter",
    "load_lora",
    "load_policy",
    "ode_sample",
    "read_adapter",
    "reference_policy",
    "replay_log_prob",
    "resolve_device",
    "sample_group",
    "save_lora",
    "sde_step_with_logprob",
    "sde_window",
    "tiny_installed",
    "tiny_pipeline",
    "transformer_calls",
    "working_size",
]
