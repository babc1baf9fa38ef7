"""One level-based reconcile pass of a StableLayersRun: observe children and S3, act, return status.

The pass is idempotent: it derives everything from the run's spec, its status, the children that
exist (deterministic names) and the progress record in S3, so running it twice, or after an
operator restart, creates nothing twice. It is synchronous (the handlers run it in a thread) and
has no kopf dependency: waiting is reported in `Outcome.wait` and in the status message.
"""

from __future__ import annotations

import logging
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
    ownership,
    parse_time,
    ready_replicas,
    rfc3339,
    run_pod_problems,
)
from stable_layers_operator.kube import ApiError
from stable_layers_operator.passbase import CONFLICT_GRACE_SECONDS, Outcome, PassBase, Stop, StoreOpener
from stable_layers_operator.resource import KIND, parse_run

__all__ = ["CONFLICT_GRACE_SECONDS", "Outcome", "Reconciler", "StoreOpener"]
log = logging.getLogger(__name__)

FINAL_TRAINER_REASONS = ("JudgeUnavailable", "NoLearningSignal")
"""Reasons in a Failed progress record that end the run instead of restarting the trainer: it has
already waited `reward.openai.unavailableSeconds` for the judge, or none of its steps could learn."""
JUDGE_WAIT_REASON = "WaitingForJudge"
"""The reason of a Running progress record while the trainer waits for an unreachable judge."""


class Reconciler(PassBase):
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
        resumed = suspended is not None and suspended["status"] == "True"
        if suspended is None or resumed:
            self._cond("Suspended", False, "Resumed" if suspended else "NotSuspended")
        if resumed or not self.st.get("lastProgressTime"):
            self.st["lastProgressTime"] = rfc3339(self.now)
        try:
            outcome = self._active()
        except Stop as stop:
            return stop.outcome
        if (get_condition(self.st["conditions"], "ChildConflict") or {}).get("status") == "True":
            self._cond("ChildConflict", False, "Resolved", "every child name belongs to this run")
        return outcome

    def _active(self) -> Outcome:
        self._ensure_config()
        store = self._store()
        if store is not None:
            self._read_progress(store)
        if not self._judge():
            self.st["phase"] = "Starting"
            self._pods()
            return self._progress_deadline() or self._outcome(wait=self.st["message"], delay=self.poll)
        training = self._trainer(store)
        if training == "Failed":
            return self._terminal()
        if training == "Running":
            self._pods()
            stalled = self._progress_deadline()
            if stalled is not None:
                return stalled
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
        except ApiError as err:
            ref = self.spec.storage.secret_ref
            hint = (
                " (grant the operator `get` on Secrets in this namespace: docs/operator.md, RBAC)"
                if err.status == 403
                else ""
            )
            self.st["message"] = f"cannot read Secret {ref.name if ref else '?'}: {err}{hint}"
            return None

    def _ensure_config(self) -> None:
        desired = ch.config_map(self.spec, self.owner)
        current = self._get("ConfigMap", desired["metadata"]["name"])
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
        if record.get("step") is not None and record.get("step") != self.st.get("step"):
            self.st["lastProgressTime"] = rfc3339(self.now)
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
        self.trainer_record = record

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
        job = self._get("Job", name)
        state = job_state(job)
        if state == "Absent" and self.st.get("trainerPhase") == "Succeeded" and self.st.get("trainingComplete"):
            return "Complete"
        if state == "Failed" and self.st.get("trainerPhase") == "Succeeded":
            state = "Complete"  # the pods finished the work and then failed on the way out
        record = getattr(self, "trainer_record", None) or {}
        if state == "Failed" and record.get("phase") == "Failed" and record.get("reason") in FINAL_TRAINER_REASONS:
            # The trainer already waited as long as the spec allows; a restart would only wait again.
            return self._fail_trainer(str(record.get("message") or record["reason"]), reason=record["reason"])
        if state == "Failed":
            # A drained, preempted or reclaimed pod is not the trainer's failure: restart uncounted.
            disrupted = wl.job_disrupted(job)
            nxt = self.names.trainer_job(attempt + 1)
            restarts = int(self.st["restarts"]) + (0 if disrupted else 1)
            # If the next Job exists, an earlier pass restarted already and lost its status patch
            # (operator restart): adopt it instead of creating a duplicate.
            if not disrupted and self._get("Job", nxt) is None and restarts > self.spec.backoff_limit:
                why = job_failure_message(job)
                return self._fail_trainer(
                    f"trainer Job {name} failed ({why}) and backoffLimit {self.spec.backoff_limit} is used up"
                )
            self.st["restarts"] = restarts
            if disrupted:
                self.st["disruptions"] = int(self.st.get("disruptions") or 0) + 1
            self.st["attempt"] = attempt = attempt + 1
            self.st["lastProgressTime"] = rfc3339(self.now)
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
            job = self._create(ch.trainer_job(self.spec, self.owner, attempt))
            state = job_state(job)
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
        if record.get("phase") == "Running" and record.get("reason") == JUDGE_WAIT_REASON and record.get("message"):
            self.st["message"] = str(record["message"])  # the trainer waits for an unreachable judge
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

    def _pods(self) -> None:
        """Condition PodsReady from the run's pods, the trainer Job and the judge Deployment: a pod
        that cannot be scheduled, whose container waits, or that cannot even be created shows here."""
        pods = self.cluster.pods(self.owner.namespace, f"{ch.RUN_LABEL}={self.owner.name}")
        job = self.st["children"].get("trainerJob")
        trainer = self.cluster.get("Job", self.owner.namespace, job) if job else None
        judge = (
            self.cluster.get("Deployment", self.owner.namespace, self.names.judge)
            if ch.judge_needed(self.spec)
            else None
        )
        problems = run_pod_problems(pods, trainer, judge, self.now)
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            self._cond("PodsReady", False, problems[0][0], "; ".join(m for _, m in problems[:5]) + more)
        elif pods:
            self._cond("PodsReady", True, "Running", f"{len(pods)} pod(s) running")

    def _progress_deadline(self) -> Outcome | None:
        deadline = self.spec.progress_deadline_seconds
        since = parse_time(self.st.get("lastProgressTime"))
        if deadline is None or since is None or (self.now - since).total_seconds() <= deadline:
            return None
        step = self.st.get("step")
        pods = get_condition(self.st["conditions"], "PodsReady")
        why = f"; {pods['message']}" if pods and pods["status"] == "False" else ""
        return self._finish(
            "Failed",
            "ProgressDeadlineExceeded",
            f"no new step for {deadline} s (progressDeadlineSeconds; last step {step}){why}",
        )

    def _fail_trainer(self, message: str, reason: str = "BackoffLimitExceeded") -> str:
        self.st["phase"] = "Failed"
        self.st["message"] = message
        self.st["completionTime"] = self.st.get("completionTime") or rfc3339(self.now)
        self._cond("Training", False, reason, message)
        self._cond("Failed", True, reason, message)
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
            job = self._get("Job", entry["job"])
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
        current = self.cluster.get("Job", self.owner.namespace, job) if job else None
        owned = current is not None and ownership(current, KIND, self.owner.name, self.owner.uid) == "Owned"
        if job and owned and job_state(current) == "Running":
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
