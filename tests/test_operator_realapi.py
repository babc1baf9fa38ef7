"""The operator against an API server that answers like a real one: refusals (400/403/422/500),
uids, leftovers of a deleted run, pods that never start. kmock is told to refuse requests
(`EmulatedCluster.refuse`); it also refuses NaN in JSON bodies as Go's decoder does. Each test
fails on the operator before issue 14: a refused status write ended kopf's timer for good, a
refused child was retried silently, a leftover Complete Job finished the new run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from operator_helpers import condition, fresh_bucket, run_spec, run_store, running_operator, status
from s3_server import moto_endpoint  # noqa: F401

from stable_layers import storage
from stable_layers.storage.s3 import S3Store
from stable_layers_operator.testing import EmulatedCluster, wait_for

BUCKET = "realapi-runs"


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> str:  # noqa: F811
    return fresh_bucket(moto_endpoint, BUCKET)


@pytest.fixture(scope="module")
def cluster(s3: str) -> Iterator[EmulatedCluster]:
    with running_operator(interval=0.2, delete_backoff=0.2, delete_retries=2) as emulated:
        yield emulated


def store_of(endpoint: str, name: str) -> S3Store:
    return run_store(endpoint, BUCKET, name)


def spec_for(endpoint: str, name: str, **extra: Any) -> dict[str, Any]:
    return run_spec(endpoint, BUCKET, name, **extra)


def progress(store: S3Store, step: int, loss: float = 0.01) -> None:
    storage.write_progress(store, {"step": step, "maxSteps": 8, "phase": "Running", "loss": loss})


def training(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    return wait_for(lambda: status(cluster, name).get("phase") == "Training" and status(cluster, name), "Training")


def test_refused_status_write_never_stops_polling(cluster: EmulatedCluster, s3: str) -> None:
    name = "stall-400"
    store = store_of(s3, name)
    cluster.create_run(name, spec_for(s3, name))
    training(cluster, name)
    rule = cluster.refuse("PATCH", f"/stablelayersruns/{name}/status", 400, "the server is having a bad day")
    progress(store, 2)
    # The operator keeps polling and keeps trying (kopf's timer died at the first refusal).
    wait_for(lambda: rule.seen >= 3, "status writes retried on later polls")
    cluster.allow(rule)
    progress(store, 3)
    wait_for(lambda: status(cluster, name).get("step") == 3, "status written once the server accepts it again")


def test_an_outage_of_status_writes_does_not_hold_up_the_run(cluster: EmulatedCluster, s3: str) -> None:
    """While every status write gets a 500, passes go on: a failed trainer is restarted at once
    (kopf retried its status patch for ~a minute inside the timer, and nothing else happened)."""
    name = "outage"
    cluster.create_run(name, spec_for(s3, name, backoffLimit=5))
    training(cluster, name)
    rule = cluster.refuse("PATCH", f"/stablelayersruns/{name}/status", 500, "etcdserver: request timed out")
    try:
        cluster.set_job_state(f"{name}-trainer-0", "Failed")
        wait_for(lambda: cluster.exists("Job", f"{name}-trainer-1"), "first restart during the outage", timeout=10)
        wait_for(lambda: rule.seen >= 1, "the restart's status write refused", timeout=10)
        cluster.set_job_state(f"{name}-trainer-1", "Failed")
        wait_for(lambda: cluster.exists("Job", f"{name}-trainer-2"), "second restart during the outage", timeout=10)
    finally:
        cluster.allow(rule)
    wait_for(lambda: status(cluster, name).get("restarts") == 2, "status caught up after the outage")


def test_non_finite_loss_becomes_null_and_the_run_goes_on(cluster: EmulatedCluster, s3: str) -> None:
    name = "nan-loss"
    store = store_of(s3, name)
    cluster.create_run(name, spec_for(s3, name))
    training(cluster, name)
    progress(store, 4, loss=float("nan"))
    st = wait_for(lambda: status(cluster, name).get("step") == 4 and status(cluster, name), "step 4 despite NaN loss")
    assert st.get("loss") is None
    progress(store, 5, loss=0.5)
    wait_for(lambda: status(cluster, name).get("loss") == 0.5, "a finite loss again")


def test_a_422_on_status_is_retried_and_recovers(cluster: EmulatedCluster, s3: str) -> None:
    name = "refused-422"
    store = store_of(s3, name)
    cluster.create_run(name, spec_for(s3, name))
    training(cluster, name)
    rule = cluster.refuse("PATCH", f"/stablelayersruns/{name}/status", 422, "status.evaluations: Too many: 300")
    progress(store, 6)
    wait_for(lambda: rule.seen >= 2, "the full status refused")
    cluster.allow(rule)
    wait_for(lambda: status(cluster, name).get("step") == 6, "the full status once accepted")


def test_minimal_status_after_a_422(cluster: EmulatedCluster, s3: str) -> None:
    """Only writes carrying the new step are refused: the fallback (phase + message) gets through."""
    name = "fallback"
    store = store_of(s3, name)
    cluster.create_run(name, spec_for(s3, name))
    training(cluster, name)
    rule = cluster.refuse("PATCH", f"/stablelayersruns/{name}/status", 422, "status.step: Invalid value")
    rule.body_contains = '"step"'
    progress(store, 1)
    st = wait_for(
        lambda: "refused" in (status(cluster, name).get("message") or "") and status(cluster, name), "message"
    )
    assert "422" in st["message"] and "status.step: Invalid value" in st["message"]
    cluster.allow(rule)
    wait_for(lambda: status(cluster, name).get("step") == 1, "recovered")


def test_forbidden_child_shows_in_status_and_is_retried(cluster: EmulatedCluster, s3: str) -> None:
    name = "quota"
    rule = cluster.refuse("POST", "/jobs", 403, 'jobs "quota-trainer-0" is forbidden: exceeded quota: gpu-quota')
    cluster.create_run(name, spec_for(s3, name))
    st = wait_for(lambda: condition(status(cluster, name), "ChildRejected") and status(cluster, name), "ChildRejected")
    cond = condition(st, "ChildRejected")
    assert cond["status"] == "True" and cond["reason"] == "Forbidden"
    assert "Job quota-trainer-0" in cond["message"] and "exceeded quota" in cond["message"]
    assert st.get("phase") != "Failed" and "exceeded quota" in st["message"]
    wait_for(lambda: rule.seen >= 2, "the create retried")
    cluster.allow(rule)
    st = training(cluster, name)
    assert condition(st, "ChildRejected")["status"] == "False" and cluster.exists("Job", f"{name}-trainer-0")


def test_invalid_child_fails_the_run(cluster: EmulatedCluster, s3: str) -> None:
    name = "invalid"
    msg = 'Job.batch "invalid-trainer-0" is invalid: spec.template.spec.containers[0].image: Required value'
    rule = cluster.refuse("POST", "/jobs", 422, msg)
    try:
        cluster.create_run(name, spec_for(s3, name))
        st = wait_for(lambda: status(cluster, name).get("phase") == "Failed" and status(cluster, name), "Failed")
    finally:
        cluster.allow(rule)
    assert condition(st, "Failed")["reason"] == "ChildRejected" and "Required value" in st["message"]
    assert condition(st, "ChildRejected")["reason"] == "Invalid"
    time.sleep(0.6)
    assert not cluster.exists("Job", f"{name}-trainer-0")


def test_leftover_complete_job_of_a_deleted_run_is_not_adopted(cluster: EmulatedCluster, s3: str) -> None:
    name = "again"
    # `kubectl delete slr again && kubectl apply -f again.yaml`: the old run's Job awaits garbage
    # collection, Complete, owned by the old uid.
    old = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{name}-trainer-0",
            "namespace": cluster.namespace,
            "labels": {"stablelayers.io/run": name, "app.kubernetes.io/managed-by": "stable-layers-operator"},
            "ownerReferences": [
                {
                    "apiVersion": "stablelayers.io/v1alpha1",
                    "kind": "StableLayersRun",
                    "name": name,
                    "uid": "0ld-run-uid",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "x"}], "restartPolicy": "Never"}}},
    }
    from stable_layers_operator.kube import KubeCluster

    KubeCluster(cluster.api).create(old)
    cluster.set_job_state(f"{name}-trainer-0", "Complete")
    cluster.create_run(name, spec_for(s3, name))
    st = wait_for(lambda: condition(status(cluster, name), "ChildConflict") and status(cluster, name), "ChildConflict")
    assert condition(st, "ChildConflict")["reason"] == "WaitingForDeletion"
    assert "earlier run of the same name" in condition(st, "ChildConflict")["message"]
    time.sleep(0.6)
    assert status(cluster, name).get("phase") not in ("Succeeded", "Failed")
    assert not status(cluster, name).get("trainingComplete")

    KubeCluster(cluster.api).delete("Job", cluster.namespace, f"{name}-trainer-0")  # garbage collection
    job = wait_for(lambda: cluster.get("Job", f"{name}-trainer-0"), "the new run's own trainer Job")
    uid = cluster.get_run(name)["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    st = training(cluster, name)
    assert condition(st, "ChildConflict")["status"] == "False"


def test_waiting_pods_show_in_conditions(cluster: EmulatedCluster, s3: str) -> None:
    name = "stuck"
    cluster.create_run(name, spec_for(s3, name, trainer={"nodes": 3, "gpusPerNode": 0}))
    wait_for(lambda: cluster.exists("Job", f"{name}-trainer-0"), "trainer Job")
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "worker:typo"'}
    cluster.create_pod(f"{name}-trainer-0-0-aaaaa", name, "trainer", {
        "phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": waiting}}],
    })  # fmt: skip
    cluster.create_pod(f"{name}-trainer-0-1-bbbbb", name, "trainer", {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}],
    })  # fmt: skip
    cluster.create_pod(f"{name}-trainer-0-2-ccccc", name, "trainer", {
        "phase": "Running",
        "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
    })  # fmt: skip

    def all_three() -> Any:
        st = status(cluster, name)
        msg = condition(st, "PodsReady").get("message", "")
        return all(r in msg for r in ("ImagePullBackOff", "Unschedulable", "CrashLoopBackOff")) and st

    st = wait_for(all_three, "PodsReady naming the three pods")
    msg = condition(st, "PodsReady")["message"]
    assert condition(st, "PodsReady")["status"] == "False"
    assert "ImagePullBackOff" in msg and "worker:typo" in msg
    assert "Unschedulable" in msg and "Insufficient nvidia.com/gpu" in msg
    assert "CrashLoopBackOff" in msg and " for " in msg  # the pods' age


def test_progress_deadline_fails_a_run_without_steps(cluster: EmulatedCluster, s3: str) -> None:
    name = "nostep"
    cluster.create_run(name, spec_for(s3, name, progressDeadlineSeconds=2))
    training(cluster, name)
    st = wait_for(
        lambda: status(cluster, name).get("phase") == "Failed" and status(cluster, name), "Failed", timeout=20
    )
    assert condition(st, "Failed")["reason"] == "ProgressDeadlineExceeded"
    assert "progressDeadlineSeconds" in st["message"]
    assert not cluster.exists("Job", f"{name}-trainer-0")  # a failed run's running trainer is stopped


def test_runs_carry_no_finalizer_and_deletion_without_credentials_ends(cluster: EmulatedCluster, s3: str) -> None:
    name = "gone"
    spec = spec_for(s3, name)
    cluster.create_run(name, spec)
    training(cluster, name)
    assert not cluster.get_run(name)["metadata"].get("finalizers")  # deletable with the operator down

    doomed = "doomed"
    spec = spec_for(s3, doomed)
    spec["storage"].update(deleteOnRunDeletion=True, secretRef={"name": "vanished"})
    cluster.create_run(doomed, spec)
    wait_for(lambda: cluster.get_run(doomed)["metadata"].get("finalizers"), "the data-deletion finalizer")
    cluster._request("DELETE", cluster.run_path(doomed))

    def deleted() -> bool:
        try:
            cluster.get_run(doomed)
        except Exception as err:
            return "404" in str(err) or "Not Found" in str(err)
        return False

    wait_for(deleted, "the run released although its Secret is gone", timeout=20)


def test_judge_loading_is_reported_in_status_not_as_errors(
    cluster: EmulatedCluster, s3: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = "loading"
    spec = spec_for(s3, name)
    spec["run"]["reward"] = {"kind": "openai"}
    cluster.create_run(name, spec)
    st = wait_for(lambda: status(cluster, name).get("phase") == "Starting" and status(cluster, name), "Starting")
    assert "waiting for the vLLM judge" in st["message"]
    caplog.clear()
    before = len(cluster.tally)
    time.sleep(1.5)  # several polls at 0.2 s
    # kopf logged an ERROR (and posted an Event) on every tick while the judge loaded.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "judge" in r.getMessage()]
    assert errors == []
    posted = [p for _, m, _, p in cluster.tally[before:] if m == "POST" and p.endswith("/events")]
    assert posted == []
    assert condition(status(cluster, name), "JudgeReady")["reason"] == "Loading"


def test_a_failing_poller_tick_does_not_stop_polling(
    cluster: EmulatedCluster, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stable_layers_operator import handlers

    name = "ticks"
    store = store_of(s3, name)
    cluster.create_run(name, spec_for(s3, name))
    training(cluster, name)
    calls = {"n": 0}
    latest = handlers._latest

    def flaky(memo: Any, key: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("index changed under the poller")
        return latest(memo, key)

    monkeypatch.setattr(handlers, "_latest", flaky)
    wait_for(lambda: calls["n"] > 3, "ticks go on after failing ones")
    # Written only after the failures, so only a poll that came after them can report it.
    progress(store, 7)
    wait_for(lambda: status(cluster, name).get("step") == 7, "polling goes on after failing ticks")


def test_rbac_grants_every_call_the_operator_made(cluster: EmulatedCluster) -> None:
    """Recorded, not listed: every request the operator and kopf sent during this module (runs,
    status, children, pods, Secrets, deletion) is allowed by the RBAC in manifests/ and the chart."""
    from stable_layers_operator import manifests

    rules = manifests.RBAC_RULES + manifests.SECRET_RULES
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    made = cluster.operator_requests()
    assert {
        ("batch", "jobs", "create"),
        ("", "pods", "watch"),
        ("stablelayers.io", "stablelayersruns/status", "patch"),
    } <= made
    assert made <= granted, sorted(made - granted)
    # Not a request but an admission check (OwnerReferencesPermissionEnforcement): setting
    # blockOwnerDeletion on a child needs update on the owner's finalizers subresource.
    assert ("stablelayers.io", "stablelayersruns/finalizers", "update") in granted
