"""Operator latency and cost against kmock (Kubernetes API over loopback HTTP) and moto S3.

The operator runs as its own process (`python -m stable_layers_operator`, exactly the image's
entry point, with a kubeconfig pointing at kmock) so its CPU and memory are measured alone.

1. Latency: seconds from POSTing a run to all first-phase children existing (pixel reward:
   ConfigMap + headless Service + trainer Job; VLM reward: ConfigMap + judge Deployment + Service).
2. Burst: 50 runs created at once: seconds until every run has its trainer Job and status phase
   Training; the operator's CPU seconds and peak RSS meanwhile.
3. Steady state: operator CPU while polling all runs (progress.json in S3, Job state) every
   `--interval` seconds.
4. `--steady N`: N runs in steady state (all Training, their trainer pods Running) on a fresh
   operator: API requests per run per minute beyond the watches (counted by kmock, by verb),
   operator CPU and RSS.
5. `--secrets N`: N runs, each with its own S3 Secret (distinct credentials), on a fresh operator:
   operator RSS once every run has been polled.

    .venv/bin/python benchmarks/bench_operator.py [--runs 50] [--interval 2]
    .venv/bin/python benchmarks/bench_operator.py --skip-latency --steady 200 --secrets 100 --interval 10
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import psutil

from stable_layers_operator.testing import EmulatedCluster

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench-runs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(endpoint: str, name: str, reward: str = "pixel", secret: str = "s3-keys") -> dict[str, Any]:
    return {
        "run": {"name": name, "model": {"preset": "tiny-random"}, "reward": {"kind": reward}},
        "trainer": {"nodes": 2, "gpusPerNode": 0},
        "storage": {"uri": f"s3://{BUCKET}/{name}", "endpoint": endpoint, "secretRef": {"name": secret}},
    }


def wait_for(check: Any, timeout: float = 120.0, poll: float = 0.01) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if check():
            return time.perf_counter() - start
        time.sleep(poll)
    raise TimeoutError("condition not reached")


def stored(cluster: EmulatedCluster) -> dict[tuple[str, str], dict[str, Any]]:
    """(plural, name) → object, read from kmock's memory: polling 50 runs over HTTP would load the
    same event loop that serves the operator and distort what is measured."""
    while True:
        try:
            items = list(cluster.kmock.objects.items())
            return {(res.plural, name): obj.raw for (res, _, name), obj in items if not obj.deleted}
        except RuntimeError:  # changed during iteration (the API thread is writing)
            continue


class Sampler(threading.Thread):
    """Peak RSS of the operator process, sampled every 50 ms."""

    def __init__(self, proc: psutil.Process):
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = proc, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)


def passes(port: int) -> float:
    """Reconcile passes the operator has finished (its own histogram's count)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("stablelayers_operator_reconcile_seconds_count"):
                return float(line.split()[-1])
    return 0.0


def start_operator(cluster: EmulatedCluster, interval: float, tmp: str, tag: str) -> tuple[subprocess.Popen, Any]:
    kubeconfig = os.path.join(tmp, f"kubeconfig-{tag}")
    cluster.kubeconfig(kubeconfig)
    env = {**os.environ, "KUBECONFIG": kubeconfig, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stable_layers_operator", "--interval", str(interval)]
    port = free_port()
    cmd += ["--metrics-port", str(port), "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]
    log = open(os.path.join(tmp, f"operator-{tag}.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    proc.metrics_port = port  # type: ignore[attr-defined]
    return proc, log


def stop_operator(proc: subprocess.Popen, log: Any) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def api_requests(cluster: EmulatedCluster) -> list[str]:
    """`ACTION plural[/subresource]` of every non-watch request kmock has served so far."""
    out = []
    for _, _, action, path in list(cluster.tally):
        if action == "WATCH":
            continue
        parts = path.strip("/").split("/")
        if action in ("None", "") or len(parts) < 3:
            out.append(f"GET {path}")  # discovery
            continue
        plural = parts[-1] if action in ("LIST", "CREATE") else parts[-2]
        if parts[-1] == "status" and action == "UPDATE":
            plural = parts[-3] + "/status"
        out.append(f"{action} {plural}")
    return out


def wait_all_polled(cluster: EmulatedCluster, names: list[str], timeout: float) -> float:
    def all_training() -> bool:
        objs = stored(cluster)
        return all(
            (objs.get(("stablelayersruns", n), {}).get("status") or {}).get("phase") == "Training" for n in names
        )

    return wait_for(all_training, timeout=timeout, poll=0.5)


def steady(endpoint: str, keys: dict[str, str], runs: int, interval: float, window: float, tmp: str) -> None:
    """`runs` Training runs on a fresh operator: requests per run per minute, CPU, RSS."""
    cluster = EmulatedCluster(operator=False, history=200).start()
    cluster.create_secret("s3-keys", keys)
    names = [f"steady-{i:03d}" for i in range(runs)]
    operator, log = start_operator(cluster, interval, tmp, "steady")
    proc = psutil.Process(operator.pid)
    try:
        time.sleep(3)
        for name in names:
            cluster.create_run(name, spec(endpoint, name))
        took = wait_all_polled(cluster, names, timeout=900)
        running = {"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]}
        for name in names:  # play the kubelet: a healthy cluster's pods (2 trainer nodes per run)
            for rank in range(2):
                cluster.create_pod(f"{name}-trainer-0-{rank}-x", name, "trainer", running)
        time.sleep(2 * interval)  # settle: every run past its first passes
        before, cpu0, t0 = len(api_requests(cluster)), sum(proc.cpu_times()[:2]), time.perf_counter()
        passes0 = passes(operator.metrics_port)  # type: ignore[attr-defined]
        time.sleep(window)
        seen = api_requests(cluster)[before:]
        done = passes(operator.metrics_port) - passes0  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - t0
        cpu = (sum(proc.cpu_times()[:2]) - cpu0) / elapsed
        rss = proc.memory_info().rss
        by_verb: dict[str, int] = {}
        for item in seen:
            by_verb[item] = by_verb.get(item, 0) + 1
        per = len(seen) / runs / (elapsed / 60)
        print(f"steady state, {runs} runs (all Training after {took:.0f} s), interval {interval:g} s, "
              f"window {elapsed:.0f} s:")  # fmt: skip
        print(f"  reconcile passes: {done / runs / (elapsed / 60):.2f} per run per minute "
              f"(configured: {60 / interval:.1f}); CPU per pass {1000 * cpu * elapsed / max(done, 1):.1f} ms")  # fmt: skip
        print(f"  API requests beyond watches: {len(seen)} = {per:.2f} per run per minute")
        for item, count in sorted(by_verb.items(), key=lambda kv: -kv[1]):
            print(f"    {item}: {count / runs / (elapsed / 60):.2f} per run per minute")
        print(f"  operator CPU {100 * cpu:.1f} % of one core; RSS {rss / 2**20:.0f} MiB")
    finally:
        stop_operator(operator, log)
        cluster.stop()


def secrets(endpoint: str, runs: int, interval: float, tmp: str) -> None:
    """`runs` runs with one distinct S3 Secret each: operator RSS after every run was polled."""
    cluster = EmulatedCluster(operator=False, history=200).start()
    names = [f"sec-{i:03d}" for i in range(runs)]
    for i, name in enumerate(names):
        cluster.create_secret(f"{name}-keys", {"AWS_ACCESS_KEY_ID": f"key{i}", "AWS_SECRET_ACCESS_KEY": f"secret{i}"})
    operator, log = start_operator(cluster, interval, tmp, "secrets")
    proc = psutil.Process(operator.pid)
    sampler = Sampler(proc)
    sampler.start()
    try:
        time.sleep(3)
        base = proc.memory_info().rss
        for name in names:
            cluster.create_run(name, spec(endpoint, name, secret=f"{name}-keys"))
        took = wait_all_polled(cluster, names, timeout=900)
        time.sleep(3 * interval)
        rss = proc.memory_info().rss
        sampler.stop.set()
        print(f"{runs} runs with {runs} distinct S3 Secrets (all Training after {took:.0f} s): operator RSS "
              f"{rss / 2**20:.0f} MiB (peak {sampler.peak / 2**20:.0f} MiB; {base / 2**20:.0f} MiB before any run)")  # fmt: skip
    finally:
        stop_operator(operator, log)
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--single", type=int, default=5, help="sequential single-run latency samples per kind")
    parser.add_argument("--skip-latency", action="store_true", help="skip parts 1-3")
    parser.add_argument("--steady", type=int, default=0, help="runs for the steady-state request count (part 4)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of the steady-state window")
    parser.add_argument("--secrets", type=int, default=0, help="runs with distinct S3 Secrets (part 5)")
    args = parser.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    ).create_bucket(Bucket=BUCKET)

    tmp = tempfile.mkdtemp()
    print("machine: 2-core CPU dev box, shared; operator = separate process; kmock + moto in the bench process")
    try:
        if not args.skip_latency:
            latency(args, endpoint, keys, tmp)
        if args.steady:
            steady(endpoint, keys, args.steady, args.interval, args.window, tmp)
        if args.secrets:
            secrets(endpoint, args.secrets, args.interval, tmp)
    finally:
        moto.stop()


def latency(args: argparse.Namespace, endpoint: str, keys: dict[str, str], tmp: str) -> None:
    cluster = EmulatedCluster(operator=False, history=200).start()
    cluster.create_secret("s3-keys", keys)
    operator, log = start_operator(cluster, args.interval, tmp, "latency")
    proc = psutil.Process(operator.pid)
    try:
        time.sleep(3)  # kopf startup: discovery, initial list/watch
        results: dict[str, Any] = {}
        for reward, children in (("pixel", ["ConfigMap:-config", "Service:-trainer", "Job:-trainer-0"]),
                                 ("openai", ["ConfigMap:-config", "Deployment:-judge", "Service:-judge"])):  # fmt: skip
            samples = []
            for i in range(args.single):
                name = f"lat-{reward}-{i}"
                start = time.perf_counter()
                cluster.create_run(name, spec(endpoint, name, reward))

                def ready(name: str = name, children: list[str] = children) -> bool:
                    return all(cluster.exists(k, name + suffix) for k, suffix in (c.split(":") for c in children))

                wait_for(ready)
                samples.append(time.perf_counter() - start)
            results[reward] = samples

        sampler = Sampler(proc)
        sampler.start()
        cpu0 = sum(proc.cpu_times()[:2])
        start = time.perf_counter()
        names = [f"burst-{i:03d}" for i in range(args.runs)]
        for name in names:
            cluster.create_run(name, spec(endpoint, name))
        created = time.perf_counter() - start
        wait_for(lambda: all(("jobs", f"{n}-trainer-0") in stored(cluster) for n in names), timeout=300, poll=0.1)
        children_done = time.perf_counter() - start

        def all_training() -> bool:
            objs = stored(cluster)
            return all((objs[("stablelayersruns", n)].get("status") or {}).get("phase") == "Training" for n in names)

        wait_for(all_training, timeout=300, poll=0.1)
        burst = time.perf_counter() - start
        burst_cpu = sum(proc.cpu_times()[:2]) - cpu0

        cpu1, t1 = sum(proc.cpu_times()[:2]), time.perf_counter()
        time.sleep(max(10.0, 5 * args.interval))
        steady_cpu = (sum(proc.cpu_times()[:2]) - cpu1) / (time.perf_counter() - t1)
        sampler.stop.set()
        total_runs = args.runs + 2 * args.single

        for reward, samples in results.items():
            print(
                f"create → first-phase children ({reward}): median {statistics.median(samples):.3f} s, "
                f"max {max(samples):.3f} s over {len(samples)} runs"
            )
        single = statistics.median(results["pixel"])
        print(f"{args.runs} runs at once: POSTs took {created:.2f} s; all trainer Jobs after {children_done:.2f} s; "
              f"all status phase Training after {burst:.2f} s")  # fmt: skip
        print(f"  ratio burst / ({args.runs} × single-run latency) = {burst / (args.runs * single):.2f}")
        print(f"  operator CPU during burst: {burst_cpu:.2f} s ({burst_cpu / args.runs * 1000:.0f} ms per run)")
        print(f"  operator peak RSS: {sampler.peak / 2**20:.0f} MiB")
        print(f"steady state, {total_runs} runs polled every {args.interval:g} s: operator CPU {100 * steady_cpu:.1f} % "
              f"of one core ({1000 * steady_cpu * args.interval / total_runs:.1f} ms per run per poll)")  # fmt: skip
    finally:
        stop_operator(operator, log)
        cluster.stop()


if __name__ == "__main__":
    main()
