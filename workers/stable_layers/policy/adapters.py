"""LoRA adapters on disk, both ways: peft's directory format and diffusers' LoRA file.

A checkpoint's `lora/` folder holds both: `pytorch_lora_weights.safetensors` (diffusers,
`pipe.load_lora_weights`) and `adapter_config.json` + `adapter_model.safetensors` (peft,
`PeftModel.from_pretrained(transformer, dir)`, what the Stable-Layers release script does).
`read_adapter` takes either format — a file, a folder, a checkpoint folder or a hub id — into one
in-memory form in peft's key naming, and `apply_adapter` puts it into a transformer: in place
when the transformer already has an adapter (its rank, alpha and modules must match), as a new
frozen adapter otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LORA_WEIGHT_NAME",
    "PEFT_CONFIG_NAME",
    "PEFT_WEIGHTS_NAME",
    "Adapter",
    "PolicyLoadError",
    "apply_adapter",
    "read_adapter",
    "write_peft_adapter",
]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before module names
_DIFFUSERS_PREFIX = "transformer."
_BLOCK = re.compile(r"^transformer_blocks\.\d+\.")


class PolicyLoadError(RuntimeError):
    """The model or LoRA cannot be loaded; the message names the path/field and the fix."""


@dataclass
class Adapter:
    """A LoRA in peft's state-dict naming (`<module>.lora_A.weight`, no adapter name)."""

    source: str
    kind: str  # "peft" or "diffusers"
    state: dict[str, torch.Tensor]
    rank: int
    alpha: float
    config: dict[str, Any] = field(default_factory=dict)
    """The saved peft config (or diffusers metadata), for options beyond r and alpha."""

    @property
    def modules(self) -> list[str]:
        return sorted({k.split(".lora_")[0] for k in self.state})

    @property
    def targets(self) -> list[str]:
        """Module-name suffixes as `lora.targets` writes them (block index stripped)."""
        return sorted({_BLOCK.sub("", m) for m in self.modules})


def _peft_config(transformer: Any) -> Any:
    return transformer.peft_config["default"]


def write_peft_adapter(transformer: Any, directory: Path, state: dict[str, torch.Tensor]) -> None:
    """`adapter_config.json` + `adapter_model.safetensors` as `PeftModel.save_pretrained` writes
    them, from `state` (peft naming, CPU tensors) — into an existing directory."""
    from safetensors.torch import save_file

    _peft_config(transformer).save_pretrained(str(directory))
    save_file({_PEFT_PREFIX + k: v for k, v in state.items()}, str(directory / PEFT_WEIGHTS_NAME), {"format": "pt"})


# ------------------------------------------------------------------------------------- reading


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(/[\w.-]+)*$")


def _hub_id(source: str) -> bool:
    """`owner/name[/subfolder]`, not written like a local path."""
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "~")) and not source.endswith(".safetensors")


def _download(source: str, field_name: str) -> Path:
    """`owner/name` or `owner/name/sub/folder` on the hub → the local snapshot folder."""
    from huggingface_hub import snapshot_download

    parts = source.split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = [f"{sub}/*.json", f"{sub}/*.safetensors"] if sub else ["*.json", "*.safetensors"]
    try:
        root = Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as err:  # network, auth, missing repo: all the user's to fix
        raise PolicyLoadError(
            f"{field_name}: {source!r} is not a local path and cannot be downloaded from the hub ({err})"
        ) from None
    return root / sub if sub else root


def _locate(source: str | Path, field_name: str) -> Path:
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists():
        if not _hub_id(text):
            raise PolicyLoadError(f"{field_name}: {path} does not exist (a PEFT folder, a LoRA file or a hub id)")
        path = _download(text, field_name)
    if path.is_dir() and (path / "lora").is_dir():
        path = path / "lora"  # a training checkpoint folder
    if path.is_dir() and not (path / PEFT_CONFIG_NAME).is_file() and not (path / LORA_WEIGHT_NAME).is_file():
        found = [p for p in sorted(path.glob("*/" + PEFT_CONFIG_NAME))]
        if len(found) == 1:  # a hub repo keeping its adapter in one subfolder (e.g. checkpoint-600/)
            path = found[0].parent
    return path


def read_adapter(source: str | Path, field_name: str = "adapter") -> Adapter:
    """Read a PEFT adapter folder, a diffusers LoRA file (or the folder holding it), a training
    checkpoint folder or a hub id. Errors are `PolicyLoadError` naming `field_name`."""
    path = _locate(source, field_name)
    if path.is_dir() and (path / PEFT_CONFIG_NAME).is_file():
        return _read_peft(path, field_name)
    if path.is_file() and path.name == PEFT_WEIGHTS_NAME and (path.parent / PEFT_CONFIG_NAME).is_file():
        return _read_peft(path.parent, field_name)
    if path.is_dir():
        files = [path / LORA_WEIGHT_NAME] if (path / LORA_WEIGHT_NAME).is_file() else sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise PolicyLoadError(
                f"{field_name}: {path} holds neither {PEFT_CONFIG_NAME} nor exactly one .safetensors LoRA file; "
                "pass a PEFT adapter folder, a diffusers LoRA file or a checkpoint folder"
            )
        path = files[0]
    return _read_diffusers(path, field_name)


def _read_peft(path: Path, field_name: str) -> Adapter:
    try:
        config = json.loads((path / PEFT_CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PolicyLoadError(f"{field_name}: {path / PEFT_CONFIG_NAME} is not readable JSON ({err})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise PolicyLoadError(f"{field_name}: {path} is a {config.get('peft_type')} adapter; only LoRA is supported")
    weights = path / PEFT_WEIGHTS_NAME
    try:
        if weights.is_file():
            from safetensors.torch import load_file

            raw = load_file(str(weights))
        else:
            raw = torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)
    except Exception as err:
        raise PolicyLoadError(f"{field_name}: cannot read the weights of {path} ({err})") from None
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in raw.items()}
    return Adapter(str(path), "peft", state, int(config["r"]), float(config.get("lora_alpha", config["r"])), config)


def _read_diffusers(path: Path, field_name: str) -> Adapter:
    from diffusers import QwenImageLayeredPipeline

    try:
        raw, meta = QwenImageLayeredPipeline.lora_state_dict(
            str(path.parent), weight_name=path.name, return_lora_metadata=True
        )
    except Exception as err:
        raise PolicyLoadError(f"{field_name}: {path} is not a readable LoRA file ({err})") from None
    meta = {k.removeprefix(_DIFFUSERS_PREFIX): v for k, v in (meta or {}).items()}
    state = {k.removeprefix(_DIFFUSERS_PREFIX): v for k, v in raw.items() if ".lora_" in k}
    if not state:
        raise PolicyLoadError(f"{field_name}: {path} holds no transformer LoRA weights")
    rank = int(meta.get("r") or next(v.shape[0] for k, v in state.items() if ".lora_A." in k))
    alpha = float(meta.get("lora_alpha") or rank)  # no metadata: diffusers' own default, alpha = r
    return Adapter(str(path), "diffusers", state, rank, alpha, meta)


# ------------------------------------------------------------------------------------ applying


def _expected_keys(transformer: Any) -> set[str]:
    from peft.utils import get_peft_model_state_dict

    return set(get_peft_model_state_dict(transformer))


def check_matches(transformer: Any, adapter: Adapter, field_name: str) -> None:
    """The adapter fits the transformer's existing one exactly (rank, alpha, adapted modules)."""
    cfg = _peft_config(transformer)
    if (adapter.rank, adapter.alpha) != (cfg.r, float(cfg.lora_alpha)):
        raise PolicyLoadError(
            f"{field_name}: {adapter.source} has r={adapter.rank}, alpha={adapter.alpha:g} but the policy has "
            f"r={cfg.r}, alpha={float(cfg.lora_alpha):g}; set lora.rank/lora.alpha to match the adapter"
        )
    for option in ("rank_pattern", "alpha_pattern"):
        if adapter.config.get(option):
            raise PolicyLoadError(f"{field_name}: {adapter.source} uses a per-module {option}; it cannot be matched")
    expected = _expected_keys(transformer)
    if set(adapter.state) != expected:
        mine = sorted({_BLOCK.sub("", k.split(".lora_")[0]) for k in expected})
        raise PolicyLoadError(
            f"{field_name}: {adapter.source} adapts {adapter.targets} ({len(adapter.modules)} modules) but "
            f"lora.targets gives {mine}; set lora.targets to the adapter's modules"
        )


def apply_adapter(transformer: Any, adapter: Adapter, field_name: str = "adapter") -> None:
    """Load `adapter` into `transformer` as adapter `default`: copied into the existing adapter's
    tensors when there is one (they stay the same tensors, so an optimiser built on them stays
    valid), else added with the adapter's own config (and left frozen)."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    if getattr(transformer, "peft_config", None):
        check_matches(transformer, adapter, field_name)
    else:
        c = adapter.config
        transformer.add_adapter(
            LoraConfig(
                r=adapter.rank,
                lora_alpha=adapter.alpha,
                target_modules=adapter.modules,
                use_rslora=bool(c.get("use_rslora", False)),
                rank_pattern=dict(c.get("rank_pattern") or {}),
                alpha_pattern=dict(c.get("alpha_pattern") or {}),
            )
        )
        transformer.requires_grad_(False)
        missing = _expected_keys(transformer) - set(adapter.state)
        if missing:
            raise PolicyLoadError(f"{field_name}: {adapter.source} lacks {sorted(missing)[:3]}")
    result = set_peft_model_state_dict(transformer, adapter.state, adapter_name="default")
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
    if unexpected:
        raise PolicyLoadError(f"{field_name}: {adapter.source} has keys the model lacks, e.g. {unexpected[:3]}")
