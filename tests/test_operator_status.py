"""Pure parts of issue 14: status within the schema's limits, ownership of children, pod problems,
progress deadline, safe data deletion, and the RBAC that covers every call the operator makes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_operator_children import FakeCluster, FakeStore

from stable_layers_operator import manifests
from stable_layers_operator import status as stw
from stable_layers_operator.conditions import ownership, pod_problems, run_pod_problems
from stable_layers_operator.kube import ApiError
from stable_layers_operator.reconcile import CONFLICT_GRACE_SECONDS, Reconciler
from stable_layers_operator.resource import StableLayersRunStatus, parse_run

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SPEC = {
    "run": {"name": "demo", "model": {"preset": "tiny-random"}},
    "trainer": {"gpusPerNode": 0},
    "storage": {"uri": "s3://bucket/demo"},
}


def body(status: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo", "namespace": "ml", "uid": "1234", "generation": 1},
        "spec": spec or SPEC,
        "status": status or {},
    }


def run(cluster: Any, status: dict[str, Any] | None = None, now: datetime = NOW, **spec: Any) -> Any:
    from stable_layers_operator import progress

    orig = progress.read_progress
    progress.read_progress = lambda store: store.progress  # type: ignore[assignment]
    try:
        out = Reconciler(
            body(status, {**SPEC, **spec}), cluster, now=now, open_store=lambda *a: FakeStore()
        ).reconcile()
    finally:
        progress.read_progress = orig  # type: ignore[assignment]
    StableLayersRunStatus.model_validate(out.status)
    return out


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st["conditions"] if c["type"] == type_), {})


# ------------------------------------------------------------ status within the schema


def test_clean_maps_non_finite_to_null_and_caps_strings_lists_maps() -> None:
    st = {
        "loss": math.nan,
        "reward": {"mean": math.inf, "std": -math.inf, "spread": 0.5},
        "message": "x" * 10_000,
        "evaluations": [{"step": i, "metrics": {f"m{j}": 1.0 for j in range(300)}} for i in range(400)],
        "step": 3,
        "trainingComplete": True,
    }
    out = stw.clean(st)
    assert out["loss"] is None and out["reward"] == {"mean": None, "std": None, "spread": 0.5}
    assert len(out["message"]) == stw.MAX_STRING and out["message"].endswith("[truncated]")
    assert len(out["evaluations"]) == stw.MAX_ITEMS and out["evaluations"][-1]["step"] == 399  # the newest kept
    assert len(out["evaluations"][0]["metrics"]) == stw.MAX_KEYS
    assert out["step"] == 3 and out["trainingComplete"] is True
    assert stw.patch(out, stw.clean(st)) == {}  # NaN != NaN no longer re-sends the same status forever


def test_clean_limits_match_the_crd_schema() -> None:
    crd = yaml.safe_load((ROOT / "manifests/crd/stablelayersruns.stablelayers.io.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["message"]["maxLength"] == stw.MAX_STRING
    assert status["evaluations"]["maxItems"] == stw.MAX_ITEMS == status["conditions"]["maxItems"]
    assert status["evaluations"]["items"]["properties"]["metrics"]["maxProperties"] == stw.MAX_KEYS


# ------------------------------------------------------------ ownership


def owned_by(uid: str | None, kind: str = "StableLayersRun", name: str = "demo") -> dict[str, Any]:
    refs = [] if uid is None else [{"kind": kind, "name": name, "uid": uid, "controller": True}]
    return {"metadata": {"name": "demo-trainer-0", "ownerReferences": refs}}


def test_ownership_compares_the_controller_uid() -> None:
    assert ownership(owned_by("1234"), "StableLayersRun", "demo", "1234") == "Owned"
    assert ownership(owned_by("old"), "StableLayersRun", "demo", "1234") == "Leftover"
    assert ownership(owned_by(None), "StableLayersRun", "demo", "1234") == "Foreign"
    assert ownership(owned_by("1234", name="other"), "StableLayersRun", "demo", "1234") == "Foreign"
    assert ownership(owned_by("x", kind="Deployment"), "StableLayersRun", "demo", "1234") == "Foreign"


def test_a_foreign_object_under_a_child_name_fails_the_run_with_a_clear_condition() -> None:
    cluster = FakeCluster()
    cluster.objects[("ConfigMap", "demo-config")] = {"kind": "ConfigMap", **owned_by(None)}
    out = run(cluster)
    assert out.status["phase"] == "Failed" and cond(out.status, "Failed")["reason"] == "ChildConflict"
    assert "ConfigMap demo-config exists but belongs to something else" in out.status["message"]
    assert cluster.created == []


def test_a_leftover_complete_job_is_waited_for_then_the_run_fails_if_it_stays() -> None:
    cluster = FakeCluster()
    leftover = owned_by("old-uid")
    leftover["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    cluster.objects[("Job", "demo-trainer-0")] = {"kind": "Job", **leftover}
    out = run(cluster)
    assert out.status.get("phase") not in ("Succeeded", "Failed") and not out.status.get("trainingComplete")
    assert cond(out.status, "ChildConflict")["reason"] == "WaitingForDeletion" and out.wait
    later = run(cluster, out.status, now=NOW + timedelta(seconds=CONFLICT_GRACE_SECONDS + 1))
    assert later.status["phase"] == "Failed" and cond(later.status, "Failed")["reason"] == "ChildConflict"
    assert "still there after" in later.status["message"]
    assert ("Job", "demo-trainer-0") in cluster.objects  # never deletes what is not its own


class RefusingCluster(FakeCluster):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__()
        self.refusal = ApiError(status, reason, "admission webhook denied the request")

    def create(self, obj: dict[str, Any]) -> bool:
        if obj["kind"] == "Job":
            raise self.refusal
        return super().create(obj)


@pytest.mark.parametrize(("code", "reason", "failed"), [(422, "Invalid", True), (403, "Forbidden", False)])
def test_a_refused_child_becomes_condition_child_rejected(code: int, reason: str, failed: bool) -> None:
    out = run(RefusingCluster(code, reason))
    c = cond(out.status, "ChildRejected")
    assert c["status"] == "True" and c["reason"] == reason and "Job demo-trainer-0" in c["message"]
    assert "admission webhook denied" in c["message"]
    assert (out.status.get("phase") == "Failed") is failed


# ------------------------------------------------------------ pods and the progress deadline


def test_pod_problems_name_the_reason_and_age() -> None:
    created = (NOW - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    pods = [
        {"metadata": {"name": "a", "creationTimestamp": created}, "status": {"phase": "Running"}},
        {
            "metadata": {"name": "b", "creationTimestamp": created},
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [{"name": "init", "state": {"waiting": {"reason": "PodInitializing"}}}],
                "containerStatuses": [{"name": "main", "state": {"waiting": {"reason": "ErrImagePull"}}}],
            },
        },
        {"metadata": {"name": "c"}, "status": {"phase": "Succeeded"}},
    ]
    assert pod_problems(pods, NOW) == [("ErrImagePull", "pod b container main ErrImagePull for 5m")]
    # Coarse on purpose: polls within the same minute write the same status (no write per poll).
    assert pod_problems(pods, NOW + timedelta(seconds=40)) == pod_problems(pods, NOW)


def test_a_job_that_never_gets_pods_shows_as_no_pods() -> None:
    created = (NOW - timedelta(seconds=90)).isoformat().replace("+00:00", "Z")
    job = {"metadata": {"name": "demo-trainer-0", "creationTimestamp": created}, "status": {}}
    ((reason, message),) = run_pod_problems([], job, None, NOW)
    assert reason == "NoPods" and "demo-trainer-0 has had no pods for 1m" in message
    assert run_pod_problems([], job, None, NOW - timedelta(seconds=40)) == []  # still within the grace
    judge = {"status": {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                        "message": 'pods "demo-judge-x" is forbidden: violates PodSecurity'}]}}  # fmt: skip
    assert run_pod_problems([], None, judge, NOW)[0] == (
        "FailedCreate",
        'judge: pods "demo-judge-x" is forbidden: violates PodSecurity',
    )


def test_progress_deadline_counts_from_the_last_new_step() -> None:
    cluster = FakeCluster()
    first = run(cluster, progressDeadlineSeconds=60)
    assert first.status["phase"] == "Training" and first.status["lastProgressTime"]
    FakeStore.progress = {"step": 1}
    try:
        stepped = run(cluster, first.status, now=NOW + timedelta(seconds=50), progressDeadlineSeconds=60)
        assert stepped.status["phase"] == "Training" and stepped.status["step"] == 1
        alive = run(cluster, stepped.status, now=NOW + timedelta(seconds=100), progressDeadlineSeconds=60)
        assert alive.status["phase"] == "Training"  # 50 s after the new step
        dead = run(cluster, alive.status, now=NOW + timedelta(seconds=111), progressDeadlineSeconds=60)
    finally:
        FakeStore.progress = None
    assert dead.status["phase"] == "Failed" and cond(dead.status, "Failed")["reason"] == "ProgressDeadlineExceeded"


# ------------------------------------------------------------ data deletion


@pytest.mark.parametrize(
    ("storage", "error"),
    [
        ({"uri": "s3://bucket/run"}, "needs storage.secretRef"),
        ({"uri": "s3://bucket", "secretRef": {"name": "k"}}, "not a whole bucket"),
        ({"uri": "s3://bucket/", "secretRef": {"name": "k"}}, "not a whole bucket"),
    ],
)
def test_deletion_needs_own_credentials_and_a_prefix(storage: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_run({**SPEC, "storage": {**storage, "deleteOnRunDeletion": True}})
    parse_run({**SPEC, "storage": {**storage, "deleteOnRunDeletion": False}})  # fine without deletion


# ------------------------------------------------------------ RBAC scope


def test_secrets_are_not_readable_cluster_wide() -> None:
    docs = list(yaml.safe_load_all((ROOT / "manifests/rbac/rbac.yaml").read_text()))
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    for role in (d for d in docs if d["kind"] == "ClusterRole"):
        has_secrets = any("secrets" in rule["resources"] for rule in role["rules"])
        assert not (has_secrets and role["metadata"]["name"] in bound), role["metadata"]["name"]
    chart = yaml.safe_load((ROOT / "charts/stable-layers-operator/files/rbac.yaml").read_text())
    assert all("secrets" not in r["resources"] for r in chart["namespacedRules"] + chart["clusterRules"])
    assert any("secrets" in r["resources"] for r in chart["secretRules"])


# ------------------------------------------------------------ small ones


def test_crd_accepts_explicit_null_for_nullable_enums_and_is_not_in_category_all() -> None:
    import jsonschema

    crd = yaml.safe_load((ROOT / "manifests/crd/stablelayersruns.stablelayers.io.yaml").read_text())
    assert "all" not in crd["spec"]["names"]["categories"]  # `kubectl delete all --all` leaves runs alone
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    phase = schema["properties"]["status"]["properties"]["phase"]
    assert phase["nullable"] is True and None in phase["enum"]
    # (jsonschema has no `nullable`; the API server accepts null only when the enum lists it.)
    jsonschema.Draft4Validator(phase).validate("Training")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(phase).validate("Bogus")


def test_watch_and_requests_have_client_timeouts() -> None:
    import asyncio

    import kopf

    from stable_layers_operator.handlers import OperatorConfig, register

    registry = kopf.OperatorRegistry()
    register(registry, OperatorConfig(cluster_factory=FakeCluster))
    (configure,) = [h for h in registry._activities.get_all_handlers() if "configure" in str(h.id)]
    settings = kopf.OperatorSettings()

    async def start() -> None:
        memo = kopf.Memo()
        await configure.fn(settings=settings, memo=memo, logger=None)
        memo.poller.cancel()

    asyncio.run(start())
    assert settings.watching.client_timeout and settings.watching.client_timeout > settings.watching.server_timeout
    assert settings.watching.connect_timeout and settings.networking.request_timeout
    from stable_layers_operator import kube

    assert kube.TIMEOUT[0] > 0 and kube.TIMEOUT[1] > 0


def test_chart_liveness_probe_has_a_timeout_and_secrets_rbac_is_per_namespace() -> None:
    from chart_helpers import by_kind, one, render

    docs = render()
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["timeoutSeconds"] >= 5
    assert manifests.operator_deployment()["spec"]["template"]["spec"]["containers"][0]["livenessProbe"][
        "timeoutSeconds"
    ]
    for role in by_kind(docs, "ClusterRole"):
        assert all("secrets" not in rule["resources"] for rule in role["rules"])
    docs = render(sets={"secretNamespaces[0]": "ml-team-a"})
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"].endswith("-secrets")]
    assert binding["metadata"]["namespace"] == "ml-team-a"
    assert not [b for b in by_kind(docs, "ClusterRoleBinding") if b["roleRef"]["name"].endswith("-secrets")]


def test_s3_clients_share_one_session_and_the_cache_is_bounded() -> None:
    from stable_layers_operator import progress

    progress._clients.clear()
    first = progress._s3_client("http://127.0.0.1:1", "us-east-1", "key-0", "secret-0")
    assert progress._s3_client("http://127.0.0.1:1", "us-east-1", "key-0", "secret-0") is first
    session = progress._session
    for i in range(1, progress.MAX_CLIENTS + 10):
        progress._s3_client("http://127.0.0.1:1", "us-east-1", f"key-{i}", f"secret-{i}")
    assert progress._session is session and len(progress._clients) == progress.MAX_CLIENTS
    assert progress._s3_client("http://127.0.0.1:1", "us-east-1", "key-0", "secret-0") is not first  # evicted
    creds = progress._s3_client("http://127.0.0.1:1", "us-east-1", "key-5", "secret-5")._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("key-5", "secret-5")
    progress._clients.clear()


def test_polls_are_jittered_within_the_interval() -> None:
    from stable_layers_operator.handlers import OperatorConfig, next_interval

    config = OperatorConfig(interval=10.0, jitter=0.1, cluster_factory=FakeCluster)
    delays = [next_interval(config) for _ in range(500)]
    assert 9.0 <= min(delays) < 9.5 and 10.5 < max(delays) <= 11.0
    assert len({round(d, 3) for d in delays}) > 400  # spread, not lockstep
