"""A fake judge that separates candidates (so groups have spread) and fails in known ways, for the
rollout viewer and tracker tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _image_url(body: dict[str, Any]) -> str:
    parts = body["messages"][-1]["content"]
    return next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def spread_answer(body: dict[str, Any]) -> str:
    """Stage 1: scores from a hash of the panel image (candidates differ); stage 2: one score per
    printed grid number from a hash of the grid image and the number."""
    schema = body["response_format"]["json_schema"]["schema"]
    url = _image_url(body)
    out: dict[str, Any] = {}
    for key, prop in schema["properties"].items():
        if prop["type"] == "boolean":
            out[key] = False
        else:
            lo, hi = prop.get("minimum", 1), prop.get("maximum", 10)
            out[key] = lo + _h(f"{url}:{key}") % (hi - lo + 1)
    return json.dumps(out)


class FirstPanelUnparsable:
    """The first stage-1 panel the judge sees gets a non-JSON answer every time (re-asked, then the
    fallback); everything else is answered."""

    def __init__(self) -> None:
        self.bad: str | None = None

    def __call__(self, body: dict[str, Any]) -> str | None:
        if "semantic_separation" not in body["response_format"]["json_schema"]["schema"]["properties"]:
            return None
        url = _image_url(body)
        if self.bad is None:
            self.bad = url
        return "malformed" if url == self.bad else None


def train_with_judge(out: str, tmp: Path, **metrics: Any) -> list[dict[str, Any]]:
    """`stable-layers train` (in process) for 3 steps of the tiny-random model with the fake judge,
    every group recorded; returns metrics.jsonl's records (read from the run directory or store)."""
    import yaml
    from typer.testing import CliRunner

    from stable_layers.cli import app
    from stable_layers.reward.fake_server import FakeJudgeServer
    from stable_layers.storage import open_store

    spec = yaml.safe_load((ROOT / "examples" / "local-run.yaml").read_text())
    spec["grpo"]["optimizerStepsPerIteration"] = 1  # 3 iterations: rollouts at steps 0, 1, 2
    spec["rollouts"] = {"rate": 1.0}
    spec["metrics"] = metrics
    with FakeJudgeServer() as srv:
        srv.answer = spread_answer
        srv.route = FirstPanelUnparsable()
        spec["reward"] = {"kind": "openai", "tileSize": 64, "openai": {"baseUrl": srv.base_url, "backoff": 0.01}}
        (tmp / "run.yaml").write_text(yaml.safe_dump(spec))
        result = CliRunner().invoke(app, ["train", str(tmp / "run.yaml"), "--out", out])
    assert result.exit_code == 0, result.output[-2000:]
    text = open_store(out).get_bytes("metrics.jsonl").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wandb_records(run_file: Path) -> list[Any]:
    """The protobuf `Record`s of an offline wandb run file (`run-ID.wandb`), in order.

    The file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte crc/length/type header) of wandb's own `Record` messages; wandb ships no Python reader
    since its core moved to Go, so the chunks are reassembled here and parsed with wandb's schema."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a wandb run file"
    block, pos, partial, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            out.append(chunk)
        elif kind == 2:  # first
            partial = chunk
        elif kind == 3:  # middle
            partial += chunk
        elif kind == 4:  # last
            out.append(partial + chunk)
        elif kind == 0 and length == 0:  # zero padding up to the block's end
            pos += block - pos % block if pos % block else 0
    records = []
    for raw in out:
        rec = pb.Record()
        rec.ParseFromString(raw)
        records.append(rec)
    return records


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """History rows (`_step` and every logged key, JSON-decoded) of the offline run under `run_dir`."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline wandb run under {run_dir}, found {files}"
    rows = []
    for rec in wandb_records(files[0]):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows
