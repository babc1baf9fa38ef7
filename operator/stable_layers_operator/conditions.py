"""Pure helpers for status conditions and for reading child object state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

CONDITION_TYPES = ("JudgeReady", "Training", "Evaluating", "Suspended", "Succeeded", "Failed")
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
