"""The policy: a `QwenImageLayeredPipeline` with a fixed prompt embedding and a peft LoRA.

`load_policy(spec)` loads the real model (hub id or local directory) or a tiny preset, places the
transformer and VAE on the device, encodes the fixed prompt once and keeps only its embedding,
freezes everything and adds the LoRA adapter. `save_lora` / `load_lora` use diffusers' LoRA
format (loadable with `pipe.load_lora_weights`, alpha preserved). `reference_policy` runs the
adapter-disabled model (the KL reference) without a second copy of the weights.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stable_layers.policy.adapters import (
    LORA_WEIGHT_NAME,
    PolicyLoadError,
    apply_adapter,
    read_adapter,
    write_peft_adapter,
)
from stable_layers.policy.tiny import tiny_pipeline
from stable_layers.spec import LoraSpec, RunSpec

if TYPE_CHECKING:
    from diffusers import QwenImageLayeredPipeline, QwenImageTransformer2DModel

__all__ = [
    "LORA_WEIGHT_NAME",
    "TINY_ASSETS",
    "Policy",
    "PolicyLoadError",
    "load_adapter",
    "load_lora",
    "load_policy",
    "reference_policy",
    "resolve_device",
    "save_lora",
    "tiny_installed",
]

TINY_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "tiny"
"""Pipeline directory of the shipped `tiny` preset (written by `stable-layers pretrain-tiny`)."""
NEGATIVE_PROMPT = " "
"""Negative prompt for true CFG (the upstream README's recommendation)."""
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Text-stream modules of the LAST block: their outputs only feed the text stream, which nothing
# reads after the last block, so LoRA on them never gets a (non-zero) gradient (model.md §6.12).
_DEAD_IN_LAST_BLOCK = ("attn.to_add_out", "attn.add_q_proj", "txt_mlp.net.0.proj", "txt_mlp.net.2")


def tiny_installed() -> bool:
    """Whether the shipped `tiny` pipeline (trained weights) is installed at `TINY_ASSETS`."""
    return (TINY_ASSETS / "model_index.json").is_file()


@dataclass
class Policy:
    """A loaded policy. Tensors live on `device`; `prompt_embeds` has the weight dtype."""

    pipe: QwenImageLayeredPipeline
    transformer: QwenImageTransformer2DModel
    device: torch.device
    dtype: torch.dtype
    prompt_embeds: torch.Tensor
    """(1, T, D) embedding of the fixed prompt."""
    prompt_mask: torch.Tensor | None
    """(1, T) long mask, or None when every token is valid (what the pipeline passes then)."""
    negative_embeds: torch.Tensor | None = None
    """(1, T', D) embedding of the negative prompt; only when `sampler.cfgScale > 1`."""
    negative_mask: torch.Tensor | None = None
    lora_params: list[torch.Tensor] = field(default_factory=list)
    """Trainable LoRA tensors (the dead last-block text-stream adapters excluded, see below)."""
    frozen_lora_modules: list[str] = field(default_factory=list)
    """Adapted modules whose LoRA stays frozen because no gradient can reach them (model.md §6.12).
    They stay in the adapter (and in saved files) as identity adapters."""
    spec: RunSpec | None = None

    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.transformer, "peft_config", None))


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA if available, else CPU; anything else is passed to `torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise PolicyLoadError(f"model.device: {name!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PolicyLoadError(f"model.device is {name!r} but CUDA is not available here; use auto or cpu")
    return device


def _looks_like_path(base: str) -> bool:
    return base.startswith(("/", "./", "../", "~")) or base.count("/") > 1 or base.endswith("/")


def _from_pretrained(source: str | Path, revision: str | None, dtype: torch.dtype, field_name: str) -> Any:
    from diffusers import QwenImageLayeredPipeline

    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise PolicyLoadError(
                f"{field_name}: {path} is not a diffusers pipeline directory (no model_index.json); "
                "point it at a directory written by QwenImageLayeredPipeline.save_pretrained"
            )
        source = str(path)
    elif _looks_like_path(str(source)):
        raise PolicyLoadError(f"{field_name}: local path {path} does not exist")
    try:
        # processor=None: the Qwen2-VL processor only serves auto-captioning (our prompt is fixed),
        # and it cannot be constructed without torchvision (model.md §6.1).
        return QwenImageLayeredPipeline.from_pretrained(source, revision=revision, dtype=dtype, processor=None)
    except (OSError, ValueError) as err:
        raise PolicyLoadError(f"{field_name}: cannot load a QwenImageLayeredPipeline from {source!r}: {err}") from err


def _load_pipeline(spec: RunSpec) -> tuple[Any, torch.dtype]:
    m = spec.model
    if m.preset == "tiny-random":
        return tiny_pipeline(seed=0), torch.float32
    if m.preset == "tiny":
        if not tiny_installed():
            raise PolicyLoadError(
                f"model.preset: 'tiny' needs the shipped pipeline at {TINY_ASSETS}, which does not exist yet; "
                "run `stable-layers pretrain-tiny` to create it, or use preset 'tiny-random'"
            )
        return _from_pretrained(TINY_ASSETS, None, torch.float32, "model.preset"), torch.float32
    dtype = _DTYPES[m.dtype]
    return _from_pretrained(m.base, m.revision, dtype, "model.base"), dtype


@torch.no_grad()  # encode_prompt is not no_grad: it would attach a text-encoder graph (model.md §6.10)
def _encode(pipe: Any, prompt: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    embeds, mask = pipe.encode_prompt(prompt=[prompt], device=device, max_sequence_length=512)
    return embeds, mask


def _lora_config(lora: LoraSpec) -> Any:
    from peft import LoraConfig

    # default / zero_b / an adapter to start from: Kaiming A, zero B (the latter is then overwritten)
    init: bool | str = "gaussian" if lora.init == "gaussian" else True
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        target_modules=list(lora.targets),
        init_lora_weights=init,
        lora_dropout=lora.dropout,
    )


def _dead_lora_modules(transformer: Any) -> list[str]:
    last = len(transformer.transformer_blocks) - 1
    return [f"transformer_blocks.{last}.{suffix}" for suffix in _DEAD_IN_LAST_BLOCK]


def _trainable_lora(transformer: Any) -> tuple[list[torch.Tensor], list[str]]:
    dead = _dead_lora_modules(transformer)
    params, frozen = [], set()
    for name, p in transformer.named_parameters():
        if ".lora_" not in name:
            continue
        module = name.split(".lora_")[0]
        if module in dead:
            p.requires_grad_(False)
            frozen.add(module)
        else:
            p.requires_grad_(True)
            params.append(p)
    return params, sorted(frozen)


def load_policy(spec: RunSpec, *, with_lora: bool = True, keep_text_encoder: bool | None = None) -> Policy:
    """Load the pipeline of `spec.model`, encode the fixed prompt, freeze it and add the LoRA.

    `keep_text_encoder`: keep the (CPU) text encoder registered after encoding. Default: keep it
    for the tiny presets (cheap; `__call__` needs it, model.md §6.2), drop it for real models so
    its ~16 GB does not stay resident in every trainer process.
    """
    pipe, dtype = _load_pipeline(spec)
    device = resolve_device(spec.model.device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    pipe.transformer.to(device)
    if pipe.transformer.dtype != dtype:
        pipe.transformer.to(dtype)
    pipe.vae.to(device=device)

    if pipe.text_encoder is None:
        raise PolicyLoadError(f"model: the pipeline from {spec.model.base!r} has no text encoder to encode the prompt")
    te_device = device if spec.model.text_encoder == "device" else torch.device("cpu")
    pipe.text_encoder.to(te_device)
    embeds, mask = _encode(pipe, spec.model.prompt, te_device)
    neg_embeds = neg_mask = None
    if spec.sampler.cfg_scale > 1:
        neg_embeds, neg_mask = _encode(pipe, NEGATIVE_PROMPT, te_device)
    pipe.text_encoder.to("cpu")
    if keep_text_encoder is None:
        keep_text_encoder = spec.model.preset is not None
    if not keep_text_encoder:
        pipe.register_modules(text_encoder=None)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    def _place(t: torch.Tensor | None, cast: bool) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype if cast else t.dtype)

    policy = Policy(
        pipe=pipe,
        transformer=pipe.transformer,
        device=device,
        dtype=dtype,
        prompt_embeds=_place(embeds, True),
        prompt_mask=_place(mask, False),
        negative_embeds=_place(neg_embeds, True),
        negative_mask=_place(neg_mask, False),
        spec=spec,
    )
    if with_lora:
        policy.transformer.add_adapter(_lora_config(spec.lora))
        policy.lora_params, policy.frozen_lora_modules = _trainable_lora(policy.transformer)
        # Trainable LoRA weights stay fp32 under a bf16 base (the optimiser updates them directly;
        # peft casts the layer input to the adapter's dtype).
        for name, p in policy.transformer.named_parameters():
            if ".lora_" in name:
                p.data = p.data.float()
        if spec.lora.init_from is not None:
            apply_adapter(policy.transformer, read_adapter(spec.lora.init_from, "lora.init"), "lora.init")
        if spec.model.gradient_checkpointing:
            policy.transformer.enable_gradient_checkpointing()
    return policy


@contextmanager
def reference_policy(policy: Policy) -> Iterator[Policy]:
    """Run the adapter-disabled base model (the KL reference) under `torch.no_grad`.

    Same weights, no copy: peft's disable/enable toggles the adapters in place. With no adapter
    this is just `no_grad`.
    """
    tr = policy.transformer
    if not policy.has_lora:
        with torch.no_grad():
            yield policy
        return
    tr.disable_adapters()
    try:
        with torch.no_grad():
            yield policy
    finally:
        tr.enable_adapters()


def _adapter_metadata(transformer: Any) -> dict[str, Any]:
    cfg = transformer.peft_config["default"].to_dict()
    # sets are not JSON; sort them so the saved header is deterministic
    return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}


def save_lora(policy: Policy, directory: str | Path) -> Path:
    """Write the LoRA in both formats: diffusers' (`pytorch_lora_weights.safetensors` with the peft
    config as metadata, so `pipe.load_lora_weights` restores alpha) and peft's
    (`adapter_config.json` + `adapter_model.safetensors`, for `PeftModel.from_pretrained`). Files
    are written to a temporary sibling directory first and then renamed into place, so a crash
    never leaves a half file."""
    from diffusers import QwenImageLayeredPipeline
    from peft.utils import get_peft_model_state_dict

    if not policy.has_lora:
        raise ValueError("save_lora: the policy has no LoRA adapter (load it with with_lora=True)")
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(policy.transformer).items()}
        QwenImageLayeredPipeline.save_lora_weights(
            save_directory=tmp,
            transformer_lora_layers=state,
            transformer_lora_adapter_metadata=_adapter_metadata(policy.transformer),
            weight_name=LORA_WEIGHT_NAME,
        )
        write_peft_adapter(policy.transformer, tmp, state)
        if not target.exists():
            os.replace(tmp, target)
        else:
            for f in tmp.iterdir():
                os.replace(f, target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_lora(policy: Policy, directory: str | Path) -> None:
    """Load a LoRA saved by `save_lora` (or any diffusers-format Qwen-Image LoRA).

    With an existing adapter the weights are copied in place (same tensors, so an optimiser built
    on `policy.lora_params` stays valid); rank and alpha must match. Without one, the adapter is
    added through `pipe.load_lora_weights` (evaluation: it stays frozen).
    """
    from diffusers import QwenImageLayeredPipeline
    from peft.utils import set_peft_model_state_dict

    path = Path(directory)
    if not (path / LORA_WEIGHT_NAME).is_file():
        raise PolicyLoadError(f"load_lora: {path / LORA_WEIGHT_NAME} not found; pass a directory written by save_lora")
    if not policy.has_lora:
        policy.pipe.load_lora_weights(str(path), weight_name=LORA_WEIGHT_NAME, adapter_name="default")
        return
    state, meta = QwenImageLayeredPipeline.lora_state_dict(
        str(path), weight_name=LORA_WEIGHT_NAME, return_lora_metadata=True
    )
    prefix = "transformer."
    meta = {k.removeprefix(prefix): v for k, v in (meta or {}).items()}
    cfg = policy.transformer.peft_config["default"]
    saved_r, saved_alpha = int(meta.get("r", cfg.r)), float(meta.get("lora_alpha", cfg.lora_alpha))
    if (saved_r, saved_alpha) != (cfg.r, float(cfg.lora_alpha)):
        raise PolicyLoadError(
            f"load_lora: {path} has r={saved_r}, alpha={saved_alpha} but the policy has r={cfg.r}, "
            f"alpha={cfg.lora_alpha}; set lora.rank/lora.alpha to match the checkpoint"
        )
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    expected = set(get_lora_keys(policy.transformer))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise PolicyLoadError(
            f"load_lora: {path} does not match the policy's adapter (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); check lora.targets"
        )
    set_peft_model_state_dict(policy.transformer, state, adapter_name="default")


def load_adapter(policy: Policy, source: str | Path, field_name: str = "--adapter") -> None:
    """Load any adapter `read_adapter` understands (PEFT folder, diffusers LoRA file, checkpoint
    folder, hub id) into the policy: in place when it has a LoRA (rank, alpha and modules must
    match), else as a new frozen adapter."""
    apply_adapter(policy.transformer, read_adapter(source, field_name), field_name)


def get_lora_keys(transformer: Any) -> list[str]:
    """Keys of the adapter in peft's saved-state-dict naming (no adapter name)."""
    from peft.utils import get_peft_model_state_dict

    return list(get_peft_model_state_dict(transformer).keys())
