"""Checkpoint commit + verified fetch: local directory vs S3 (moto server over HTTP), multipart vs
single-part uploads, and the share of the time spent hashing (sha256 manifest + verification).

    .venv/bin/python benchmarks/storage_checkpoint.py [--mib 48] [--repeats 3]

moto keeps objects in memory in this process, so the S3 numbers measure our protocol and boto3's
HTTP path, not a real network or disk; the ratios are what this is for.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workers"))

from stable_layers import storage


def make_checkpoint(root: Path, mib: int) -> Path:
    d = root / "ckpt"
    (d / "lora").mkdir(parents=True)
    (d / "lora" / "pytorch_lora_weights.safetensors").write_bytes(os.urandom(mib << 20))
    (d / "trainer.json").write_text('{"step": 1}')
    (d / "trainer.pt").write_bytes(os.urandom(1 << 20))
    return d


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def roundtrip(store: storage.Store, src: Path, out: Path, step: int) -> tuple[float, float]:
    commit = timed(lambda: storage.commit_checkpoint(store, step, src))
    fetch = timed(lambda: storage.fetch_checkpoint(store, step, out / f"f{step}"))
    return commit, fetch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            src = make_checkpoint(root, args.mib)
            size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / (1 << 20)
            stores = {
                "local": storage.open_store(root / "run"),
                "s3 multipart (16 MiB parts)": storage.open_store("s3://bench/multi", multipart_threshold=16 << 20),
                "s3 single-part": storage.open_store("s3://bench/single", multipart_threshold=1 << 30),
            }
            stores["s3 multipart (16 MiB parts)"].client.create_bucket(Bucket="bench")  # type: ignore[attr-defined]
            results: dict[str, tuple[float, float]] = {}
            for name, store in stores.items():
                runs = [
                    roundtrip(store, src, root / name.replace(" ", "_"), step) for step in range(1, args.repeats + 1)
                ]
                results[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            hash_s = timed(lambda: [hashlib.sha256(p.read_bytes()).hexdigest() for p in src.rglob("*") if p.is_file()])
    finally:
        server.stop()

    print(f"checkpoint of {size:.0f} MiB, median of {args.repeats}")
    print(f"{'store':30s} {'commit s':>9s} {'fetch s':>9s} {'MiB/s up':>9s} {'MiB/s down':>10s}")
    for name, (c, f) in results.items():
        print(f"{name:30s} {c:9.2f} {f:9.2f} {size / c:9.0f} {size / f:10.0f}")
    lc, lf = results["local"]
    mc, mf = results["s3 multipart (16 MiB parts)"]
    sc, _ = results["s3 single-part"]
    print(f"ratio S3 multipart / local: commit {mc / lc:.1f}x, fetch {mf / lf:.1f}x")
    print(f"ratio single-part / multipart commit: {sc / mc:.2f}x")
    print(
        f"sha256 of the checkpoint once: {hash_s:.2f} s = {hash_s / mc:.0%} of an S3 commit (hashing happens once per commit and once per fetch)"
    )


if __name__ == "__main__":
    main()
