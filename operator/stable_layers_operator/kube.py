"""The few Kubernetes API calls the operator makes, over the official client, as plain dicts.

Every call is idempotent from the caller's view: `create` treats 409 (already exists) as done and
`delete` treats 404 as done, so a reconcile that runs twice — kopf may replay events, the operator
may restart mid-way — converges on the same objects. Every other refusal is raised as `ApiError`
with the server's own message, so the reconcile pass can show it in the run's status. Every call
has a client timeout: a half-open connection must fail a pass, not stall it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from stable_layers_operator.resource import GROUP, PLURAL, VERSION

Obj = dict[str, Any]
OPERATOR_USER_AGENT = "stable-layers-operator"
"""User-Agent of the operator's own requests (audit logs, API priority and fairness)."""
TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds of every API call."""
SECRET_TTL = 60.0
"""Seconds a read Secret is reused: every run's poll opens its store, and a rotated key only has
to reach the operator well before the old one is revoked."""


class ApiError(Exception):
    """The API server refused a request (any status but the 404/409 each call handles)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def permanent(self) -> bool:
        """400/422: the object itself is invalid; retrying the same request cannot succeed."""
        return self.status in (400, 422)


def _api_error(err: ApiException) -> ApiError:
    """The server's Status (`reason` such as Invalid, Forbidden; `message`) when it sent one."""
    message, reason = "", str(err.reason or "Error")
    try:
        body = json.loads(err.body or "{}")
        message = str(body.get("message") or "")
        reason = str(body.get("reason") or reason)
    except (ValueError, AttributeError):
        message = str(err.body or "")[:500]
    return ApiError(int(err.status or 0), reason, message)


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

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        """Merge-patch a run's status subresource."""
        ...

    def pods(self, namespace: str, selector: str) -> list[Obj]:
        """Pods matching a label selector."""
        ...


_PATHS = {
    "ConfigMap": ("core", "config_map"),
    "Service": ("core", "service"),
    "Secret": ("core", "secret"),
    "Pod": ("core", "pod"),
    "Deployment": ("apps", "deployment"),
    "Job": ("batch", "job"),
}


class KubeCluster:
    """`Cluster` over `kubernetes.client` (sync; the handlers call it from a worker thread)."""

    def __init__(self, api_client: client.ApiClient, clock: Callable[[], float] = time.monotonic):
        self.api_client = api_client
        self.clock = clock
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._secrets_lock = threading.Lock()
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
            resp = self._method("read", kind)(name, namespace, _preload_content=False, _request_timeout=TIMEOUT)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _api_error(err) from None
        return json.loads(resp.data)

    def create(self, obj: Obj) -> bool:
        namespace = obj["metadata"]["namespace"]
        try:
            self._method("create", obj["kind"])(namespace, obj, _preload_content=False, _request_timeout=TIMEOUT)
        except ApiException as err:
            if err.status == 409:
                return False
            raise _api_error(err) from None
        return True

    def replace_data(self, obj: Obj) -> None:
        meta = obj["metadata"]
        try:
            self._method("patch", obj["kind"])(
                meta["name"], meta["namespace"], {"data": obj["data"]}, _preload_content=False, _request_timeout=TIMEOUT
            )
        except ApiException as err:
            raise _api_error(err) from None

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> None:
        # A merge patch replaces lists (args, env, volumes) whole and removes keys set to null,
        # which is what following a changed spec needs; a strategic merge would keep stale entries.
        self._method("patch", kind)(
            name, namespace, patch, _content_type="application/merge-patch+json", _preload_content=False
        )

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            # Jobs default to orphaning their pods; Background makes the pods (and their GPUs) go too.
            self._method("delete", kind)(
                name, namespace, propagation_policy="Background", _preload_content=False, _request_timeout=TIMEOUT
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise _api_error(err) from None
        return True

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        now = self.clock()
        with self._secrets_lock:
            cached = self._secrets.get((namespace, name))
            if cached is not None and now - cached[0] < SECRET_TTL:
                return cached[1]
        obj = self.get("Secret", namespace, name)
        if obj is None:
            with self._secrets_lock:
                self._secrets.pop((namespace, name), None)
            raise LookupError(f"Secret {namespace}/{name} (spec.storage.secretRef.name) does not exist")
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data.update(obj.get("stringData") or {})
        with self._secrets_lock:
            self._secrets[(namespace, name)] = (now, data)
        return data

    def forget_secret(self, namespace: str, name: str) -> None:
        """Drop a cached Secret (its keys were refused; the next read goes to the API server)."""
        with self._secrets_lock:
            self._secrets.pop((namespace, name), None)

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            raise _api_error(err) from None

    def pods(self, namespace: str, selector: str) -> list[Obj]:
        try:
            resp = self._apis["core"].list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False, _request_timeout=TIMEOUT
            )
        except ApiException as err:
            raise _api_error(err) from None
        return list(json.loads(resp.data).get("items") or [])

    def delete_run(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
                _preload_content=False,
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            if err.status != 404:
                raise _api_error(err) from None


def api_client_from_environment() -> client.ApiClient:
    """In-cluster config inside a pod, else the local kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.ApiClient()
    api.user_agent = OPERATOR_USER_AGENT
    return api
