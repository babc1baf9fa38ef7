"""Entry point of the operator image: `stable-layers-operator` (see `manifests/operator`).

`stable-layers-operator render RUN.yaml` prints the objects a run would get instead (render.py).

Runs kopf standalone (one replica, Recreate strategy: no peering objects needed), with kopf's
liveness endpoint and a Prometheus endpoint for the operator's own metrics.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import kopf

from stable_layers_operator.handlers import OperatorConfig, register
from stable_layers_operator.resource import ImageDefaults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="stable-layers-operator", description=__doc__)
    p.add_argument(
        "--namespace", action="append", default=None, help="watch only these namespaces (repeatable); default all"
    )
    p.add_argument(
        "--interval",
        type=float,
        default=float(env("STABLE_LAYERS_OPERATOR_INTERVAL", "10")),
        help="seconds between polls of a run",
    )
    p.add_argument("--metrics-port", type=int, default=int(env("STABLE_LAYERS_OPERATOR_METRICS_PORT", "9090")))
    p.add_argument("--liveness", default=env("STABLE_LAYERS_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz"))
    p.add_argument(
        "--worker-image",
        default=env("STABLE_LAYERS_WORKER_IMAGE"),
        help="trainer/eval image for runs that name none (default: this release's pinned image)",
    )
    p.add_argument(
        "--judge-image",
        default=env("STABLE_LAYERS_JUDGE_IMAGE"),
        help="vLLM judge image for runs that name none (default: the pinned vLLM release)",
    )
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["render"]:
        from stable_layers_operator.render import main as render_main

        raise SystemExit(render_main(argv[1:]))
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ImageDefaults.configure(worker=args.worker_image, judge=args.judge_image)
    config = OperatorConfig(interval=args.interval, wait_delay=args.interval)
    registry = kopf.OperatorRegistry()
    register(registry, config)

    # kopf's built-in login handlers live on its default registry, not on ours: declare one.
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    config.metrics.serve(args.metrics_port)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
