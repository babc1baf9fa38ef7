"""`stable-layers-operator render RUN.yaml`: every object the operator would create for a run,
built by the same functions the reconcile pass calls, as one YAML stream ("what will this create?").

A run the operator would refuse (a bad field, a name its Services cannot carry) prints one line per
problem naming the field, and no objects; the exit code is 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from stable_layers_operator import children as ch
from stable_layers_operator import evaluation as ev
from stable_layers_operator import judge as jd
from stable_layers_operator.resource import API_VERSION, KIND, StableLayersRunSpec, check_run_name, parse_run

Obj = dict[str, Any]


class RenderError(ValueError):
    """A run document the operator would refuse; the message names the file and field."""


def load_document(path: Path) -> Obj:
    """The run document at `path`; `-` reads standard input (`kubectl get slr NAME -o yaml | …`)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise RenderError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RenderError(f"{path}: cannot read a YAML document ({err})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("apiVersion") != API_VERSION:
        got = f"{data.get('apiVersion')}/{data.get('kind')}" if isinstance(data, dict) else type(data).__name__
        raise RenderError(f"{path}: expected apiVersion {API_VERSION}, kind {KIND} (got {got})")
    return data


def validate(body: Obj, source: str) -> tuple[ch.Owner, StableLayersRunSpec]:
    meta = body.get("metadata") or {}
    try:
        check_run_name(meta.get("name"))
        spec = parse_run(body.get("spec"))
    except ValueError as err:
        raise RenderError("\n".join(f"{source}: {line}" for line in str(err).splitlines())) from None
    owner = ch.Owner(name=meta["name"], namespace=meta.get("namespace") or "default", uid=meta.get("uid") or "")
    return owner, spec


def default_step(spec: StableLayersRunSpec) -> int | None:
    """The first checkpoint an evaluation Job runs on (None: the run has no evaluation data)."""
    every, data = ch.evaluation_settings(spec)
    if not data:
        return None
    return every if every > 0 else spec.run.grpo.max_steps


def render(body: Obj, *, step: int | None = None, attempt: int = 0, source: str = "run") -> list[Obj]:
    """The children of `body` in creation order: run file, judge, trainer Service and Job, and
    the evaluation Job of `step` (default: the first one the run will create)."""
    owner, spec = validate(body, source)
    objects = [ch.config_map(spec, owner)]
    if ch.judge_needed(spec):
        objects += [jd.judge_service(spec, owner), jd.judge_deployment(spec, owner)]
    objects += [ch.trainer_service(spec, owner), ch.trainer_job(spec, owner, attempt)]
    step = step if step is not None else default_step(spec)
    if step is not None:
        try:
            objects.append(ev.eval_job(spec, owner, step))
        except ValueError as err:
            raise RenderError(f"{source}: --step {step}: {err}") from None
    return objects


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stable-layers-operator render", description=__doc__)
    p.add_argument(
        "run", type=Path, help="a StableLayersRun YAML file (what kubectl apply -f takes), or - for standard input"
    )
    p.add_argument("--step", type=int, default=None, help="render the evaluation Job of this checkpoint step")
    p.add_argument(
        "--attempt",
        type=int,
        default=None,
        help="trainer attempt (the Job is <run>-trainer-<attempt>); default: status.attempt of a live run, else 0",
    )
    p.add_argument("--namespace", default=None, help="namespace of the run (default: metadata.namespace, else default)")
    args = p.parse_args(argv)
    if (args.step is not None and args.step < 1) or (args.attempt is not None and args.attempt < 0):
        print("error: --step must be >= 1 and --attempt >= 0", file=sys.stderr)
        return 2
    try:
        body = load_document(args.run)
        if args.namespace:
            body.setdefault("metadata", {})["namespace"] = args.namespace
        attempt = args.attempt if args.attempt is not None else int((body.get("status") or {}).get("attempt") or 0)
        objects = render(body, step=args.step, attempt=attempt, source=str(args.run))
    except RenderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    warning = ev.unmounted_data(validate(body, str(args.run))[1])
    if warning:
        print(f"warning: {args.run}: {warning}", file=sys.stderr)
    sys.stdout.write(ch.dump(objects))
    return 0
