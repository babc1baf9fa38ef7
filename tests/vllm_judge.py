"""A real vLLM judge for the tests: the tiny random Qwen2.5-VL served by `vllm serve` on
127.0.0.1 with the arguments the operator renders for its judge Deployment.

Built by scripts/install-test-tools.sh (the vLLM environment in .tools/vllm, the model in
.tools/tiny-vlm). Tests that need it are marked `vllm`; CI (scripts/test.sh) installs both and
sets STABLE_LAYERS_REQUIRE_VLLM=1, so there a missing install fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
VLLM_ENV = Path(os.environ.get("STABLE_LAYERS_VLLM_ENV", ROOT / ".tools" / "vllm"))
TINY_VLM = Path(os.environ.get("STABLE_LAYERS_TINY_VLM", ROOT / ".tools" / "tiny-vlm"))
VLLM_BIN = VLLM_ENV / "bin" / "vllm"
SERVED_NAME = "judge"
# CPU-only additions, given the way a user would: through the judge's `extraArgs`. float32: the
# tiny model is built in float32 (the CPU backend's fast bf16 kernels need AVX-512). A batch of 4
# sequences: a G=8 group (9 requests) is more than the server takes at once, so every group
# exercises the server-side queue ("overloaded").
MAX_NUM_SEQS = 4
CPU_EXTRA_ARGS = ["--dtype", "float32", "--max-num-seqs", str(MAX_NUM_SEQS)]


def example_run_spec() -> Any:
    from stable_layers_operator.resource import parse_run

    doc = yaml.safe_load((ROOT / "manifests" / "examples" / "run.yaml").read_text())
    return parse_run(doc["spec"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def operator_judge_command(port: int, *, enforce_eager: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The judge container's command + args as the operator renders them (same code path: the
    Deployment builder), for the tiny model on 127.0.0.1:`port`."""
    from stable_layers_operator import children as ch
    from stable_layers_operator import judge as jd

    spec = example_run_spec()
    spec.judge.model = str(TINY_VLM)
    spec.judge.served_model_name = SERVED_NAME
    spec.judge.extra_args = [
        *CPU_EXTRA_ARGS,
        *(["--enforce-eager"] if enforce_eager else []),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    dep = jd.judge_deployment(spec, ch.Owner(name="test", namespace="default", uid="0"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    return [str(VLLM_BIN), "serve", *container["args"]]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB of KV cache; the tiny model needs little
        VLLM_CPU_OMP_THREADS_BIND="nobind",  # the CI box is shared: do not pin cores
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    env.pop("PYTHONPATH", None)  # the worker's packages must not shadow vLLM's environment
    return env


def available() -> str | None:
    """None when the server can be started, else why not."""
    if not VLLM_BIN.exists():
        return f"{VLLM_BIN} missing: run scripts/install-test-tools.sh"
    if not (TINY_VLM / "config.json").exists():
        return f"{TINY_VLM} missing: run scripts/install-test-tools.sh"
    return None


class VLLMServer:
    """One `vllm serve` process; `start` waits for GET /health = 200."""

    def __init__(
        self,
        port: int | None = None,
        *,
        enforce_eager: bool = True,
        extra_args: Sequence[str] = (),
        log: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.enforce_eager = enforce_eager
        self.extra_args = list(extra_args)
        self.log = log or Path(f"/tmp/vllm-judge-{self.port}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return operator_judge_command(self.port, enforce_eager=self.enforce_eager, extra=self.extra_args)

    def start(self, timeout: float = 600.0) -> VLLMServer:
        t0 = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
            )
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}; see {self.log}:\n{self.tail()}")
            if self.healthy():
                self.start_seconds = time.monotonic() - t0
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vllm serve not healthy after {timeout:.0f}s; see {self.log}:\n{self.tail()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def requests_in_server(self) -> float:
        """Requests running + waiting in the engine, from vLLM's Prometheus /metrics (0 if unreadable)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2.0).text
        except httpx.HTTPError:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        """SIGKILL the whole server (API process and engine core): a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(**kw: Any) -> Iterator[VLLMServer]:
    server = VLLMServer(**kw).start()
    try:
        yield server
    finally:
        server.stop()
