"""The few Kubernetes API calls the operator makes, over the official client, as plain dicts.

Every call is idempotent from the caller's view: `create` treats 409 (already exists) as done and
`delete` treats 404 as done, so a reconcile that runs twice — kopf may replay events, the operator
may restart mid-way — converges on the same objects.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from stable_layers_operator.resource import GROUP, PLURAL, VERSION

Obj = dict[str, Any]


class Cluster(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> Obj | None: ...

    def create(self, obj: Obj) -> bool:
        """Create; False if it already existed."""
        ...

    def replace_data(self, obj: Obj) -> None:
        """Merge-patch a ConfigMap's data."""
        ...

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete (children with Background propagation); False if it was absent."""
        ...

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> None:
        """JSON merge patch (RFC 7386) of an object."""
        ...

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        """Decoded data of a Secret."""
        ...

    def delete_run(self, namespace: str, name: str) -> None: ...


_PATHS = {
    "ConfigMap": ("core", "config_map"),
    "Service": ("core", "service"),
    "Secret": ("core", "secret"),
    "Deployment": ("apps", "deployment"),
    "Job": ("batch", "job"),
}


class KubeCluster:
    """`Cluster` over `kubernetes.client` (sync; the handlers call it from a worker thread)."""

    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client
        self._apis = {
            "core": client.CoreV1Api(api_client),
            "apps": client.AppsV1Api(api_client),
            "batch": client.BatchV1Api(api_client),
        }
        self.custom = client.CustomObjectsApi(api_client)

    def _method(self, verb: str, kind: str) -> Any:
        if kind not in _PATHS:
            raise ValueError(f"unsupported kind {kind!r}")
        api, noun = _PATHS[kind]
        return getattr(self._apis[api], f"{verb}_namespaced_{noun}")

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            resp = self._method("read", kind)(name, namespace, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def create(self, obj: Obj) -> bool:
        namespace = obj["metadata"]["namespace"]
        try:
            self._method("create", obj["kind"])(namespace, obj, _preload_content=False)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def replace_data(self, obj: Obj) -> None:
        meta = obj["metadata"]
        self._method("patch", obj["kind"])(
            meta["name"], meta["namespace"], {"data": obj["data"]}, _preload_content=False
        )

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> None:
        # A merge patch replaces lists (args, env, volumes) whole and removes keys set to null,
        # which is what following a changed spec needs; a strategic merge would keep stale entries.
        self._method("patch", kind)(
            name, namespace, patch, _content_type="application/merge-patch+json", _preload_content=False
        )

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            # Jobs default to orphaning their pods; Background makes the pods (and their GPUs) go too.
            self._method("delete", kind)(name, namespace, propagation_policy="Background", _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        obj = self.get("Secret", namespace, name)
        if obj is None:
            raise LookupError(f"Secret {namespace}/{name} (spec.storage.secretRef.name) does not exist")
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data.update(obj.get("stringData") or {})
        return data

    def delete_run(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background", _preload_content=False
            )
        except ApiException as err:
            if err.status != 404:
                raise


def api_client_from_environment() -> client.ApiClient:
    """In-cluster config inside a pod, else the local kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
