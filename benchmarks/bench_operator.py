"""Operator latency and cost against kmock (Kubernetes API over loopback HTTP) and moto S3.

The operator runs as its own process (`python -m stable_layers_operator`, exactly the image's
entry point, with a kubeconfig pointing at kmock) so its CPU and memory are measured alone.

1. Latency: seconds from POSTing a run to all first-phase children existing (pixel reward:
   ConfigMap + headless Service + trainer Job; VLM reward: ConfigMap + judge Deployment + Service).
2. Burst: 50 runs created at once: seconds until every run has its trainer Job and status phase
   Training; the operator's CPU seconds and peak RSS meanwhile.
3. Steady state: operator CPU while polling all runs (progress.json in S3, Job state) every
   `--interval` seconds.

    .venv/bin/python benchmarks/bench_operator.py [--runs 50] [--interval 2]
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


def spec(endpoint: str, name: str, reward: str = "pixel") -> dict[str, Any]:
    return {
        "run": {"name": name, "model": {"preset": "tiny-random"}, "reward": {"kind": reward}},
        "trainer": {"nodes": 2, "gpusPerNode": 0},
        "storage": {"uri": f"s3://{BUCKET}/{name}", "endpoint": endpoint, "secretRef": {"name": "s3-keys"}},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--single", type=int, default=5, help="sequential single-run latency samples per kind")
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

    cluster = EmulatedCluster(operator=False).start()
    cluster.create_secret("s3-keys", keys)
    tmp = tempfile.mkdtemp()
    kubeconfig = os.path.join(tmp, "kubeconfig")
    cluster.kubeconfig(kubeconfig)
    env = {**os.environ, "KUBECONFIG": kubeconfig, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stable_layers_operator", "--interval", str(args.interval)]
    cmd += ["--metrics-port", str(free_port()), "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]
    log = open(os.path.join(tmp, "operator.log"), "w")  # noqa: SIM115
    operator = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
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

        print("machine: 2-core CPU dev box, shared; operator = separate process; kmock + moto in the bench process")
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
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        log.close()
        cluster.stop()
        moto.stop()


if __name__ == "__main__":
    main()
