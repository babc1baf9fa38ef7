"""Build a tiny, randomly initialised Qwen2.5-VL checkpoint that vLLM can serve, with no download.

    .tools/vllm/bin/python scripts/build_tiny_vlm.py OUT_DIR

Run it with the vLLM environment's python (scripts/install-test-tools.sh): that environment has
the transformers/tokenizers versions the server will load the checkpoint with.

What it writes (a directory `vllm serve OUT_DIR` accepts):
  * a byte-level BPE tokenizer trained here on a few lines of judge-like text: the 256-byte
    alphabet is always in the vocabulary, so any JSON answer can be spelled; the Qwen-VL special
    tokens (<|im_start|>, <|vision_start|>, <|image_pad|>, ...) are added as specials;
  * the Qwen2-VL chat template (an image part becomes <|vision_start|><|image_pad|><|vision_end|>);
  * a Qwen2VLImageProcessor config (patch 14, merge 2, temporal patch 2);
  * Qwen2_5_VLForConditionalGeneration, float32, random weights from a fixed seed:
    text 2 layers × 128 hidden (2 heads of 64, 1 KV head, mrope sections 8/12/12),
    vision 2 blocks × 64 hidden. About 0.7 M parameters.

The model knows nothing: it exercises the protocol (images, chat template, structured output,
concurrency, faults), never the judgement. The build is deterministic for a given transformers
version (same seed, same corpus), and a stamp file makes a second call with the same OUT_DIR a
no-op. Writes go to a temporary sibling directory that is renamed into place at the end, so an
interrupted build never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

BUILD_VERSION = "1"
STAMP = ".tiny-vlm-build"

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL's template, reduced to what a judge request uses (system, user text + images, assistant).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = (
    "You are a strict, consistent judge of image layer decompositions. Answer with JSON only.",
    '{"semantic_separation": 7, "alpha_cleanliness": 3, "background_inpainting": 10,'
    ' "feature_distribution": 0, "content_validity": 5, "blank_layer": false, "duplicate_of_composite": true}',
    '{"1": 10, "2": 0, "3": 4, "4": 6, "5": 8, "6": 2, "7": 1, "8": 9}',
    "Score each criterion with an integer from 0 (fails completely) to 10 (perfect).",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,:;()[]{}<>'\"-_+=*/\\|@#$%^&~`",
)

TEXT_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    # mrope sections (temporal, height, width) sum to head_dim / 2 = 32
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
    "tie_word_embeddings": False,
}
VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "out_hidden_size": 128,  # = the text hidden size: merged patches become text embeddings
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
}
IMAGE_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 56 * 56,
    "max_pixels": 1024 * 1024,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(CORPUS) * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(out: Path, seed: int = 0) -> dict[str, object]:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = ((len(tok) + 63) // 64) * 64  # padded like real checkpoints; the extra rows are never sampled
    text = {
        **TEXT_CONFIG,
        "vocab_size": vocab,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(VISION_CONFIG),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.float32).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps(IMAGE_PROCESSOR, indent=2))
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    info = {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": vocab,
        "tokenizer_size": len(tok),
        "special_token_ids": ids,
    }
    (tmp / STAMP).write_text(json.dumps(info, indent=2, sort_keys=True))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: build_tiny_vlm.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    stamp = out / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("build_version") == BUILD_VERSION:
        print(f"{out}: already built")
        return 0
    info = build(out)
    print(f"wrote {out}: {info['parameters'] / 1e6:.2f}M parameters, vocabulary {info['vocab_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
