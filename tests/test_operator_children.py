"""Spec → child objects (pure functions) and the reconcile pass against an in-memory fake cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stable_layers.spec import RunSpec
from stable_layers_operator import children as ch
from stable_layers_operator import evaluation as ev
from stable_layers_operator import judge as jd
from stable_layers_operator.conditions import set_condition
from stable_layers_operator.reconcile import Reconciler
from stable_layers_operator.resource import StableLayersRunStatus, parse_run

ROOT = Path(__file__).resolve().parent.parent
OWNER = ch.Owner(name="demo", namespace="ml", uid="1234")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifests/examples" / name).read_text())


def full_spec() -> Any:
    return parse_run(example("run.yaml")["spec"])


def all_children(spec: Any) -> list[dict[str, Any]]:
    objs = [ch.config_map(spec, OWNER), ch.trainer_service(spec, OWNER), ch.trainer_job(spec, OWNER, 0)]
    objs += [jd.judge_deployment(spec, OWNER), jd.judge_service(spec, OWNER)]
    if ch.evaluation_settings(spec)[1]:
        objs.append(ev.eval_job(spec, OWNER, 100))
    return objs


@pytest.mark.parametrize("name", ["run.yaml", "run-tiny.yaml"])
def test_every_child_passes_strict_kubernetes_validation(name: str) -> None:
    for obj in all_children(parse_run(example(name)["spec"])):
        kubernetes_validate.validate(obj, "1.33", strict=True)
        assert obj["metadata"]["ownerReferences"][0] == {
            "apiVersion": "stablelayers.io/v1alpha1",
            "kind": "StableLayersRun",
            "name": "demo",
            "uid": "1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert len(obj["metadata"]["name"]) <= 63


def test_trainer_job_is_indexed_one_pod_per_node_with_gpus_and_no_pod_retries() -> None:
    spec = full_spec()
    job = ch.trainer_job(spec, OWNER, 3)
    assert job["metadata"]["name"] == "demo-trainer-3"
    js = job["spec"]
    assert js["completionMode"] == "Indexed" and js["completions"] == js["parallelism"] == 2
    assert js["backoffLimit"] == 0
    pod = js["template"]["spec"]
    assert pod["subdomain"] == "demo-trainer" and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    svc = ch.trainer_service(spec, OWNER)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()


def test_trainer_process_matches_the_entry_point_contract() -> None:
    spec = full_spec()
    proc = ch.trainer_process(spec, OWNER, attempt=1)
    assert proc.command == [
        "stable-layers", "train", "/etc/stable-layers/run.yaml", "--out", "s3://stable-layers-runs/qil-flowgrpo",
        "--resume", "--nproc-per-node", "8", "--metrics-port", "9400",
    ]  # fmt: skip
    secrets = {
        "s3-credentials": {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"},
        "hf-token": {"HF_TOKEN": "hf_x"},
    }
    for index in (0, 1):
        env = ch.resolve_env(proc.env, completion_index=index, secrets=secrets)
        assert env["NODE_RANK"] == str(index) and env["NNODES"] == "2"
        assert env["MASTER_ADDR"] == "demo-trainer-1-0.demo-trainer" and env["MASTER_PORT"] == "29500"
        assert env["AWS_ACCESS_KEY_ID"] == "AK" and env["AWS_SECRET_ACCESS_KEY"] == "SK"
        assert env["HF_TOKEN"] == "hf_x" and env["HF_HOME"] == "/var/cache/stable-layers/huggingface"
    # Keys come from the Secret, never inline.
    assert all("value" not in v for v in proc.env if v["name"].startswith("AWS_SECRET"))
    tiny = parse_run(example("run-tiny.yaml")["spec"])
    tiny_env = ch.resolve_env(
        ch.trainer_process(tiny, OWNER, 0).env,
        completion_index=0,
        secrets={"minio-credentials": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}},
    )
    assert tiny_env["AWS_ENDPOINT_URL"] == "http://minio.minio.svc:9000"
    assert ch.trainer_process(tiny, OWNER, 0).command[7] == "1"


def test_pods_run_file_points_at_the_judge_and_the_runs_storage() -> None:
    spec = full_spec()
    cm = ch.config_map(spec, OWNER)
    run = RunSpec.model_validate(yaml.safe_load(cm["data"]["run.yaml"]))
    assert run.reward.openai.base_url == "http://demo-judge.ml.svc:8000/v1"
    assert run.reward.openai.model == "judge"
    assert run.checkpoint.uri == "s3://stable-layers-runs/qil-flowgrpo"
    assert run.distributed.zero_stage == 2 and run.eval.every_steps == 100
    assert run.grpo.group_size == spec.run.grpo.group_size


def test_judge_deployment_shape() -> None:
    spec = full_spec()
    dep = jd.judge_deployment(spec, OWNER)
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "Recreate"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "vllm/vllm-openai:v0.33.0"
    args = c["args"]
    assert args[0] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert args[args.index("--served-model-name") + 1] == "judge"
    assert json.loads(args[args.index("--limit-mm-per-prompt") + 1]) == {"image": 4}
    assert args[args.index("--tensor-parallel-size") + 1] == "1" and args[args.index("--port") + 1] == "8000"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": 8000}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in dep["spec"]["template"]["spec"]["volumes"])
    assert jd.judge_service(spec, OWNER)["spec"]["ports"][0]["port"] == 8000
    assert not ch.judge_needed(parse_run(example("run-tiny.yaml")["spec"]))


def test_eval_job_command() -> None:
    job = ev.eval_job(full_spec(), OWNER, 100)
    assert job["metadata"]["name"] == "demo-eval-000100"
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == [
        "stable-layers", "eval", "/etc/stable-layers/run.yaml", "--data", "crello:/data/crello",
        "--out", "s3://stable-layers-runs/qil-flowgrpo/eval/step-000100",
        "--checkpoint", "s3://stable-layers-runs/qil-flowgrpo/checkpoints/step-000100",
    ]  # fmt: skip
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_conditions_move_transition_time_only_on_status_change() -> None:
    later = NOW + timedelta(minutes=5)
    conds = set_condition([], "Training", True, "Running", "a", NOW)
    same = set_condition(conds, "Training", True, "Running", "b", later)
    flipped = set_condition(same, "Training", False, "Completed", "c", later)
    assert same[0]["lastTransitionTime"] == conds[0]["lastTransitionTime"] and same[0]["message"] == "b"
    assert flipped[0]["lastTransitionTime"] != conds[0]["lastTransitionTime"]


# ---------------------------------------------------------------- reconcile against a fake cluster


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.patched: list[str] = []

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def create(self, obj: dict[str, Any]) -> bool:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            return False
        self.objects[key] = obj
        self.created.append(f"{key[0]}/{key[1]}")
        return True

    def replace_data(self, obj: dict[str, Any]) -> None:
        self.objects[(obj["kind"], obj["metadata"]["name"])]["data"] = obj["data"]

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.patched.append(f"{kind}/{name}")

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.deleted.append(f"{kind}/{name}")
        return self.objects.pop((kind, name), None) is not None

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        return {}

    def delete_run(self, namespace: str, name: str) -> None:
        self.deleted.append(f"run/{name}")

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    def fail(self, name: str) -> None:
        self.objects[("Job", name)]["status"] = {
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
        }


class FakeStore:
    progress: dict[str, Any] | None = None


def run_body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo", "namespace": "ml", "uid": "1234", "generation": 2},
        "spec": spec,
        "status": status or {},
    }


def reconcile(cluster: FakeCluster, spec: dict[str, Any], status: dict[str, Any] | None, now: datetime = NOW) -> Any:
    from stable_layers_operator import progress

    orig = progress.read_progress
    progress.read_progress = lambda store: store.progress  # type: ignore[assignment]
    try:
        out = Reconciler(run_body(spec, status), cluster, now=now, open_store=lambda *a: FakeStore()).reconcile()
    finally:
        progress.read_progress = orig  # type: ignore[assignment]
    StableLayersRunStatus.model_validate(out.status)  # whatever we write fits the CRD's status schema
    return out


PIXEL = {"storage": {"uri": "s3://bucket/demo"}, "backoffLimit": 1}


def test_invalid_spec_fails_without_children() -> None:
    cluster = FakeCluster()
    out = reconcile(cluster, {"storage": {"uri": "s3://bucket/x"}, "run": {"grpo": {"groupSize": 1}}}, None)
    assert out.status["phase"] == "Failed" and not cluster.created
    failed = next(c for c in out.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.run.grpo.groupSize" in failed["message"]
    assert out.status["observedGeneration"] == 2


def test_reconcile_twice_creates_nothing_twice_and_lost_restart_is_adopted() -> None:
    cluster = FakeCluster()
    first = reconcile(cluster, PIXEL, None)
    again = reconcile(cluster, PIXEL, first.status)
    assert sorted(cluster.created) == ["ConfigMap/demo-config", "Job/demo-trainer-0", "Service/demo-trainer"]
    assert again.status == first.status and again.actions == []
    cluster.fail("demo-trainer-0")
    restarted = reconcile(cluster, PIXEL, first.status)
    assert restarted.status["attempt"] == 1 and restarted.status["restarts"] == 1
    # The status patch of that pass is lost (operator crash): the old status sees the failed Job
    # again but adopts the restart instead of creating another Job or counting twice.
    replay = reconcile(cluster, PIXEL, first.status)
    assert [c for c in cluster.created if c.startswith("Job/")] == ["Job/demo-trainer-0", "Job/demo-trainer-1"]
    assert replay.status["attempt"] == 1 and replay.status["restarts"] == 1


def test_terminal_run_never_recreates_children_and_honours_ttl() -> None:
    cluster = FakeCluster()
    spec = {**PIXEL, "backoffLimit": 0, "ttlSecondsAfterFinished": 60}
    status = reconcile(cluster, spec, None).status
    cluster.fail("demo-trainer-0")
    failed = reconcile(cluster, spec, status)
    assert failed.status["phase"] == "Failed" and "backoffLimit 0" in failed.status["message"]
    cluster.objects.clear()
    cluster.created.clear()
    later = reconcile(cluster, spec, failed.status, now=NOW + timedelta(seconds=30))
    assert cluster.created == [] and later.wait and not later.delete_run
    gone = reconcile(cluster, spec, failed.status, now=NOW + timedelta(seconds=61))
    assert gone.delete_run and cluster.created == []


def test_deadline_fails_the_run_and_stops_the_trainer() -> None:
    cluster = FakeCluster()
    spec = {**PIXEL, "activeDeadlineSeconds": 100}
    status = reconcile(cluster, spec, None).status
    out = reconcile(cluster, spec, status, now=NOW + timedelta(seconds=101))
    assert out.status["phase"] == "Failed" and "Job/demo-trainer-0" in cluster.deleted
    assert next(c for c in out.status["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"


def test_headline_numbers_from_an_eval_report() -> None:
    from stable_layers_operator.progress import headline

    level = {"rgb_l1": 0.2, "alpha_iou": 0.7, "cost": 1.0, "avg_edits": 0.0, "reached": 3, "count": 3}
    report = {
        "format": 1,
        "summary": {
            "models": {
                "base": {"layerd": [{**level, "k": 0}], "metrics": {"blank_layer_rate": 0.5}},
                "finetuned": {
                    "layerd": [{**level, "k": 0}, {**level, "k": 1}, {**level, "k": 5, "rgb_l1": 0.1}],
                    "metrics": {"designs": 3, "blank_layer_rate": 0.25, "recon_psnr": 30.5, "per_layer_by_L": {}},
                },
            }
        },
    }
    assert headline(report) == {
        "rgbL1K0": 0.2, "alphaIouK0": 0.7, "rgbL1K5": 0.1, "alphaIouK5": 0.7, "blankLayerRate": 0.25, "reconPsnr": 30.5,
    }  # fmt: skip
    assert headline({"headline": {"x": 1, "nan": float("nan"), "s": "no"}}) == {"x": 1.0}
    assert headline({"format": 1}) == {}


def test_a_judge_outage_shows_in_status_and_judge_unavailable_ends_the_run_unrestarted() -> None:
    """The trainer's own verdict counts: it waited `unavailableSeconds` already, so its failure
    ends the run with its reason instead of restarting into the same wait (issue 16, item 6)."""
    cluster = FakeCluster()
    spec = {**PIXEL, "backoffLimit": 3}
    status = reconcile(cluster, spec, None).status
    waiting = "waiting for the judge: every request of group 'img-1' failed (connection refused); retry in 8 s"
    FakeStore.progress = {"phase": "Running", "step": 2, "reason": "WaitingForJudge", "message": waiting}
    try:
        shown = reconcile(cluster, spec, status)
        assert shown.status["phase"] == "Training" and shown.status["message"] == waiting
        FakeStore.progress = {
            "phase": "Failed",
            "step": 2,
            "reason": "JudgeUnavailable",
            "message": "JudgeUnavailable: the judge at http://j:8000/v1 was unreachable or failing for 600 s",
        }
        cluster.fail("demo-trainer-0")
        failed = reconcile(cluster, spec, shown.status)
    finally:
        FakeStore.progress = None
    assert failed.status["phase"] == "Failed" and failed.status["restarts"] == 0
    cond = next(c for c in failed.status["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "JudgeUnavailable" and "600 s" in cond["message"]
    assert [c for c in cluster.created if c.startswith("Job/")] == ["Job/demo-trainer-0"]
