"""One level-based reconcile pass of a StableLayersRun: observe children and S3, act, return status.

The pass is idempotent: it derives everything from the run's spec, its status, the children that
exist (deterministic names) and the progress record in S3, so running it twice, or after an
operator restart, creates nothing twice. It is synchronous (the handlers run it in a thread) and
has no kopf dependency: waiting is reported in `Outcome.wait`, which the timer turns into
`kopf.TemporaryError`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stable_layers.storage import StorageError, Store
from stable_layers_operator import children as ch
from stable_layers_operator import evaluation as ev
from stable_layers_operator import judge as jd
from stable_layers_operator import progress as pr
from stable_layers_operator import workload as wl
from stable_layers_operator.conditions import (
    TERMINAL,
    get_condition,
    job_failure_message,
    job_state,
    parse_time,
    ready_replicas,
    rfc3339,
    set_condition,
)
from stable_layers_operator.kube import Cluster
from stable_layers_operator.resource import StableLayersRunSpec, parse_run

log = logging.getLogger(__name__)
StoreOpener = Callable[[StableLayersRunSpec, str, Cluster], Store]


@dataclass
class Outcome:
    status: dict[str, Any]
    wait: str | None = None
    """Set when the run waits on something (judge loading, TTL); the caller retries later."""
    delay: float | None = None
    delete_run: bool = False
    """TTL after finishing has passed: delete the StableLayersRun."""
    actions: list[str] = field(default_factory=list)
    """What this pass changed in the cluster (`created Job x`, ...), for logs and tests."""


class Reconciler:
    def __init__(
        self,
        body: dict[str, Any],
        cluster: Cluster,
        *,
        now: datetime,
        status: dict[str, Any] | None = None,
        open_store: StoreOpener = pr.open_run_store,
        poll_seconds: float = 10.0,
    ):
        meta = body["metadata"]
        self.body = body
        self.cluster = cluster
        self.now = now
        self.owner = ch.Owner.of(body)
        self.names = ch.Names(self.owner.name)
        self.st: dict[str, Any] = copy.deepcopy(status if status is not None else body.get("status") or {})
        self.st.setdefault("conditions", [])
        self.st.setdefault("children", {})
        self.st.setdefault("evaluations", [])
        self.st.setdefault("restarts", 0)
        self.st.setdefault("attempt", 0)
        if meta.get("generation") is not None:
            self.st["observedGeneration"] = meta["generation"]
        self.open_store = open_store
        self.poll = poll_seconds
        self.actions: list[str] = []
        self.spec: StableLayersRunSpec

    # ------------------------------------------------------------ helpers

    def _cond(self, type_: str, status: bool | str, reason: str, message: str = "") -> None:
        self.st["conditions"] = set_condition(self.st["conditions"], type_, status, reason, message, self.now)

    def _create(self, obj: dict[str, Any]) -> None:
        if self.cluster.create(obj):
            self.actions.append(f"created {obj['kind']} {obj['metadata']['name']}")

    def _ensure(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The existing object, or `obj` after creating it (a read first: the timer runs this for
        every run every few seconds, and reads are what an API server serves cheaply)."""
        current = self.cluster.get(obj["kind"], self.owner.namespace, obj["metadata"]["name"])
        if current is not None:
            return current
        self._create(obj)
        return obj

    def _delete(self, kind: str, name: str | None) -> None:
        if name and self.cluster.delete(kind, self.owner.namespace, name):
            self.actions.append(f"deleted {kind} {name}")

    def _outcome(self, wait: str | None = None, delay: float | None = None, delete_run: bool = False) -> Outcome:
        return Outcome(self.st, wait=wait, delay=delay, delete_run=delete_run, actions=self.actions)

    def _finish(self, phase: str, reason: str, message: str) -> Outcome:
        self.st["phase"] = phase
        self.st["message"] = message
        self.st["completionTime"] = self.st.get("completionTime") or rfc3339(self.now)
        self._cond(phase, True, reason, message)
        if get_condition(self.st["conditions"], "Training"):
            self._cond("Training", False, reason, message)
        self._release(failed=phase == "Failed")
        return self._terminal()

    # ------------------------------------------------------------ the pass

    def reconcile(self) -> Outcome:
        try:
            self.spec = parse_run(self.body.get("spec"))
        except ValueError as err:
            if self.st.get("phase") in TERMINAL:
                return self._outcome()
            return self._finish("Failed", "InvalidSpec", str(err))
        if self.st.get("phase") in TERMINAL:
            return self._terminal()
        if self.spec.suspend:
            return self._suspend()
        if not self.st.get("startTime"):
            self.st["startTime"] = rfc3339(self.now)
        deadline = self.spec.active_deadline_seconds
        started = parse_time(self.st["startTime"])
        if deadline is not None and started is not None and (self.now - started).total_seconds() > deadline:
            return self._finish("Failed", "DeadlineExceeded", f"the run exceeded activeDeadlineSeconds ({deadline})")
        suspended = get_condition(self.st["conditions"], "Suspended")
        if suspended is None or suspended["status"] == "True":
            self._cond("Suspended", False, "Resumed" if suspended else "NotSuspended")

        self._ensure_config()
        store = self._store()
        if store is not None:
            self._read_progress(store)
        if not self._judge():
            self.st["phase"] = "Starting"
            return self._outcome(wait=self.st["message"], delay=self.poll)
        training = self._trainer(store)
        if training == "Failed":
            return self._terminal()
        finals_done = self._evaluations(store, training == "Complete")
        if training == "Complete":
            if finals_done:
                evaluating = get_condition(self.st["conditions"], "Evaluating")
                msg = "training finished" + (
                    f"; {evaluating['message']}" if evaluating and evaluating["message"] else ""
                )
                return self._finish("Succeeded", "Completed", msg)
            self.st["phase"] = "Evaluating"
        return self._outcome()

    # ------------------------------------------------------------ stages

    def _store(self) -> Store | None:
        try:
            return self.open_store(self.spec, self.owner.namespace, self.cluster)
        except (LookupError, StorageError, ValueError) as err:
            self.st["message"] = f"cannot open {self.spec.storage.uri}: {err}"
            return None

    def _ensure_config(self) -> None:
        desired = ch.config_map(self.spec, self.owner)
        current = self.cluster.get("ConfigMap", self.owner.namespace, desired["metadata"]["name"])
        if current is None:
            self._create(desired)
        elif current.get("data") != desired["data"]:
            # Mutable fields (learning rate, ...) reach the trainer at its next (re)start.
            self.cluster.replace_data(desired)
            self.actions.append(f"updated ConfigMap {desired['metadata']['name']}")
        self.st["children"]["configMap"] = desired["metadata"]["name"]

    def _read_progress(self, store: Store) -> None:
        try:
            record = pr.read_progress(store)
        except StorageError as err:
            self.st["message"] = f"cannot read progress: {err}"
            return
        if not record:
            return
        for src, dst in (
            ("step", "step"),
            ("maxSteps", "maxSteps"),
            ("loss", "loss"),
            ("updatedAt", "progressUpdatedAt"),
        ):
            if record.get(src) is not None:
                self.st[dst] = record[src]
        reward = {
            "mean": record.get("rewardMean"),
            "std": record.get("rewardStd"),
            "spread": record.get("groupStdMean"),
            "zeroStdRatio": record.get("zeroStdRatio"),
        }
        if any(v is not None for v in reward.values()):
            self.st["reward"] = {k: v for k, v in reward.items() if v is not None}
        last = record.get("lastCheckpoint")
        if isinstance(last, dict) and last.get("step") is not None:
            self.st["lastCheckpoint"] = {"step": int(last["step"]), "uri": str(last.get("uri", ""))}
        self.st["trainerPhase"] = record.get("phase")

    def _judge(self) -> bool:
        """Ensure the judge; False while the trainer must still wait for it."""
        if not ch.judge_needed(self.spec):
            reason = "NotRequired" if self.spec.run.reward.kind != "openai" else "External"
            self._cond(
                "JudgeReady", True, reason, f"reward kind {self.spec.run.reward.kind!r} needs no judge from this run"
            )
            return True
        self._ensure(jd.judge_service(self.spec, self.owner))
        desired = jd.judge_deployment(self.spec, self.owner)
        deployment = self._ensure(desired)
        self._follow_judge_spec(deployment, desired)
        self.st["children"].update(judgeDeployment=self.names.judge, judgeService=self.names.judge)
        ready = ready_replicas(deployment)
        if ready >= 1:
            self._cond("JudgeReady", True, "Ready", f"{ready}/{self.spec.judge.replicas} vLLM replicas ready")
            return True
        msg = f"waiting for the vLLM judge {self.names.judge} to load {self.spec.judge.model} (0/{self.spec.judge.replicas} ready)"
        self._cond("JudgeReady", False, "Loading", msg)
        self.st["message"] = msg
        # A judge restarting mid-run does not stop the trainer: its reward client retries.
        return self.st["children"].get("trainerJob") is not None

    def _follow_judge_spec(self, current: dict[str, Any], desired: dict[str, Any]) -> None:
        """A changed judge spec (replicas, image, args, ...) reaches the live Deployment."""
        patch = jd.judge_patch(current, desired)
        if patch is not None:
            self.cluster.patch("Deployment", self.owner.namespace, desired["metadata"]["name"], patch)
            self.actions.append(f"patched Deployment {desired['metadata']['name']}")

    def _trainer(self, store: Store | None) -> str:
        """Ensure the trainer for the current attempt; `Running`, `Complete` or `Failed`."""
        attempt = int(self.st["attempt"])
        name = self.names.trainer_job(attempt)
        job = self.cluster.get("Job", self.owner.namespace, name)
        state = job_state(job)
        if state == "Absent" and self.st.get("trainerPhase") == "Succeeded" and self.st.get("trainingComplete"):
            return "Complete"
        if state == "Failed" and self.st.get("trainerPhase") == "Succeeded":
            state = "Complete"  # the pods finished the work and then failed on the way out
        if state == "Failed":
            # A drained, preempted or reclaimed pod is not the trainer's failure: restart uncounted.
            disrupted = wl.job_disrupted(job)
            nxt = self.names.trainer_job(attempt + 1)
            restarts = int(self.st["restarts"]) + (0 if disrupted else 1)
            # If the next Job exists, an earlier pass restarted already and lost its status patch
            # (operator restart): adopt it instead of creating a duplicate.
            if (
                not disrupted
                and self.cluster.get("Job", self.owner.namespace, nxt) is None
                and restarts > self.spec.backoff_limit
            ):
                why = job_failure_message(job)
                return self._fail_trainer(
                    f"trainer Job {name} failed ({why}) and backoffLimit {self.spec.backoff_limit} is used up"
                )
            self.st["restarts"] = restarts
            if disrupted:
                self.st["disruptions"] = int(self.st.get("disruptions") or 0) + 1
            self.st["attempt"] = attempt = attempt + 1
            name, job, state = nxt, None, "Absent"
            ckpt = self.st.get("lastCheckpoint")
            where = f"checkpoint step {ckpt['step']}" if ckpt else "the start (no committed checkpoint yet)"
            if disrupted:
                msg = f"restart after pod disruption {self.st['disruptions']} (not counted) from {where}"
                self._cond("Training", True, "Disrupted", msg)
            else:
                msg = f"restart {self.st['restarts']}/{self.spec.backoff_limit} from {where}"
                self._cond("Training", True, "Restarted", msg)
        if state == "Absent":
            self._ensure(ch.trainer_service(self.spec, self.owner))
            job = ch.trainer_job(self.spec, self.owner, attempt)
            self._create(job)
            state = "Running"
        self.st["children"].update(trainerJob=name, trainerService=self.names.trainer_service)
        if state == "Complete":
            self.st["trainingComplete"] = True
            self._cond("Training", False, "Completed", f"trainer Job {name} completed")
            return "Complete"
        if wl.queued(job):
            return self._queued(name)
        training = get_condition(self.st["conditions"], "Training")
        if training is None or training["status"] != "True":
            self._cond("Training", True, "Running", f"trainer Job {name}: {self.spec.trainer.nodes} node(s)")
        self.st["phase"] = "Training"
        step, total = self.st.get("step"), self.st.get("maxSteps")
        self.st["message"] = f"training, step {step}/{total}" if step is not None else f"trainer Job {name} started"
        return "Running"

    def _queued(self, job: str) -> str:
        """The trainer Job is suspended until Kueue admits its whole gang; the operator never
        unsuspends it (Kueue does, and may suspend it again to preempt it)."""
        queue = f"Kueue queue {self.spec.queue_name}" if self.spec.queue_name else "its queue"
        msg = f"trainer Job {job} waits for admission by {queue} ({self.spec.trainer.nodes} node(s) as one gang)"
        self._cond("Training", False, "Queued", msg)
        self.st["phase"] = "Queued"
        self.st["message"] = msg
        return "Running"

    def _fail_trainer(self, message: str) -> str:
        self.st["phase"] = "Failed"
        self.st["message"] = message
        self.st["completionTime"] = self.st.get("completionTime") or rfc3339(self.now)
        self._cond("Training", False, "BackoffLimitExceeded", message)
        self._cond("Failed", True, "BackoffLimitExceeded", message)
        self._release(failed=True)
        return "Failed"

    def _evaluations(self, store: Store | None, training_complete: bool) -> bool:
        """Ensure evaluation Jobs; True when no final evaluation is pending."""
        every, data = ch.evaluation_settings(self.spec)
        if not data:
            self._cond("Evaluating", False, "NoEvaluationData", "no evaluation data configured")
            return True
        evals: list[dict[str, Any]] = self.st["evaluations"]
        by_step = {e["step"]: e for e in evals}
        last = (self.st.get("lastCheckpoint") or {}).get("step")
        if training_complete and store is not None:
            try:
                last = pr.latest_checkpoint(store) or last
            except StorageError as err:
                self.st["message"] = f"cannot list checkpoints: {err}"
                return False
        if training_complete and last is not None:
            if last not in by_step:
                by_step[last] = {"step": last, "job": self.names.eval_job(last), "phase": "Running"}
            by_step[last]["final"] = True
        elif every > 0 and last is not None and last >= every and last // every not in {s // every for s in by_step}:
            by_step[last] = {"step": last, "job": self.names.eval_job(last), "phase": "Running", "final": False}
        for step, entry in sorted(by_step.items()):
            if entry["phase"] != "Running":
                continue
            job = self.cluster.get("Job", self.owner.namespace, entry["job"])
            state = job_state(job)
            if state == "Absent":
                self._create(ev.eval_job(self.spec, self.owner, step))
            elif state == "Failed":
                entry["phase"] = "Failed"
            elif state == "Complete" and store is not None:
                report = pr.read_report(store, step)
                entry["phase"] = "Succeeded"
                if report is not None:
                    entry["report"], entry["metrics"] = report
        self.st["evaluations"] = [by_step[s] for s in sorted(by_step)]
        running = [e for e in self.st["evaluations"] if e["phase"] == "Running"]
        failed = [e for e in self.st["evaluations"] if e["phase"] == "Failed"]
        if running:
            steps = ", ".join(str(e["step"]) for e in running)
            self._cond("Evaluating", True, "EvaluationRunning", f"evaluating checkpoint step(s) {steps}")
        elif failed:
            self._cond("Evaluating", False, "EvaluationFailed", f"evaluation of step {failed[-1]['step']} failed")
        else:
            self._cond("Evaluating", False, "Idle", f"{len(self.st['evaluations'])} evaluation(s) done")
        final = [e for e in self.st["evaluations"] if e.get("final")]
        if training_complete and last is None:
            return True
        return bool(final) and final[-1]["phase"] != "Running"

    def _suspend(self) -> Outcome:
        children = self.st["children"]
        self._delete("Deployment", children.pop("judgeDeployment", None))
        self._delete("Service", children.pop("judgeService", None))
        job = children.pop("trainerJob", None)
        self._delete("Job", job)
        if job is not None and not self.st.get("trainingComplete"):
            # The next trainer is a new Job (a fresh name avoids racing the old one's deletion).
            self.st["attempt"] = int(self.st["attempt"]) + 1
        self._delete("Service", children.pop("trainerService", None))
        for entry in self.st["evaluations"]:
            if entry["phase"] == "Running":
                self._delete("Job", entry["job"])
        self.st["phase"] = "Suspended"
        self.st["message"] = "suspended; set spec.suspend to false to resume from the newest committed checkpoint"
        self._cond("Suspended", True, "Suspended", self.st["message"])
        if get_condition(self.st["conditions"], "Training"):
            self._cond("Training", False, "Suspended", "suspended")
        if get_condition(self.st["conditions"], "JudgeReady"):
            self._cond("JudgeReady", False, "Suspended", "judge removed while suspended")
        return self._outcome()

    def _release(self, failed: bool) -> None:
        """On reaching Succeeded/Failed: free the GPUs. A failed run also stops its trainer and
        evaluations; finished Jobs stay (with their pods' logs) until the run is deleted."""
        children = self.st["children"]
        self._delete("Deployment", children.pop("judgeDeployment", None))
        self._delete("Service", children.pop("judgeService", None))
        if hasattr(self, "spec") and ch.judge_needed(self.spec) and get_condition(self.st["conditions"], "JudgeReady"):
            self._cond("JudgeReady", False, "Finished", "judge removed after the run finished")
        if not failed:
            return
        job = children.get("trainerJob")
        if job and job_state(self.cluster.get("Job", self.owner.namespace, job)) == "Running":
            self._delete("Job", job)
        for entry in self.st["evaluations"]:
            if entry["phase"] == "Running":
                self._delete("Job", entry["job"])
                entry["phase"] = "Failed"

    def _terminal(self) -> Outcome:
        """A finished run never gets children again; it only honours its TTL."""
        ttl = self.spec.ttl_seconds_after_finished if hasattr(self, "spec") else None
        done = parse_time(self.st.get("completionTime"))
        if ttl is not None and done is not None:
            left = ttl - (self.now - done).total_seconds()
            if left <= 0:
                return self._outcome(delete_run=True)
            return self._outcome(wait=f"deleting the run in {left:.0f} s (ttlSecondsAfterFinished)", delay=left)
        return self._outcome()
