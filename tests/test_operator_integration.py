"""The real kopf engine running the operator against kmock (Kubernetes API over loopback HTTP) and
moto's S3 server. One operator instance serves every test in this module (kopf stops in ~5 s);
each test uses its own run name and S3 prefix. Nothing runs pods here: the tests play the Job and
Deployment controllers and the trainer (writing progress.json and checkpoints to S3).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import condition, fresh_bucket, run_spec, run_store, running_operator, status
from s3_server import moto_endpoint  # noqa: F401

from stable_layers import storage
from stable_layers.storage.s3 import S3Store
from stable_layers_operator.testing import EmulatedCluster, wait_for

BUCKET = "operator-runs"


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> str:  # noqa: F811
    return fresh_bucket(moto_endpoint, BUCKET)


@pytest.fixture(scope="module")
def cluster(s3: str) -> Iterator[EmulatedCluster]:
    with running_operator(interval=0.2, wait_delay=0.2) as emulated:
        yield emulated


def spec_for(endpoint: str, name: str, **extra: Any) -> dict[str, Any]:
    return run_spec(endpoint, BUCKET, name, nodes=2, **extra)


def commit(store: S3Store, step: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "adapter_model.safetensors").write_bytes(b"lora-%d" % step)
        return storage.commit_checkpoint(store, step, tmp)


def progress(store: S3Store, step: int, phase: str = "Running", ckpt: tuple[int, str] | None = None) -> None:
    storage.write_progress(
        store,
        {
            "step": step, "maxSteps": 8, "phase": phase, "rewardMean": 0.5 + step / 100, "rewardStd": 0.2,
            "groupStdMean": 0.1, "zeroStdRatio": 0.0, "loss": 0.01,
            "lastCheckpoint": {"step": ckpt[0], "uri": ckpt[1]} if ckpt else None, "message": "",
        },
    )  # fmt: skip


def test_full_run_judge_trainer_progress_evaluations_success(cluster: EmulatedCluster, s3: str) -> None:
    name = "full"
    store = run_store(s3, BUCKET, name)
    spec = spec_for(s3, name, evaluation={"everySteps": 4, "data": "synthetic:heldout"})
    spec["run"]["reward"] = {"kind": "openai"}
    cluster.create_run(name, spec)

    wait_for(lambda: cluster.exists("Deployment", f"{name}-judge"), "judge Deployment")
    assert cluster.exists("Service", f"{name}-judge")
    st = wait_for(lambda: status(cluster, name).get("phase") == "Starting" and status(cluster, name), "Starting")
    assert condition(st, "JudgeReady")["status"] == "False" and not cluster.exists("Job", f"{name}-trainer-0")
    run_yaml = cluster.get("ConfigMap", f"{name}-config")["data"]["run.yaml"]  # type: ignore[index]
    assert f"baseUrl: http://{name}-judge.default.svc:8000/v1" in run_yaml

    cluster.set_ready(f"{name}-judge")
    job = wait_for(lambda: cluster.get("Job", f"{name}-trainer-0"), "trainer Job")
    assert job["spec"]["completions"] == 2 and cluster.get("Service", f"{name}-trainer")["spec"]["clusterIP"] == "None"  # type: ignore[index]
    st = wait_for(lambda: status(cluster, name).get("phase") == "Training" and status(cluster, name), "Training")
    assert condition(st, "JudgeReady")["status"] == "True" and condition(st, "Training")["status"] == "True"

    progress(store, 2)
    st = wait_for(lambda: status(cluster, name).get("step") == 2 and status(cluster, name), "step 2 in status")
    assert st["reward"] == {"mean": 0.52, "std": 0.2, "spread": 0.1, "zeroStdRatio": 0.0} and st["maxSteps"] == 8

    uri4 = commit(store, 4)
    progress(store, 4, ckpt=(4, uri4))
    wait_for(lambda: cluster.exists("Job", f"{name}-eval-000004"), "eval Job for step 4")
    st = wait_for(lambda: status(cluster, name).get("evaluations") and status(cluster, name), "evaluation in status")
    assert st["lastCheckpoint"] == {"step": 4, "uri": uri4}
    assert condition(st, "Evaluating")["status"] == "True"
    store.put_bytes("eval/step-000004/report.json", json.dumps({"headline": {"rgbL1": 0.12, "alphaIoU": 0.8}}).encode())
    cluster.set_job_state(f"{name}-eval-000004", "Complete")
    wait_for(lambda: (status(cluster, name).get("evaluations") or [{}])[0].get("phase") == "Succeeded", "eval 4 done")
    assert status(cluster, name)["evaluations"][0]["metrics"] == {"rgbL1": 0.12, "alphaIoU": 0.8}

    uri8 = commit(store, 8)
    progress(store, 8, phase="Succeeded", ckpt=(8, uri8))
    cluster.set_job_state(f"{name}-trainer-0", "Complete")
    wait_for(lambda: cluster.exists("Job", f"{name}-eval-000008"), "final eval Job")
    wait_for(lambda: status(cluster, name).get("phase") == "Evaluating", "Evaluating")
    store.put_bytes("eval/step-000008/report.json", json.dumps({"headline": {"rgbL1": 0.1}}).encode())
    cluster.set_job_state(f"{name}-eval-000008", "Complete")
    st = wait_for(lambda: status(cluster, name).get("phase") == "Succeeded" and status(cluster, name), "Succeeded")

    assert st["completionTime"] and st["startTime"] and st["step"] == 8 and st["restarts"] == 0
    assert condition(st, "Succeeded")["status"] == "True" and condition(st, "Training")["reason"] == "Completed"
    assert [(e["step"], e.get("final"), e["metrics"]) for e in st["evaluations"]] == [
        (4, False, {"rgbL1": 0.12, "alphaIoU": 0.8}),
        (8, True, {"rgbL1": 0.1}),
    ]
    assert st["observedGeneration"] == 1
    wait_for(lambda: not cluster.exists("Deployment", f"{name}-judge"), "judge removed (GPUs freed)")
    # Every child was created exactly once, although handlers ran many times.
    for plural in ("jobs", "deployments", "services", "configmaps"):
        names = [n for n in cluster.created_names(plural) if n.startswith(name)]
        assert names and len(names) == len(set(names)), (plural, names)


def test_pixel_run_needs_no_judge_and_suspend_resume(cluster: EmulatedCluster, s3: str) -> None:
    name = "pausy"
    store = run_store(s3, BUCKET, name)
    cluster.create_run(name, spec_for(s3, name))
    wait_for(lambda: cluster.exists("Job", f"{name}-trainer-0"), "trainer Job")
    assert not cluster.exists("Deployment", f"{name}-judge")
    uri = commit(store, 2)
    progress(store, 3, ckpt=(2, uri))
    wait_for(lambda: status(cluster, name).get("step") == 3, "progress")

    cluster.patch_run(name, {"spec": {"suspend": True}, "metadata": {"generation": 2}})
    wait_for(lambda: not cluster.exists("Job", f"{name}-trainer-0"), "trainer deleted on suspend")
    st = wait_for(lambda: status(cluster, name).get("phase") == "Suspended" and status(cluster, name), "Suspended")
    assert condition(st, "Suspended")["status"] == "True" and not cluster.exists("Service", f"{name}-trainer")
    time.sleep(0.6)  # a few timer ticks: nothing comes back while suspended
    assert not cluster.exists("Job", f"{name}-trainer-1")

    cluster.patch_run(name, {"spec": {"suspend": False}, "metadata": {"generation": 3}})
    job = wait_for(lambda: cluster.get("Job", f"{name}-trainer-1"), "a new trainer Job on resume")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--resume" in command and f"s3://{BUCKET}/{name}" in command
    st = wait_for(lambda: status(cluster, name).get("phase") == "Training" and status(cluster, name), "Training")
    assert condition(st, "Suspended")["reason"] == "Resumed" and st["restarts"] == 0 and st["attempt"] == 1
    assert st["lastCheckpoint"]["step"] == 2 and st["observedGeneration"] == 3


def test_trainer_failure_restarts_until_backoff_limit_then_fails(cluster: EmulatedCluster, s3: str) -> None:
    name = "flaky"
    store = run_store(s3, BUCKET, name)
    cluster.create_run(name, spec_for(s3, name, backoffLimit=1))
    wait_for(lambda: cluster.exists("Job", f"{name}-trainer-0"), "trainer Job")
    uri = commit(store, 2)
    progress(store, 2, ckpt=(2, uri))
    wait_for(lambda: (status(cluster, name).get("lastCheckpoint") or {}).get("step") == 2, "checkpoint in status")

    cluster.set_job_state(f"{name}-trainer-0", "Failed", "pod demo-trainer-0-1 failed")
    wait_for(lambda: cluster.exists("Job", f"{name}-trainer-1"), "restarted trainer")
    st = wait_for(lambda: status(cluster, name).get("restarts") == 1 and status(cluster, name), "restarts 1")
    assert (
        condition(st, "Training")["reason"] == "Restarted"
        and "checkpoint step 2" in condition(st, "Training")["message"]
    )

    cluster.set_job_state(f"{name}-trainer-1", "Failed")
    st = wait_for(lambda: status(cluster, name).get("phase") == "Failed" and status(cluster, name), "Failed")
    assert condition(st, "Failed")["reason"] == "BackoffLimitExceeded" and st["completionTime"]
    time.sleep(0.6)
    assert not cluster.exists("Job", f"{name}-trainer-2")


def test_invalid_run_fails_with_the_field_and_no_children(cluster: EmulatedCluster, s3: str) -> None:
    name = "broken"
    spec = spec_for(s3, name)
    spec["run"]["grpo"]["groupSize"] = 1
    cluster.create_run(name, spec)
    st = wait_for(lambda: status(cluster, name).get("phase") == "Failed" and status(cluster, name), "Failed")
    assert condition(st, "Failed")["reason"] == "InvalidSpec" and "spec.run.grpo.groupSize" in st["message"]
    assert not cluster.exists("ConfigMap", f"{name}-config") and not cluster.exists("Job", f"{name}-trainer-0")


def test_deadline_then_ttl_deletes_the_run(cluster: EmulatedCluster, s3: str) -> None:
    name = "short"
    cluster.create_run(name, spec_for(s3, name, activeDeadlineSeconds=1, ttlSecondsAfterFinished=1))
    # On a loaded machine the deadline may pass before the first trainer Job exists; either way the
    # run must end Failed/DeadlineExceeded with no trainer left behind.
    st = wait_for(lambda: status(cluster, name).get("phase") == "Failed" and status(cluster, name), "deadline exceeded")
    assert any(c.get("reason") == "DeadlineExceeded" for c in st["conditions"]), st["conditions"]
    assert not cluster.exists("Job", f"{name}-trainer-0")

    def gone() -> bool:
        try:
            cluster.get_run(name)
        except Exception as err:
            return "404" in str(err) or "Not Found" in str(err)
        return False

    wait_for(gone, "run deleted after ttlSecondsAfterFinished", timeout=10)


def test_operator_restart_mid_run_creates_no_duplicates(cluster: EmulatedCluster, s3: str) -> None:
    name = "survivor"
    store = run_store(s3, BUCKET, name)
    cluster.create_run(name, spec_for(s3, name))
    wait_for(lambda: cluster.exists("Job", f"{name}-trainer-0"), "trainer Job")
    progress(store, 5)
    wait_for(lambda: status(cluster, name).get("step") == 5, "progress")
    before = cluster.created_names("jobs")

    cluster.restart_operator()
    progress(store, 6)
    st = wait_for(lambda: status(cluster, name).get("step") == 6 and status(cluster, name), "new operator polls")
    time.sleep(0.5)
    assert cluster.created_names("jobs") == before and before.count(f"{name}-trainer-0") == 1
    assert st["phase"] == "Training" and st["attempt"] == 0 and st["children"]["trainerJob"] == f"{name}-trainer-0"
