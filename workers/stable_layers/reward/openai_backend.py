"""Judge transport through any OpenAI-compatible chat endpoint (the operator's vLLM Deployment).

Requests follow what vLLM 0.33 accepts (infra.md §E): the image as a base64 `data:` URL content
part, structured output through `response_format: json_schema` — never the removed `guided_json`,
which vLLM silently ignores — temperature 0 and a fixed seed. An `asyncio.Semaphore` bounds the
requests in flight; tenacity retries transport errors (connection, timeout, HTTP 408/429/5xx) with
exponential backoff and jitter; the client's own retries are off so every retry is counted.
Unknown model / bad key (HTTP 401/403/404) raise `JudgeConfigError`: retrying cannot fix them and
training on constant rewards would waste the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import numpy as np

from stable_layers.reward.base import JudgeConfigError, JudgeUnavailable
from stable_layers.reward.panels import data_url
from stable_layers.reward.vlm import Answer
from stable_layers.spec import OpenAIJudgeSpec


def _transient(err: BaseException) -> bool:
    import openai

    if isinstance(err, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(err, openai.APIStatusError) and (err.status_code in (408, 409, 429) or err.status_code >= 500)


class OpenAIBackend:
    name = "openai"

    def __init__(self, spec: OpenAIJudgeSpec | None = None) -> None:
        self.spec = spec or OpenAIJudgeSpec()
        self.api_key = "EMPTY"  # vLLM without --api-key accepts anything
        if self.spec.api_key_env:
            key = os.environ.get(self.spec.api_key_env)
            if not key:
                raise JudgeConfigError(
                    f"reward.openai.apiKeyEnv: environment variable {self.spec.api_key_env!r} is not set; "
                    "export it (or mount the Secret) or remove apiKeyEnv for a server without a key"
                )
            self.api_key = key
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    def _ensure(self) -> tuple[Any, asyncio.Semaphore]:
        """Client and semaphore bound to the running loop (rebuilt if a new loop uses the scorer,
        e.g. successive `asyncio.run` calls in the CLI)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                base_url=self.spec.base_url, api_key=self.api_key, timeout=self.spec.timeout, max_retries=0
            )
            self._sem = asyncio.Semaphore(self.spec.max_concurrency)
            self._loop = loop
        assert self._sem is not None
        return self._client, self._sem

    def request_body(
        self, system: str, prompt: str, image: np.ndarray, schema: dict[str, Any], schema_name: str
    ) -> dict[str, Any]:
        """Keyword arguments of `chat.completions.create` (public for tests and debugging)."""
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [
                {"role": "system", "content": system},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(image)}},
                        {"type": "text", "text": prompt},
                    ],
                },
            ],
            "temperature": self.spec.temperature,
            # `max_tokens` is deprecated in the chat API (vLLM warns); same limit, current name
            "max_completion_tokens": self.spec.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            },
        }
        if self.spec.seed is not None:
            body["seed"] = self.spec.seed
        return body

    async def complete(
        self, system: str, prompt: str, image: np.ndarray, schema: dict[str, Any], schema_name: str
    ) -> Answer:
        import openai
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

        client, sem = self._ensure()
        body = await asyncio.to_thread(self.request_body, system, prompt, image, schema, schema_name)
        latencies: list[float] = []
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.spec.retries + 1),
                wait=wait_exponential_jitter(initial=self.spec.backoff, max=30.0, jitter=self.spec.backoff),
                retry=retry_if_exception(_transient),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    async with sem:
                        self.in_flight += 1
                        self.max_in_flight = max(self.max_in_flight, self.in_flight)
                        t0 = time.perf_counter()
                        try:
                            resp = await client.chat.completions.create(**body)
                        finally:
                            latencies.append(time.perf_counter() - t0)
                            self.in_flight -= 1
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
            raise JudgeConfigError(
                f"judge at {self.spec.base_url} rejected the request ({err.status_code}): {err.message}; "
                f"check reward.openai.model ({self.spec.model!r}) and reward.openai.apiKeyEnv"
            ) from None
        except openai.OpenAIError as err:
            raise JudgeUnavailable(
                f"{type(err).__name__} after {attempts} attempt(s): {err}",
                retries=attempts - 1,
                latencies=tuple(latencies),
            ) from None
        choices = getattr(resp, "choices", None) or []
        text = (choices[0].message.content or "") if choices else ""
        finish = getattr(choices[0], "finish_reason", None) if choices else None
        return Answer(
            text=text, latency=latencies[-1], retries=attempts - 1, latencies=tuple(latencies), finish_reason=finish
        )

    async def health(self) -> bool:
        """GET <server>/health (vLLM: 200 ready, 503 engine dead); False when unreachable."""
        import httpx

        root = self.spec.base_url.rstrip("/").removesuffix("/v1")
        try:
            async with httpx.AsyncClient(timeout=5.0) as c:
                r = await c.get(root + "/health")
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(RuntimeError):  # its loop is already closed: nothing to release
                await client.close()
