"""Stable-Layers: Flow-GRPO fine-tuning of Qwen-Image-Layered with a two-stage VLM reward.

This package `__init__` (like `spec` and `storage`) never imports torch or diffusers: the operator
image installs it without the ML stack. Heavy imports live inside the modules that need them.
"""

__version__ = "0.1.0"
