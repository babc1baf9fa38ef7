"""Workloads a real cluster can run: `render`, admission that matches the API server (schema and
CEL, evaluated here with a CEL library), Pod Security `restricted`, the model cache, pass-through
env and volumes, the Job failure policy, the judge following its spec and Kueue queueing."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_operator_children import FakeCluster, reconcile, run_body

from stable_layers_operator import children as ch
from stable_layers_operator import evaluation as ev
from stable_layers_operator import judge as jd
from stable_layers_operator import render as rd
from stable_layers_operator import workload as wl
from stable_layers_operator.resource import parse_run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {p.name: p for p in sorted((ROOT / "manifests/examples").glob("*.yaml"))}


def document(name: str) -> dict[str, Any]:
    return yaml.safe_load(EXAMPLES[name].read_text())


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Job", "Deployment")}


# ---------------------------------------------------------------- Pod Security "restricted"

RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards' `restricted` profile (kubernetes.io/docs/concepts/security/
    pod-security-standards/), baseline controls included, for one pod spec."""
    bad: list[str] = []
    psc = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            bad.append(f"{host} is true")
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {v['name']} has type {sorted(kinds - RESTRICTED_VOLUMES)}")
    if psc.get("runAsUser") == 0:
        bad.append("pod runAsUser is 0")
    for key in ("seLinuxOptions",):
        if (psc.get(key) or {}).get("user") or (psc.get(key) or {}).get("role"):
            bad.append(f"pod {key} sets user/role")
    if psc.get("sysctls"):
        bad.append("pod sets sysctls")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        bad.append("pod AppArmor Unconfined")
    containers = [*(pod.get("initContainers") or []), *pod["containers"]]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile is {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort {port['hostPort']}")
    return bad


def test_the_restricted_check_catches_what_the_standard_forbids() -> None:
    pod = {"containers": [{"name": "c", "securityContext": {"privileged": True}}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}  # fmt: skip
    found = restricted_violations(pod)
    assert any("hostPath" in m for m in found) and any("privileged" in m for m in found)
    assert any("runAsNonRoot" in m for m in found) and any("seccompProfile" in m for m in found)


# ---------------------------------------------------------------- render


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_render_prints_valid_restricted_objects(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stable_layers_operator", "render", str(EXAMPLES[name]), "--namespace", "ml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33", strict=True)
        assert obj["metadata"]["namespace"] == "ml"
    kinds = [o["kind"] for o in objects]
    run = document(name)["metadata"]["name"]
    if name == "run.yaml":
        assert kinds == ["ConfigMap", "Service", "Deployment", "Service", "Job", "Job"]
    else:
        assert kinds == ["ConfigMap", "Service", "Job", "Job"]
    pods = pod_specs(objects)
    for job in (
        f"{run}-trainer-0",
        f"{run}-eval-{ch.evaluation_settings(rd.validate(document(name), name)[1])[0]:06d}",
    ):
        assert restricted_violations(pods[job]) == [], job
        for c in pods[job]["containers"]:
            requests = c["resources"]["requests"]
            assert {"cpu", "memory", "ephemeral-storage"} <= set(requests), "never BestEffort"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
            assert {"/tmp", "/dev/shm", wl.cache_dir(parse_run(document(name)["spec"]))} <= mounts


def test_render_is_what_the_reconciler_creates() -> None:
    for name in EXAMPLES:
        spec = document(name)["spec"]
        cluster = FakeCluster()
        status: dict[str, Any] | None = None
        for _ in range(2):  # the judge, once ready, lets the second pass create the trainer
            status = reconcile(cluster, spec, status).status
            if (dep := cluster.objects.get(("Deployment", "demo-judge"))) is not None:
                dep["status"] = {"readyReplicas": 1}
        rendered = {(o["kind"], o["metadata"]["name"]): o for o in rd.render(run_body(spec))}
        created = {k: {kk: vv for kk, vv in v.items() if kk != "status"} for k, v in cluster.objects.items()}
        assert set(rendered) - set(created) == {k for k in rendered if "-eval-" in k[1]}, name
        assert created == {k: v for k, v in rendered.items() if k in created}, name


def test_render_of_a_live_run_uses_its_uid_and_attempt() -> None:
    live = {**document("run-tiny.yaml"), "status": {"attempt": 3, "phase": "Training"}}
    live["metadata"] = {**live["metadata"], "namespace": "ml", "uid": "abc-123"}
    result = subprocess.run(
        [sys.executable, "-m", "stable_layers_operator", "render", "-"],
        input=yaml.safe_dump(live),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    assert {o["metadata"]["ownerReferences"][0]["uid"] for o in objects} == {"abc-123"}
    assert "tiny-smoke-trainer-3" in {o["metadata"]["name"] for o in objects}


def test_render_refuses_a_bad_run_with_the_field_and_prints_nothing(tmp_path: Path) -> None:
    doc = document("run.yaml")
    doc["metadata"]["name"] = "Big_Run"
    doc["spec"]["judge"]["model"] = ""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "stable_layers_operator", "render", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert "metadata.name must be a DNS-1035 label" in result.stderr
    doc["metadata"]["name"] = "ok"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "stable_layers_operator", "render", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == ""
    assert f"{path}: spec.judge.model: String should have at least 1 character" in result.stderr
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod"}))
    result = subprocess.run(
        [sys.executable, "-m", "stable_layers_operator", "render", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "expected apiVersion stablelayers.io/v1alpha1" in result.stderr


# ---------------------------------------------------------------- weights, data, env


def test_the_model_cache_token_and_data_reach_every_pod() -> None:
    doc = document("run.yaml")
    objects = rd.render(doc)
    pods = pod_specs(objects)
    assert set(pods) == {"qil-flowgrpo-judge", "qil-flowgrpo-trainer-0", "qil-flowgrpo-eval-000100"}
    for name, pod in pods.items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "model-cache", name
        container = pod["containers"][0]
        env = {v["name"]: v for v in container["env"]}
        assert env["HF_HOME"]["value"] == "/var/cache/stable-layers/huggingface", name
        assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}, name
        assert {"name": "model-cache", "mountPath": "/var/cache/stable-layers"} in container["volumeMounts"]
        assert len(env) == len(container["env"]), "no duplicate env names"
    judge = pods["qil-flowgrpo-judge"]["containers"][0]
    assert judge["args"][judge["args"].index("--download-dir") + 1] == "/var/cache/stable-layers/huggingface/hub"
    evaluation = pods["qil-flowgrpo-eval-000100"]
    data = parse_run(doc["spec"]).evaluation.data
    mount = next(m for m in evaluation["containers"][0]["volumeMounts"] if m["name"] == "crello")
    assert data == f"crello:{mount['mountPath']}" and mount["readOnly"] is True
    assert (
        next(v for v in evaluation["volumes"] if v["name"] == "crello")["persistentVolumeClaim"]["claimName"]
        == "crello"
    )
    trainer_env = {v["name"]: v.get("value") for v in pods["qil-flowgrpo-trainer-0"]["containers"][0]["env"]}
    assert trainer_env["NCCL_DEBUG"] == "WARN"


def test_render_warns_when_the_evaluation_data_is_mounted_by_nothing(tmp_path: Path) -> None:
    doc = document("run.yaml")
    assert ev.unmounted_data(parse_run(doc["spec"])) is None
    doc["spec"]["evaluation"].pop("extraVolumeMounts")
    doc["spec"]["evaluation"].pop("extraVolumes")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "stable_layers_operator", "render", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0 and "kind: Job" in result.stdout
    assert "warning:" in result.stderr and "/data/crello is inside no volume of the evaluation pods" in result.stderr


def test_user_env_replaces_the_operators_and_mounts_must_name_volumes() -> None:
    doc = document("run-tiny.yaml")
    doc["spec"]["trainer"]["env"] = [{"name": "HF_HOME", "value": "/elsewhere"}]
    job = next(o for o in rd.render(doc) if o["kind"] == "Job")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [v["value"] for v in env if v["name"] == "HF_HOME"] == ["/elsewhere"]
    doc["spec"]["trainer"]["extraVolumeMounts"] = [{"name": "nope", "mountPath": "/x"}]
    with pytest.raises(rd.RenderError, match=r"spec\.trainer: .*extraVolumeMounts: \['nope'\] name no volume"):
        rd.render(doc)
    doc["spec"]["trainer"].pop("extraVolumeMounts")
    doc["spec"]["trainer"]["extraVolumes"] = [{"name": "tmp", "emptyDir": {}}]
    with pytest.raises(rd.RenderError, match="the operator's own volume names"):
        rd.render(doc)


def test_requests_default_per_key_and_never_exceed_a_limit() -> None:
    spec = parse_run({"storage": {"uri": "s3://bucket/x"}, "trainer": {"resources": {"limits": {"memory": "8Gi"}}}})
    res = ch.trainer_job(spec, ch.Owner("r", "ml", "u"), 0)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "32", "ephemeral-storage": "100Gi", "nvidia.com/gpu": "8"}
    assert res["limits"] == {"memory": "8Gi", "nvidia.com/gpu": "8"}


def test_judge_security_defaults_and_the_restricted_override() -> None:
    doc = document("run.yaml")
    judge = pod_specs(rd.render(doc))["qil-flowgrpo-judge"]
    # vLLM's image runs as root: by default only runAsNonRoot is missing from `restricted`.
    assert [v for v in restricted_violations(judge)] == ["vllm: runAsNonRoot is not true"]
    doc["spec"]["judge"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": 65532, "fsGroup": 65532}
    judge = pod_specs(rd.render(doc))["qil-flowgrpo-judge"]
    assert restricted_violations(judge) == []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert judge["containers"][0][probe]["timeoutSeconds"] >= 5
    requests = judge["containers"][0]["resources"]["requests"]
    assert requests == {"cpu": "4", "memory": "32Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "1"}


# ---------------------------------------------------------------- Jobs: failure policy, disruptions, queueing


def test_jobs_carry_the_pod_failure_policy() -> None:
    objects = rd.render(document("run.yaml"))
    trainer, evaluation = [o for o in objects if o["kind"] == "Job"]
    rules = trainer["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert len(rules) == 1  # every other failure counts as usual
    assert evaluation["spec"]["podFailurePolicy"]["rules"][0]["action"] == "Ignore"
    assert trainer["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it


def disrupted_job_status(pod: str) -> dict[str, Any]:
    """What the Job controller writes when a FailJob rule on DisruptionTarget matches."""
    message = f"Pod ml/{pod} has condition DisruptionTarget matching FailJob rule at index 0"
    return {
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy", "message": message},
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": message},
        ]
    }


def test_a_disrupted_trainer_restarts_without_using_the_backoff_limit() -> None:
    cluster = FakeCluster()
    spec = {"storage": {"uri": "s3://bucket/demo"}, "backoffLimit": 0}
    status = reconcile(cluster, spec, None).status
    for attempt in range(3):  # more disruptions than backoffLimit allows failures
        cluster.objects[("Job", f"demo-trainer-{attempt}")]["status"] = disrupted_job_status(
            f"demo-trainer-{attempt}-0"
        )
        status = reconcile(cluster, spec, status).status
        assert status["phase"] == "Training" and status["restarts"] == 0 and status["disruptions"] == attempt + 1
        assert ("Job", f"demo-trainer-{attempt + 1}") in cluster.objects
    training = next(c for c in status["conditions"] if c["type"] == "Training")
    assert training["reason"] == "Disrupted" and "not counted" in training["message"]
    cluster.fail("demo-trainer-3")  # a real failure still counts
    assert reconcile(cluster, spec, status).status["phase"] == "Failed"


def test_queued_jobs_are_created_suspended_with_the_kueue_label() -> None:
    cluster = FakeCluster()
    spec = {"storage": {"uri": "s3://bucket/demo"}, "queueName": "gpu-queue"}
    out = reconcile(cluster, spec, None)
    job = cluster.objects[("Job", "demo-trainer-0")]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][wl.KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert out.status["phase"] == "Queued" and "gpu-queue" in out.status["message"]
    job["spec"]["suspend"] = False  # Kueue admits the gang
    assert reconcile(cluster, spec, out.status).status["phase"] == "Training"
    queued_eval = next(
        o
        for o in rd.render(run_body({**spec, "evaluation": {"data": "synthetic:heldout"}}))
        if "-eval-" in o["metadata"]["name"]
    )
    assert queued_eval["spec"]["suspend"] is True
    assert queued_eval["metadata"]["labels"][wl.KUEUE_QUEUE_LABEL] == "gpu-queue"
    unqueued = rd.render(run_body({"storage": {"uri": "s3://bucket/demo"}}))
    assert all("suspend" not in o["spec"] for o in unqueued if o["kind"] == "Job")


# ---------------------------------------------------------------- the judge follows its spec


def test_judge_patch_carries_exactly_the_change() -> None:
    owner = ch.Owner("demo", "ml", "u")
    spec = parse_run(document("run.yaml")["spec"])
    live = jd.judge_deployment(spec, owner)
    assert jd.judge_patch(live, jd.judge_deployment(spec, owner)) is None
    # The API server's defaults in the live object do not cause a patch.
    defaulted = copy.deepcopy(live)
    defaulted["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    assert jd.judge_patch(defaulted, jd.judge_deployment(spec, owner)) is None
    changed = parse_run(
        {**document("run.yaml")["spec"], "judge": {"replicas": 3, "image": "vllm/vllm-openai:v9", "nodeSelector": {}}}
    )
    patch = jd.judge_patch(defaulted, jd.judge_deployment(changed, owner))
    assert patch is not None and patch["spec"]["replicas"] == 3
    container = patch["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "vllm/vllm-openai:v9"
    assert patch["spec"]["template"]["spec"]["tolerations"] is None  # removed from the spec → removed live
    assert patch["spec"]["template"]["spec"]["dnsPolicy"] is None  # re-defaulted by the server: same value
    assert "selector" not in patch["spec"]


def test_the_queued_phase_gauge_returns_to_zero() -> None:
    from stable_layers_operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()

    def runs(phase: str) -> float | None:
        return metrics.registry.get_sample_value("stablelayers_operator_runs", {"phase": phase})

    assert runs("Queued") == 0
    metrics.observe_phase("ml", "demo", "Queued")
    assert runs("Queued") == 1
    metrics.observe_phase("ml", "demo", "Training")
    assert runs("Queued") == 0 and runs("Training") == 1
