"""A local OpenAI-compatible fake judge: records requests and misbehaves on demand.

Used by the reward tests and `benchmarks/bench_reward.py`, and handy for checking a client setup
without a GPU. It is not a VLM: answers come from `answer` (default: schema-valid mid scores).

    with FakeJudgeServer() as srv:               # 127.0.0.1, a free port, a daemon thread
        srv.script = ["500", "malformed"]        # the next requests' behaviours, then `default`
        spec.openai.base_url = srv.base_url       # http://127.0.0.1:PORT/v1

Behaviours: `ok`, `slow` (sleeps `delay` first), `malformed` (not JSON), `500`, `503`, `400`,
`404`, `hang` (never answers within `hang_seconds`), `drop` (closes the connection). `delay` applies
to every answered request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def default_answer(body: dict[str, Any]) -> str:
    """A valid answer to the request's JSON schema: 7 for every integer, false for every flag."""
    schema = body["response_format"]["json_schema"]["schema"]
    out: dict[str, Any] = {}
    for key, prop in schema["properties"].items():
        out[key] = False if prop["type"] == "boolean" else min(7, prop.get("maximum", 7))
    return json.dumps(out)


class FakeJudgeServer:
    def __init__(self, *, delay: float = 0.0, default: str = "ok", hang_seconds: float = 30.0) -> None:
        self.delay = delay
        self.default = default
        self.hang_seconds = hang_seconds
        self.script: list[str] = []
        self.answer: Callable[[dict[str, Any]], str] = default_answer
        self.route: Callable[[dict[str, Any]], str | None] = lambda body: None
        """Per-request behaviour chosen from the body (e.g. always fail one candidate); wins over
        `script` and `default` when it returns a behaviour."""
        self.requests: list[dict[str, Any]] = []
        self.behaviours: list[str] = []
        self.auth: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeJudgeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, payload: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._send(200 if self.path == "/health" else 404, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server._handle(self, body, self.headers.get("Authorization", ""))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-judge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeJudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- behaviour -------------------------------------------------------------------------
    def _next_behaviour(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    def _handle(self, h: Any, body: dict[str, Any], auth: str) -> None:
        behaviour = self.route(body) or self._next_behaviour()
        with self._lock:
            self.requests.append(body)
            self.auth.append(auth)
            self.behaviours.append(behaviour)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if behaviour == "hang":
                time.sleep(self.hang_seconds)
                return
            if behaviour == "drop":
                h.close_connection = True
                h.connection.shutdown(2)
                return
            time.sleep(self.delay + (0.5 if behaviour == "slow" else 0.0))
            if behaviour in ("500", "503", "400", "404"):
                msg = {"error": {"message": f"fake {behaviour}", "type": "server_error", "code": int(behaviour)}}
                h._send(int(behaviour), json.dumps(msg).encode())
                return
            text = "this is {not json" if behaviour == "malformed" else self.answer(body)
            finish = "stop"
            if behaviour == "truncated":  # a model that rambles until the token limit
                text, finish = text[: max(1, len(text) // 2)], "length"
            payload = {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            h._send(200, json.dumps(payload).encode())
        finally:
            with self._lock:
                self.in_flight -= 1
