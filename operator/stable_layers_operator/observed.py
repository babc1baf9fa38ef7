"""What the operator's watches have seen of a run's children, as a `Cluster` for one pass.

The handlers keep every child and pod labelled with a run (`stablelayers.io/run`) from kopf's
watch events; a pass reads them from here instead of GETting each child every poll. Writes go to
the API server. A create the server answers with 409 (a watch event not seen yet, or an object
that is not ours) reads the live object once, so the pass decides on what really exists.
"""

from __future__ import annotations

from typing import Any

from stable_layers_operator.kube import Cluster, Obj

WATCHED_KINDS = ("ConfigMap", "Service", "Deployment", "Job")
OWN_ANNOTATIONS = "stablelayers.io/"
"""Only the operator's own annotations are kept (the judge's spec hash)."""
_META = ("name", "namespace", "uid", "labels", "ownerReferences", "deletionTimestamp", "creationTimestamp")


def slim(body: Any) -> Obj:
    """The parts of a child or pod a pass reads (kept per object in the operator's memory)."""
    meta = body.get("metadata") or {}
    out: Obj = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _META if meta.get(k) is not None},
        "status": dict(body.get("status") or {}),
    }
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(OWN_ANNOTATIONS)}
    if annotations:
        out["metadata"]["annotations"] = annotations
    if body.get("kind") == "ConfigMap":
        out["data"] = dict(body.get("data") or {})
    elif body.get("kind") == "Deployment":
        # The judge follows its spec: the patch is computed against the live template.
        out["spec"] = dict(body.get("spec") or {})
    elif body.get("kind") == "Job" and (body.get("spec") or {}).get("suspend") is not None:
        out["spec"] = {"suspend": body["spec"]["suspend"]}  # queued for Kueue
    return out


class ObservedCluster:
    """`Cluster` answering reads of watched kinds and pods from a snapshot taken before the pass."""

    def __init__(self, cluster: Cluster, children: dict[tuple[str, str], Obj], pods: list[Obj]):
        self.cluster = cluster
        self.children = children
        self._pods = pods

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        if kind in WATCHED_KINDS:
            return self.children.get((kind, name))
        return self.cluster.get(kind, namespace, name)

    def create(self, obj: Obj) -> bool:
        created = self.cluster.create(obj)
        key = (obj["kind"], obj["metadata"]["name"])
        if created:
            self.children[key] = obj
            return True
        live = self.cluster.get(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if live is None:
            self.children.pop(key, None)
        else:
            self.children[key] = live
        return False

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> None:
        # The watch event brings the patched object; a repeat of this idempotent merge patch
        # before it arrives is harmless.
        self.cluster.patch(kind, namespace, name, patch)

    def replace_data(self, obj: Obj) -> None:
        self.cluster.replace_data(obj)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.children.pop((kind, name), None)
        return self.cluster.delete(kind, namespace, name)

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        return self.cluster.secret(namespace, name)

    def delete_run(self, namespace: str, name: str) -> None:
        self.cluster.delete_run(namespace, name)

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        self.cluster.patch_status(namespace, name, status)

    def pods(self, namespace: str, selector: str) -> list[Obj]:
        return list(self._pods)
