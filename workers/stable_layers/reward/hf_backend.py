"""Judge transport through an in-process transformers VLM (Qwen2.5-VL / Qwen3-VL classes).

For single-machine runs without a vLLM server. Differences from the OpenAI backend, by necessity:
the JSON schema is not enforced during decoding (transformers has no built-in constrained
decoding), so the prompt carries the expected keys and the scorer's parse-failure policy handles
the rest; requests run one at a time (one model, one device) in a worker thread so the event loop
stays free; decoding is greedy (temperature 0). Exercised here only with a tiny randomly
initialised `Qwen2_5_VLForConditionalGeneration`, whose answers are garbage: the tests check the
plumbing and the failure policy, not judging quality.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from stable_layers.reward.base import JudgeUnavailable
from stable_layers.reward.vlm import Answer
from stable_layers.spec import TransformersJudgeSpec


def _qwen_chat(system: str, prompt: str) -> str:
    """Qwen chat template, used when the processor ships without one."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


class TransformersBackend:
    name = "transformers"

    def __init__(self, spec: TransformersJudgeSpec | None = None, *, model: Any = None, processor: Any = None) -> None:
        """`model`/`processor` may be passed in (tests, or sharing a loaded model); otherwise they
        load from `spec.model` on first use."""
        self.spec = spec or TransformersJudgeSpec()
        self.model = model
        self.processor = processor
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_finish_reason: str | None = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = self.spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.processor = AutoProcessor.from_pretrained(self.spec.model)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.spec.model, dtype=getattr(torch, self.spec.dtype)
            ).to(device)
        except OSError as err:
            raise OSError(
                f"reward.transformers.model: cannot load {self.spec.model!r} ({err}); give a local path or a hub id "
                "that is downloadable here"
            ) from None
        self.model.eval()

    def _image(self, image: np.ndarray) -> Any:
        from PIL import Image

        pil = Image.fromarray(np.asarray(image)).convert("RGB")
        w, h = pil.size
        if w * h > self.spec.max_pixels:
            s = (self.spec.max_pixels / (w * h)) ** 0.5
            pil = pil.resize((max(28, int(w * s)), max(28, int(h * s))), Image.Resampling.LANCZOS)
        return pil

    def generate(self, system: str, prompt: str, image: np.ndarray) -> str:
        """Greedy answer to one (system, prompt, image) request; synchronous."""
        import torch

        if self.model is None:
            self._load()
        proc = self.processor
        if getattr(proc, "chat_template", None):
            messages = [
                {"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            ]
            text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = _qwen_chat(system, prompt)
        inputs = proc(text=[text], images=[self._image(image)], return_tensors="pt")
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        # generate() stops at the limit or at an end token; a full-length answer that does not
        # end in one was cut off (the OpenAI API's finish_reason "length"). Read by `complete`
        # under its lock, so one request at a time.
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        cut = len(new) >= self.spec.max_new_tokens and int(new[-1]) not in eos
        self.last_finish_reason = "length" if cut else "stop"
        return proc.tokenizer.decode(new, skip_special_tokens=True)

    async def complete(
        self, system: str, prompt: str, image: np.ndarray, schema: dict[str, Any], schema_name: str
    ) -> Answer:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            t0 = time.perf_counter()
            self.last_finish_reason = None
            try:
                text = await asyncio.to_thread(self.generate, system, prompt, image)
            except (RuntimeError, ValueError) as err:  # e.g. CUDA OOM on an oversized grid
                raise JudgeUnavailable(f"{type(err).__name__}: {err}") from None
            latency = time.perf_counter() - t0
            finish = self.last_finish_reason
        return Answer(text=text, latency=latency, latencies=(latency,), finish_reason=finish)

    async def aclose(self) -> None:
        self.model = None
