"""Install manifests of the operator itself: RBAC (the one source of truth for permissions, also
consumed by the Helm chart) and the operator Deployment. Written to `manifests/` by
`scripts/generate_manifests.py`; a test fails when the checked-in files drift.
"""

from __future__ import annotations

from typing import Any

from stable_layers_operator import __version__
from stable_layers_operator.resource import GROUP, PLURAL

NAME = "stable-layers-operator"
NAMESPACE = "stable-layers-system"
IMAGE = f"ghcr.io/stable-layers/operator:{__version__}"
METRICS_PORT = 9090
LIVENESS_PORT = 8080

RBAC_RULES: list[dict[str, Any]] = [
    # Watch runs; patch for kopf's annotations and finalizer; delete for ttlSecondsAfterFinished.
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
    # Admission (OwnerReferencesPermissionEnforcement, on by default in OpenShift) lets a child
    # carry blockOwnerDeletion only for a client that may update its owner's finalizers.
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
    # Children are watched (kopf indexes) instead of read every poll; a GET follows a 409.
    # The run file is patched when mutable spec fields change.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "patch"]},
    # Judge Service and the trainer's headless Service; deleted on suspend and when a run ends.
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "create", "delete"]},
    # The run's pods, watched to show why they do not start (PodsReady).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    # kopf reports handler errors as events on the run.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # The judge; patched when its spec changes.
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
]
"""Least privilege: exactly the verbs `kube.KubeCluster` and kopf use (a test checks both ways)."""

SECRET_RULES: list[dict[str, Any]] = [
    # Only to read a run's S3 keys (spec.storage.secretRef): granted per namespace (a RoleBinding
    # to this ClusterRole, or the chart's Roles), never cluster-wide.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]
SECRETS_ROLE = f"{NAME}-secrets"

_LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "stable-layers"}


def rbac(namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": namespace, "labels": _LABELS},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NAME, "labels": _LABELS},
            "rules": RBAC_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME, "labels": _LABELS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": SECRETS_ROLE, "labels": {**_LABELS, "stablelayers.io/rbac": "secrets"}},
            "rules": SECRET_RULES,
        },
    ]


def operator_deployment(namespace: str = NAMESPACE, image: str = IMAGE) -> dict[str, Any]:
    """One replica with the Recreate strategy: kopf runs `--standalone`, and two operators handling
    the same runs would race (shared/docs/infra.md §G)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": namespace, "labels": _LABELS},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {
                    "labels": _LABELS,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)},
                },
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "operator",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["stable-layers-operator"],
                            "args": [
                                "--metrics-port",
                                str(METRICS_PORT),
                                "--liveness",
                                f"http://0.0.0.0:{LIVENESS_PORT}/healthz",
                            ],
                            "ports": [
                                {"name": "metrics", "containerPort": METRICS_PORT},
                                {"name": "healthz", "containerPort": LIVENESS_PORT},
                            ],
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": LIVENESS_PORT},
                                "initialDelaySeconds": 10,
                                "periodSeconds": 30,
                                "timeoutSeconds": 10,
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "256Mi"},
                                "limits": {"memory": "1Gi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "runAsUser": 65532,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


def namespace_object(namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": _LABELS}}


def kustomization() -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [
            "namespace.yaml",
            "crd/stablelayersruns.stablelayers.io.yaml",
            "rbac/rbac.yaml",
            "operator/deployment.yaml",
        ],
    }
