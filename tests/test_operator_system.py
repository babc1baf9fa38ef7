"""System test: the operator's generated pods, run for real as local processes.

The operator (real kopf, kmock API) creates the trainer Job and later the evaluation Job; this test
takes each Job's container command and environment *from the created objects*, resolves the env the
way the kubelet would (completion index, Secret keys), and runs them as processes: two trainer
"nodes" rendezvousing over gloo, then `stable-layers eval`, against moto's S3. The operator must
then read what the workers wrote (progress.json, COMMITTED checkpoints, report.json) and finish the
run. So the commands, env names and S3 layout of operator and workers provably agree.

The weights come from the model cache only (a read-only cache filled beforehand, mounted at a real
local directory, so HF_HOME needs no substitution; the same pod without it cannot load the model).

Local substitutions, and only these: the ConfigMap's run.yaml is written to a temp file instead of
being mounted at /etc/stable-layers, `stable-layers` is `python -m stable_layers.cli`, and
MASTER_ADDR/MASTER_PORT point at 127.0.0.1 and a free port (cluster DNS of the headless Service
does not exist here).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from s3_server import moto_endpoint, reset_moto  # noqa: F401

from stable_layers_operator.children import RUN_FILE, resolve_env
from stable_layers_operator.testing import EmulatedCluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.system]

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "system-runs"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


CACHED_REPO = "stable-layers-test/tiny-cached"


def fill_hub_cache(hf_home: Path, repo: str) -> None:
    """The tiny pipeline in the Hugging Face hub cache layout, as a first download would leave it."""
    from stable_layers.policy import TINY_ASSETS

    revision = "0" * 40
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    shutil.copytree(TINY_ASSETS, root / "snapshots" / revision)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod_process(
    job: dict[str, Any], index: int, run_file: Path, overrides: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = resolve_env(container["env"], completion_index=index, secrets={"s3-keys": KEYS}, overrides=overrides)
    command = list(container["command"])
    assert command[0] == "stable-layers"
    command = [sys.executable, "-m", "stable_layers.cli", *[str(run_file) if a == RUN_FILE else a for a in command[1:]]]
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return command, {**base, "OMP_NUM_THREADS": "1", **env}


def run_all(procs: list[tuple[list[str], dict[str, str]]], logs: Path, timeout: float = 240) -> None:
    running = []
    for i, (cmd, env) in enumerate(procs):
        log = (logs / f"proc-{i}.log").open("w")
        running.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    for proc, log in running:
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    for i, (proc, _) in enumerate(running):
        assert proc.returncode == 0, (logs / f"proc-{i}.log").read_text()[-3000:]


def test_generated_trainer_and_eval_pods_run_and_the_operator_follows(moto_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    reset_moto(moto_endpoint)
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", **keys).create_bucket(Bucket=BUCKET)
    example = yaml.safe_load((ROOT / "manifests/examples/run-tiny.yaml").read_text())
    spec = example["spec"]
    spec["run"]["grpo"]["maxSteps"] = 2
    spec["trainer"]["nodes"] = 2
    spec["evaluation"] = {"everySteps": 0, "data": "synthetic:heldout"}
    spec["storage"] = {"uri": f"s3://{BUCKET}/tiny", "endpoint": moto_endpoint, "secretRef": {"name": "s3-keys"}}
    # The weights come from the model cache only: a hub id that exists nowhere but in a cache
    # filled beforehand, mounted read-only (so HF_HUB_OFFLINE=1). The mount path is a real local
    # directory, so the pods' HF_HOME needs no substitution.
    cache = tmp_path / "cache"
    fill_hub_cache(cache / "huggingface", CACHED_REPO)
    spec["modelCache"] = {"claimName": "model-cache", "mountPath": str(cache), "readOnly": True}
    spec["run"]["model"] = {"base": CACHED_REPO, "dtype": "float32", "device": "cpu", "gradientCheckpointing": False}

    cluster = EmulatedCluster(interval=0.3, wait_delay=0.3).start()
    try:
        cluster.create_secret("s3-keys", KEYS)
        cluster.create_run("tiny", spec)
        job = wait_for(lambda: cluster.get("Job", "tiny-trainer-0"), "trainer Job")
        run_file = tmp_path / "run.yaml"
        run_file.write_text(cluster.get("ConfigMap", "tiny-config")["data"]["run.yaml"])  # type: ignore[index]

        local = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        trainers = [pod_process(job, index, run_file, local) for index in range(2)]
        assert [env["NODE_RANK"] for _, env in trainers] == ["0", "1"] and trainers[0][1]["NNODES"] == "2"
        assert trainers[0][1]["AWS_ENDPOINT_URL"] == moto_endpoint
        assert trainers[0][1]["HF_HOME"] == f"{cache}/huggingface" and trainers[0][1]["HF_HUB_OFFLINE"] == "1"
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "model-cache", "readOnly": True}
        # Without the cache's environment the same pod cannot find the weights at all.
        command, env = trainers[0]
        empty = {**env, "HF_HOME": str(tmp_path / "empty"), "NNODES": "1"}
        no_cache = subprocess.run(command, env=empty, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert no_cache.returncode == 2 and f"cannot load a QwenImageLayeredPipeline from '{CACHED_REPO}'" in (
            no_cache.stdout + no_cache.stderr
        )
        run_all(trainers, tmp_path)
        cluster.set_job_state("tiny-trainer-0", "Complete")

        eval_job = wait_for(lambda: cluster.get("Job", "tiny-eval-000002"), "final evaluation Job")
        # The Job can exist a moment before the status patch that reports it lands (kopf retries
        # patches), so wait for the status rather than reading it once.
        st = wait_for(
            lambda: (
                cluster.get_run("tiny")["status"].get("phase") == "Evaluating" and cluster.get_run("tiny")["status"]
            ),
            "Evaluating",
        )
        assert st["step"] == 2 and st["lastCheckpoint"]["step"] == 2
        assert st["lastCheckpoint"]["uri"] == f"s3://{BUCKET}/tiny/checkpoints/step-000002"
        assert st["reward"]["mean"] > 0 and "spread" in st["reward"]
        run_all([pod_process(eval_job, 0, run_file, {})], tmp_path)
        cluster.set_job_state("tiny-eval-000002", "Complete")

        st = wait_for(
            lambda: cluster.get_run("tiny")["status"].get("phase") == "Succeeded" and cluster.get_run("tiny")["status"],
            "Succeeded",
        )
        final = st["evaluations"][-1]
        assert final["final"] and final["report"] == f"s3://{BUCKET}/tiny/eval/step-000002/report.json"
        assert {"rgbL1K0", "alphaIouK0", "blankLayerRate"} <= set(final["metrics"])
    finally:
        cluster.stop()
