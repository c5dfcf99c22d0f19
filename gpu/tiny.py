"""A tiny random Z-Image pipeline that needs no network.

Tests and CI cannot download Tongyi-MAI/Z-Image-Turbo, so ``ZIMAGE_MODEL=tiny`` builds a
pipeline with the real component classes at toy sizes, saves it with ``save_pretrained`` and
lets the worker load it through ``ZImagePipeline.from_pretrained`` -- the exact code path of
the real model. Weights are seeded, so every build produces the same pixels for the same seed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from zimage_protocol.constants import tiny_model_dir_name

log = logging.getLogger(__name__)

# Bumped whenever the tiny architecture changes, so an old saved copy is rebuilt.

# Qwen-style chat template; the pipeline calls apply_chat_template(..., enable_thinking=True).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_level_vocab() -> dict[str, int]:
    """The 256 GPT-2 byte symbols: any UTF-8 text tokenizes, one token per byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return {symbol: byte for byte, symbol in symbols.items()}


def build_tokenizer():
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=_byte_level_vocab(),
        merges=[],
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_pipeline():
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    hidden = 16
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=hidden,  # must equal the text encoder's hidden size
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],  # sums to dim / n_heads
        axes_lens=[1024, 128, 128],  # 128 patches per side covers 2048 px
    )
    # Without explicit pad tokens the random init leaves them NaN-prone at toy sizes.
    with torch.no_grad():
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token) * 0.1)
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token) * 0.1)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],  # 4 blocks: downscale 8 like the real VAE
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def ensure_tiny_model(models_dir: Path) -> Path:
    """Build and save the tiny pipeline once; return the folder to load it from."""
    target = models_dir / tiny_model_dir_name()
    if (target / "model_index.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    log.info("building the tiny random Z-Image pipeline in %s", target)
    # Build into a temporary folder and rename, so a crash never leaves half a model behind.
    with tempfile.TemporaryDirectory(dir=models_dir) as scratch:
        scratch_path = Path(scratch)
        pipe = build_tiny_pipeline()
        pipe.save_pretrained(scratch_path / "model")
        if target.exists():
            shutil.rmtree(target)
        (scratch_path / "model").rename(target)
    return target
