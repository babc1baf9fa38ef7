"""Pure helpers for status conditions and for reading child object state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

CONDITION_TYPES = (
    "ChildRejected",
    "ChildConflict",
    "PodsReady",
    "JudgeReady",
    "Training",
    "Evaluating",
    "Suspended",
    "Succeeded",
    "Failed",
)
STUCK_REASONS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
)
"""Container waiting reasons that do not clear by themselves."""
TERMINAL = ("Succeeded", "Failed")


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: bool | str, reason: str, message: str, now: datetime
) -> list[dict[str, Any]]:
    """A new list with condition `type_` set. `lastTransitionTime` only moves when the status
    flips (the Kubernetes convention), so re-running a reconcile changes nothing."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(cond)
            continue
        found = True
        when = cond.get("lastTransitionTime") if cond.get("status") == value else rfc3339(now)
        out.append({"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": when})
    if not found:
        out.append(
            {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": rfc3339(now)}
        )
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c["type"], len(order)))


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def job_state(job: dict[str, Any] | None) -> str:
    """`Absent`, `Running`, `Complete` or `Failed` from a Job's status conditions (SuccessCriteriaMet
    and FailureTarget are the earlier signals Kubernetes ≥ 1.31 posts before the final ones)."""
    if job is None:
        return "Absent"
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Complete"
        if cond.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    return "Running"


def job_failure_message(job: dict[str, Any] | None) -> str:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Failed", "FailureTarget") and cond.get("status") == "True":
            return f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip().rstrip(":")
    return "the Job failed"


def ready_replicas(deployment: dict[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def ownership(obj: dict[str, Any], kind: str, name: str, uid: str) -> str:
    """`Owned` when the controller ownerReference is run `name` with `uid`; `Leftover` when it is a
    run of the same name with another uid (a deleted run's child, awaiting garbage collection);
    else `Foreign`. An empty `uid` (a body without one) matches any run of that name."""
    controller = next(
        (r for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if r.get("controller")), None
    )
    if controller is None or controller.get("kind") != kind or controller.get("name") != name:
        return "Foreign"
    if not uid or controller.get("uid") == uid:
        return "Owned"
    return "Leftover"


def age(created: str | None, now: datetime) -> str:
    """` for 3m`-style age, coarse on purpose: the message lands in status, and a text that changed
    every poll would rewrite the status every poll (under a minute, per minute up to 10 m, per
    10 minutes up to 2 h, then per hour)."""
    start = parse_time(created)
    if start is None:
        return ""
    minutes = max(0, int((now - start).total_seconds())) // 60
    if minutes < 1:
        return " for <1m"
    if minutes < 10:
        return f" for {minutes}m"
    if minutes < 120:
        return f" for {minutes // 10 * 10}m"
    return f" for {minutes // 60}h"


def pod_problems(pods: list[dict[str, Any]], now: datetime) -> list[tuple[str, str]]:
    """(reason, message) per pod that is not running as it should: unschedulable, a container
    waiting (ImagePullBackOff, CrashLoopBackOff, ContainerCreating, ...), or still Pending."""
    out = []
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        name, since = meta.get("name", "?"), age(meta.get("creationTimestamp"), now)
        sched = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
        if sched is not None and sched.get("status") == "False":
            reason = sched.get("reason") or "Unschedulable"
            out.append((reason, f"pod {name} {reason}{since}: {sched.get('message', '')}".rstrip(": ")))
            continue
        statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        waiting = [(c.get("name", "?"), (c.get("state") or {}).get("waiting")) for c in statuses]
        waiting = [(c, w) for c, w in waiting if w]
        if waiting:
            stuck = [(c, w) for c, w in waiting if w.get("reason") in STUCK_REASONS] or waiting
            container, w = stuck[0]
            reason = w.get("reason") or "Waiting"
            detail = f": {w['message']}" if w.get("message") else ""
            out.append((reason, f"pod {name} container {container} {reason}{since}{detail}"))
        elif status.get("phase") == "Pending":
            out.append(("Pending", f"pod {name} Pending{since}"))
    return out


NO_POD_GRACE_SECONDS = 60
"""A trainer Job without any pod for this long: its controller cannot create them."""


def run_pod_problems(
    pods: list[dict[str, Any]], trainer: dict[str, Any] | None, judge: dict[str, Any] | None, now: datetime
) -> list[tuple[str, str]]:
    """`pod_problems`, plus the judge Deployment's ReplicaFailure and a running trainer Job that has
    had no pod for `NO_POD_GRACE_SECONDS` (FailedCreate: quota, pod security)."""
    problems = pod_problems(pods, now)
    for cond in ((judge or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            problems.insert(0, (cond.get("reason") or "FailedCreate", f"judge: {cond.get('message', '')}"))
    meta = (trainer or {}).get("metadata") or {}
    created = parse_time(meta.get("creationTimestamp"))
    has_pods = any(
        ((p.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") == "trainer" for p in pods
    )
    waited = (now - created).total_seconds() if created is not None else 0.0
    if waited > NO_POD_GRACE_SECONDS and not has_pods and job_state(trainer) == "Running":
        name = meta.get("name", "?")
        since = age(meta.get("creationTimestamp"), now)
        problems.append((
            "NoPods",
            f"Job {name} has had no pods{since}: the Job controller cannot create them (quota, pod security?); "
            f"see kubectl describe job {name}",
        ))  # fmt: skip
    return problems
