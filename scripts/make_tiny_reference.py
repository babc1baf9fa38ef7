"""Regenerate tests/data/tiny_reference.npz from the shipped tiny pipeline.

Run after `stable-layers pretrain-tiny --out workers/stable_layers/assets/tiny` changed the weights:
    .venv/bin/python scripts/make_tiny_reference.py
`tests/test_pretrain_shipped.py` checks that loading the shipped directory reproduces it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_reference import OUT, reference_output  # noqa: E402


def main() -> None:
    arrays = reference_output()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_name(".tiny_reference.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(OUT)
    print(f"wrote {OUT}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
