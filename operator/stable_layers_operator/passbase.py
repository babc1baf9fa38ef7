"""The part of a reconcile pass that touches children: reads that check ownership, creates whose
refusals become conditions, and the pass' bookkeeping (status copy, conditions, actions).

Children are adopted only when their controller ownerReference carries this run's uid: after
`kubectl delete` and a re-`apply` of the same name, the old run's children may still exist until
garbage collection removes them, and a leftover Complete trainer Job must not finish the new run.
A child the API server refuses shows as condition `ChildRejected` with the server's message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stable_layers.storage import Store
from stable_layers_operator import children as ch
from stable_layers_operator import progress as pr
from stable_layers_operator.conditions import get_condition, ownership, parse_time, set_condition
from stable_layers_operator.kube import ApiError, Cluster
from stable_layers_operator.resource import KIND, StableLayersRunSpec

StoreOpener = Callable[[StableLayersRunSpec, str, Cluster], Store]
CONFLICT_GRACE_SECONDS = 300
"""How long a child name taken by an object that is not this run's may stay taken (garbage
collection of a deleted run's children takes seconds) before the run fails."""


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


class Stop(Exception):
    """Ends the pass early with `outcome` (a child refused or in the way)."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.wait or "")
        self.outcome = outcome


class PassBase:
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

    def _get(self, kind: str, name: str) -> dict[str, Any] | None:
        """This run's child `name`, or None when absent; ends the pass while another object holds
        the name (waiting while it may go away, Failed when it will not)."""
        obj = self.cluster.get(kind, self.owner.namespace, name)
        if obj is None:
            return None
        owner = ownership(obj, KIND, self.owner.name, self.owner.uid)
        if owner == "Owned":
            return obj
        deleting = bool((obj.get("metadata") or {}).get("deletionTimestamp"))
        what = f"{kind} {name} exists but belongs to " + (
            "an earlier run of the same name (another uid)" if owner == "Leftover" else "something else"
        )
        if owner == "Foreign" and not deleting:
            msg = f"{what} and is not being deleted; delete or rename it, or rename this run"
            self._cond("ChildConflict", True, "NameTaken", msg)
            raise Stop(self._finish("Failed", "ChildConflict", msg))
        self._cond("ChildConflict", True, "WaitingForDeletion", f"{what}; waiting until it is deleted")
        since = parse_time(get_condition(self.st["conditions"], "ChildConflict")["lastTransitionTime"])
        if since is not None and (self.now - since).total_seconds() > CONFLICT_GRACE_SECONDS:
            msg = f"{what} and is still there after {CONFLICT_GRACE_SECONDS} s; delete it, or rename this run"
            raise Stop(self._finish("Failed", "ChildConflict", msg))
        self.st["message"] = f"{what}; waiting until it is deleted"
        self.st["phase"] = self.st.get("phase") or "Pending"
        raise Stop(self._outcome(wait=self.st["message"]))

    def _create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create `obj`; the live object when it existed (after the ownership check)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            created = self.cluster.create(obj)
        except ApiError as err:
            msg = f"the API server refused {kind} {name}: {err}"
            reason = "".join(w.capitalize() for w in err.reason.replace("_", " ").split()) or "Refused"
            self._cond("ChildRejected", True, reason, msg)
            if err.permanent:
                raise Stop(self._finish("Failed", "ChildRejected", msg)) from None
            self.st["message"] = f"{msg} (retrying)"
            raise Stop(self._outcome(wait=self.st["message"])) from None
        if (get_condition(self.st["conditions"], "ChildRejected") or {}).get("status") == "True":
            self._cond("ChildRejected", False, "Accepted", f"{kind} {name} accepted")
        if created:
            self.actions.append(f"created {kind} {name}")
            return obj
        return self._get(kind, name) or obj

    def _ensure(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The existing object, or `obj` after creating it (a read first: the timer runs this for
        every run every few seconds, and reads are what an API server serves cheaply)."""
        current = self._get(obj["kind"], obj["metadata"]["name"])
        if current is not None:
            return current
        return self._create(obj)

    def _delete(self, kind: str, name: str | None) -> None:
        if name and self.cluster.delete(kind, self.owner.namespace, name):
            self.actions.append(f"deleted {kind} {name}")

    def _outcome(self, wait: str | None = None, delay: float | None = None, delete_run: bool = False) -> Outcome:
        return Outcome(self.st, wait=wait, delay=delay, delete_run=delete_run, actions=self.actions)

    def _finish(self, phase: str, reason: str, message: str) -> Outcome:
        raise NotImplementedError
