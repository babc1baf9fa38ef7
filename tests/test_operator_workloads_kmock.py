"""The real kopf engine against kmock for issue-15 behaviour: a disrupted trainer restarts without
counting, a judge spec change patches the Deployment, and a queued run's Jobs wait suspended until
Kueue (played by the test) admits them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from operator_helpers import condition, fresh_bucket, running_operator, status
from s3_server import moto_endpoint  # noqa: F401
from test_operator_integration import BUCKET, spec_for
from test_operator_workloads import disrupted_job_status

from stable_layers_operator.testing import EmulatedCluster, wait_for


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> str:  # noqa: F811
    return fresh_bucket(moto_endpoint, BUCKET)


@pytest.fixture(scope="module")
def cluster(s3: str) -> Iterator[EmulatedCluster]:
    with running_operator(interval=0.2, wait_delay=0.2) as emulated:
        yield emulated


def test_a_disrupted_trainer_pod_restarts_the_trainer_uncounted(cluster: EmulatedCluster, s3: str) -> None:
    name = "drained"
    cluster.create_run(name, spec_for(s3, name, backoffLimit=0))
    job = wait_for(lambda: cluster.get("Job", f"{name}-trainer-0"), "trainer Job")
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    cluster.set_job_status(f"{name}-trainer-0", disrupted_job_status(f"{name}-trainer-0-1"))
    wait_for(lambda: cluster.exists("Job", f"{name}-trainer-1"), "trainer restarted after the disruption")
    st = wait_for(lambda: status(cluster, name).get("disruptions") == 1 and status(cluster, name), "disruptions 1")
    assert st["restarts"] == 0 and st["phase"] == "Training" and condition(st, "Training")["reason"] == "Disrupted"
    # backoffLimit 0: a real failure now ends the run.
    cluster.set_job_state(f"{name}-trainer-1", "Failed")
    st = wait_for(lambda: status(cluster, name).get("phase") == "Failed" and status(cluster, name), "Failed")
    assert st["disruptions"] == 1 and st["restarts"] == 0


def test_a_judge_spec_change_patches_the_deployment(cluster: EmulatedCluster, s3: str) -> None:
    name = "judged"
    spec: dict[str, Any] = spec_for(s3, name)
    spec["run"]["reward"] = {"kind": "openai"}
    spec["judge"] = {"nodeSelector": {"pool": "a100"}}
    cluster.create_run(name, spec)
    dep = wait_for(lambda: cluster.get("Deployment", f"{name}-judge"), "judge Deployment")
    assert dep["spec"]["replicas"] == 1
    cluster.patch_run(
        name,
        {
            "spec": {"judge": {"replicas": 2, "image": "vllm/vllm-openai:v0.34.0", "extraArgs": ["--seed", "1"], "nodeSelector": None}},
            "metadata": {"generation": 2},
        },
    )  # fmt: skip

    def patched() -> dict[str, Any] | None:
        live = cluster.get("Deployment", f"{name}-judge")
        return live if live and live["spec"]["replicas"] == 2 else None

    live = wait_for(patched, "judge Deployment patched")
    container = live["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "vllm/vllm-openai:v0.34.0" and container["args"][-4:-2] == ["--seed", "1"]
    assert "nodeSelector" not in live["spec"]["template"]["spec"]
    assert cluster.created_names("deployments").count(f"{name}-judge") == 1


def test_a_queued_run_waits_suspended_until_kueue_admits_it(cluster: EmulatedCluster, s3: str) -> None:
    name = "queued"
    cluster.create_run(name, spec_for(s3, name, queueName="gpu-queue"))
    job = wait_for(lambda: cluster.get("Job", f"{name}-trainer-0"), "trainer Job")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    st = wait_for(lambda: status(cluster, name).get("phase") == "Queued" and status(cluster, name), "Queued")
    assert condition(st, "Training")["reason"] == "Queued" and "gpu-queue" in st["message"]
    cluster.unsuspend_job(f"{name}-trainer-0")
    st = wait_for(lambda: status(cluster, name).get("phase") == "Training" and status(cluster, name), "Training")
    assert condition(st, "Training")["status"] == "True"
    assert cluster.get("Job", f"{name}-trainer-0")["spec"]["suspend"] is False  # type: ignore[index]
    assert cluster.created_names("jobs").count(f"{name}-trainer-0") == 1
