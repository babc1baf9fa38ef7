"""An emulated cluster for tests and benchmarks: kmock's Kubernetes API over loopback HTTP and the
real kopf engine running this operator's handlers, in a background thread.

kmock is an in-memory API server (shared/docs/infra.md §A): discovery, list/watch/create/patch/
delete, naive JSON merge patches, no garbage collection, no controllers — nothing runs Pods, so
tests play the Job and Deployment controllers by patching their status (`set_job_state`,
`set_ready`) and the kubelet by creating Pods (`create_pod`). Like a real API server (and unlike
bare kmock) every created object gets a uid and a creationTimestamp. `refuse` makes the server
answer matching requests with an error Status without storing anything, as admission, schema
validation, quota or an outage would. Needs the `dev` extra (kmock).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client

from stable_layers_operator.handlers import OperatorConfig, register
from stable_layers_operator.kube import OPERATOR_USER_AGENT, KubeCluster
from stable_layers_operator.resource import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION

_VERBS = {"get", "list", "watch", "patch", "update", "create", "delete"}
_RESOURCES: dict[str, dict[str, Any]] = {
    "v1/namespaces": {"kind": "Namespace", "namespaced": False},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition", "namespaced": False},
    f"{GROUP}/{VERSION}/{PLURAL}": {
        "kind": KIND,
        "singular": SINGULAR,
        "shortnames": set(SHORT_NAMES),
        "namespaced": True,
        "subresources": {"status"},
        "verbs": {"get", "list", "watch", "patch", "update", "create", "delete"},
    },
    "v1/configmaps": {"kind": "ConfigMap", "namespaced": True, "verbs": _VERBS},
    "v1/services": {"kind": "Service", "namespaced": True, "verbs": _VERBS},
    "v1/secrets": {"kind": "Secret", "namespaced": True},
    "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": {"status"}, "verbs": _VERBS},
    "v1/events": {"kind": "Event", "namespaced": True},
    "apps/v1/deployments": {"kind": "Deployment", "namespaced": True, "subresources": {"status"}, "verbs": _VERBS},
    "batch/v1/jobs": {"kind": "Job", "namespaced": True, "subresources": {"status"}, "verbs": _VERBS},
}


@dataclass
class Refusal:
    """Requests `method` whose path ends with `path` are answered `status` with `message`."""

    method: str
    path: str
    status: int
    message: str
    seen: int = 0
    body_contains: str | None = None
    """Only requests whose body contains this text (None: all)."""

    def matches(self, method: str, path: str, body: bytes | None) -> bool:
        if method.upper() != self.method.upper() or not path.endswith(self.path):
            return False
        return self.body_contains is None or self.body_contains.encode() in (body or b"")


_REASONS = {400: "BadRequest", 403: "Forbidden", 409: "AlreadyExists", 422: "Invalid", 429: "TooManyRequests"}


def _non_finite(body: bytes | None) -> bool:
    def refuse(_: str) -> None:
        raise ValueError

    try:
        json.loads(body or b"null")
    except ValueError:
        return False  # not JSON: none of this check's business
    try:
        json.loads(body or b"null", parse_constant=refuse)
    except ValueError:
        return True
    return False


def _emulator(refusals: list[Refusal], history: int | None, tally: list[tuple[str, str, str, str]]) -> Any:
    import aiohttp.web
    import kmock

    class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        async def _handle(self, request: Any) -> Any:
            method = str(getattr(request.method, "value", request.method))
            agent = str(request.headers.get("User-Agent", ""))
            tally.append(
                (agent, method.upper(), str(getattr(request.action, "value", request.action)), request.url.path)
            )
            if history is not None:
                # kmock matches each request against its whole history (O(n) per request): a
                # benchmark's thousands of requests would measure kmock, not the operator.
                del self._requests[:-history]
                for payload in self._payloads:
                    del payload._requests[:-history]
            for rule in list(refusals):
                if rule.matches(method, request.url.path, request.body):
                    rule.seen += 1
                    reason = _REASONS.get(rule.status, "InternalError")
                    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": rule.message}
                    status.update(reason=reason, code=rule.status)
                    return aiohttp.web.json_response(status, status=rule.status)
            if method.upper() in ("POST", "PUT", "PATCH") and _non_finite(request.body):
                # Go's JSON decoder (the real API server's) has no NaN or Infinity.
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400}
                status.update(reason="BadRequest", message="json: cannot unmarshal NaN/Infinity into a number")
                return aiohttp.web.json_response(status, status=400)
            if method.upper() == "POST" and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                meta.setdefault("creationTimestamp", now)
            return await super()._handle(request)

    return Emulator()


class EmulatedCluster:
    """Start with `start()`, stop with `stop()`; `restart_operator()` replaces the kopf operator
    (new memory, same API server) to test resumption."""

    def __init__(self, namespace: str = "default", *, operator: bool = True, history: int | None = None, **config: Any):
        """`history`: requests kmock keeps for matching and `created_names` (None: all); every
        request's (action, path) is in `tally` regardless."""
        self.namespace = namespace
        self.history = history
        self.tally: list[tuple[str, str, str, str]] = []
        """(User-Agent, method, kmock action, path) of every request."""
        self.with_operator = operator
        self.config_kwargs = config
        self.config: OperatorConfig
        self.url = ""
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop_api = threading.Event()
        self._operator_thread: threading.Thread
        self._operator_stop: threading.Event
        self.kmock: Any = None
        self.api: client.ApiClient
        self.error: BaseException | None = None
        self.refusals: list[Refusal] = []

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30) -> EmulatedCluster:
        self._thread = threading.Thread(target=self._api_main, name="kmock-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self.error:
            raise RuntimeError(f"emulated API server did not start: {self.error!r}")
        if self.with_operator:
            self._start_operator()
        return self

    def _api_main(self) -> None:
        try:
            asyncio.run(self._serve_api())
        except BaseException as err:  # surfaced to the test through start()/stop()
            self.error = err
            self._ready.set()

    async def _serve_api(self) -> None:
        import kmock

        async with _emulator(self.refusals, self.history, self.tally) as emulator, kmock.Server(emulator) as server:
            for key, info in _RESOURCES.items():
                emulator.resources[key] = info
            emulator.objects["v1/namespaces", None, self.namespace] = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": self.namespace},
            }
            self.kmock = emulator
            self.url = str(server.url).rstrip("/")
            configuration = client.Configuration()
            configuration.host = self.url
            self.api = client.ApiClient(configuration)
            self._ready.set()
            while not self._stop_api.is_set():
                await asyncio.sleep(0.05)

    def _start_operator(self) -> None:
        # kopf gets its own thread and event loop: on exit it cancels every task of its loop,
        # which would take kmock's server down with it.
        # The operator's own client, with the real operator's User-Agent: its requests are told
        # apart from the test's (`operator_requests`).
        operator_api = client.ApiClient(self.api.configuration)
        operator_api.user_agent = OPERATOR_USER_AGENT
        self.config = OperatorConfig(**{"cluster_factory": lambda: KubeCluster(operator_api), **self.config_kwargs})
        registry = kopf.OperatorRegistry()
        register(registry, self.config)
        url, namespace = self.url, self.namespace

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, default_namespace=namespace)

        stop_flag = threading.Event()

        def run() -> None:
            try:
                asyncio.run(
                    kopf.operator(
                        registry=registry,
                        standalone=True,
                        # kmock cannot serve the namespace list kopf watches for namespace patterns.
                        clusterwide=True,
                        stop_flag=stop_flag,
                        memo=kopf.Memo(cluster=KubeCluster(operator_api)),
                    )
                )
            except BaseException as err:
                self.error = err

        self._operator_stop = stop_flag
        self._operator_thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
        self._operator_thread.start()

    def _stop_operator(self) -> None:
        self._operator_stop.set()
        self._operator_thread.join(timeout=60)

    def restart_operator(self, **config: Any) -> None:
        """Stop the operator (kopf takes a few seconds) and start a fresh one with no memory."""
        self.config_kwargs.update(config)
        self._stop_operator()
        self._start_operator()

    def stop(self) -> None:
        if self.with_operator:
            self._stop_operator()
        self._stop_api.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------ the API, as a user or a controller would

    def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        resp = self.api.call_api(
            path,
            method,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            _preload_content=False,
            auth_settings=[],
        )
        data = resp[0].data if isinstance(resp, tuple) else resp.data
        return json.loads(data) if data else None

    def run_path(self, name: str | None = None) -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"
        return f"{base}/{name}" if name else base

    def create_run(self, name: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "uid": str(uuid.uuid4()),
                "generation": generation,
                "resourceVersion": "1",
            },
            "spec": spec,
        }
        return self._request("POST", self.run_path(), body)

    def get_run(self, name: str) -> dict[str, Any]:
        return self._request("GET", self.run_path(name))

    def patch_run(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", self.run_path(name), patch, "application/merge-patch+json")

    def kubeconfig(self, path: str) -> None:
        """Write a kubeconfig pointing at the emulated API (for an operator in another process)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock"}}],
            "contexts": [
                {"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": self.namespace}}
            ],
            "current-context": "kmock",
        }
        with open(path, "w") as f:
            json.dump(config, f)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return KubeCluster(self.api).get(kind, self.namespace, name)

    def exists(self, kind: str, name: str) -> bool:
        return self.get(kind, name) is not None

    def create_secret(self, name: str, data: dict[str, str]) -> None:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace},
            "data": encoded,
        }
        KubeCluster(self.api).create(obj)

    def _patch_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        paths = {"Job": f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}/status"}
        paths["Deployment"] = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/status"
        self._request("PATCH", paths[kind], {"status": status}, "application/merge-patch+json")

    def set_job_status(self, job: str, status: dict[str, Any]) -> None:
        """Play the Job controller with any status (e.g. a pod failure policy's conditions)."""
        self._patch_status("Job", job, status)

    def unsuspend_job(self, job: str) -> None:
        """Play Kueue admitting a queued Job: `spec.suspend` to false."""
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{job}"
        self._request("PATCH", path, {"spec": {"suspend": False}}, "application/merge-patch+json")

    def set_ready(self, deployment: str, replicas: int = 1) -> None:
        """Play the Deployment controller: `replicas` pods ready."""
        self._patch_status("Deployment", deployment, {"readyReplicas": replicas, "availableReplicas": replicas})

    def set_job_state(self, job: str, state: str, message: str = "") -> None:
        """Play the Job controller: `Complete` or `Failed`."""
        cond = {"type": state, "status": "True", "reason": "BackoffLimitExceeded" if state == "Failed" else "Completed"}
        if message:
            cond["message"] = message
        self._patch_status("Job", job, {"conditions": [cond]})

    def refuse(self, method: str, path: str, status: int, message: str) -> Refusal:
        """Answer `method` requests whose path ends with `path` (e.g. `/stablelayersruns/x/status`,
        `/jobs`) with `status` until `allow` is called."""
        rule = Refusal(method, path, status, message)
        self.refusals.append(rule)
        return rule

    def allow(self, rule: Refusal) -> None:
        self.refusals.remove(rule)

    def create_pod(self, name: str, run: str, component: str, status: dict[str, Any]) -> None:
        """Play the Job controller and kubelet: a pod of `run` with `status`."""
        from stable_layers_operator.children import labels

        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels(run, component)},
            "spec": {"containers": [{"name": component, "image": "x"}]},
            "status": status,
        }
        self._request("POST", f"/api/v1/namespaces/{self.namespace}/pods", obj)

    def operator_requests(self) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], RBAC verb) of every request the operator (its client
        and kopf) made: what its RBAC must grant."""
        out = set()
        for agent, method, action, path in list(self.tally):
            if not (agent.startswith(OPERATOR_USER_AGENT) or agent.startswith("kopf/")):
                continue
            parts = path.strip("/").split("/")
            if parts[0] == "api":
                group, rest = "", parts[2:]
            elif parts[0] == "apis" and len(parts) >= 3:
                group, rest = parts[1], parts[3:]
            else:
                continue  # discovery (/version, /api, /apis): allowed to every authenticated user
            if len(rest) >= 2 and rest[0] == "namespaces":
                rest = rest[2:]
            if not rest:
                continue
            resource = rest[0] + (f"/{rest[2]}" if len(rest) >= 3 else "")
            named = len(rest) >= 2
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method)
            if verb is None:
                verb = "watch" if action == "WATCH" else "get" if named else "list"
            out.add((group, resource, verb))
        return out

    def created_names(self, plural: str) -> list[str]:
        """Names in every create (POST) request for `plural` (e.g. `jobs`) that kmock received,
        in order, duplicates included: what "created exactly once" is asserted on."""
        names = []
        for request in list(self.kmock):
            method = getattr(request.method, "value", request.method)
            if str(method).upper() == "POST" and request.url.path.endswith(f"/{plural}"):
                names.append((request.data or {}).get("metadata", {}).get("name"))
        return names


def wait_for(check: Callable[[], Any], what: str, timeout: float = 45.0, poll: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy (returned) or fail naming `what`. The timeout
    is generous for loaded CI machines; a met condition returns at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")
