"""Names and limits the bot and the worker must agree on (one definition each)."""

from __future__ import annotations

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"
TINY_MODEL = "tiny"  # ZIMAGE_MODEL=tiny: the built-in random pipeline (gpu/tiny.py)
TINY_VERSION = "1"  # bumped when the tiny architecture changes: DATA_DIR/models/tiny-v<N>


def tiny_model_dir_name() -> str:
    return f"tiny-v{TINY_VERSION}"


MAX_SEQUENCE_LENGTH = 512  # the pipeline pads/truncates prompts to this many tokens (chat template included)
LORA_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes, and what the library stores
MAX_LORA_STACK = 8  # LoRAs in one request, at most: the worker keeps at most this many adapters loaded
MAX_LORA_RANK = 1024  # highest LORA_MAX_RANK an admin may set
# A live preview (Progress.preview) is a small JPEG at latent resolution (gpu/previews.py): a few KB. The bot
# ignores bigger ones, and the worker never sends one.
MAX_PREVIEW_BYTES = 64 << 10
