"""The pipelines the benchmark runs on, and a description of the environment it ran in."""

from __future__ import annotations

import datetime as _dt
import os
import sys


def build_full_pipeline(device: str = "cuda", scale: float = 0.5, transformer_layers: int = 30,
                        text_layers: int = 36):
    """The real Z-Image-Turbo architecture with random weights, built in place on `device` in bf16.

    Configs from docs/zimage.md. Weights are scaled by `scale` so activations stay finite through
    30 random blocks. The layer counts are parameters only so a dry run can build a shallow copy.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = ZImageTransformer2DModel(
                all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840,
                n_layers=transformer_layers, n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5,
                qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
                axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
            )
            text_encoder = Qwen3Model(Qwen3Config(
                vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=text_layers,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
            ))
            vae = AutoencoderKL(
                in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
                norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False,
            )
    finally:
        torch.set_default_dtype(previous_dtype)
    modules: tuple[torch.nn.Module, ...] = (transformer, text_encoder, vae)
    with torch.no_grad():
        for module in modules:
            if any(p.dtype != torch.bfloat16 for p in module.parameters()):
                module.to(dtype=torch.bfloat16)
            module.eval()
            for parameter in module.parameters():
                parameter.mul_(scale)
        transformer.x_pad_token.fill_(0.1)
        transformer.cap_pad_token.fill_(0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=bench_tokenizer(),
                          transformer=transformer)


def bench_tokenizer():
    """A byte-level BPE tokenizer trained on the benchmark's own prompts and captions.

    Why: the tiny model's tokenizer has no merges (one token per byte), so a 60-word caption became ~350 tokens
    and the training benchmark padded most steps to 512 caption tokens, where Qwen3's vocabulary gives ~80.
    Trained on these texts, common words are one token and rarer ones two or three: ~1.6 tokens per word
    (Qwen3 ~1.3), so caption lengths stay slightly pessimistic. Deterministic: the same texts give the same
    merges. The real model's own tokenizer is used wherever weights are loaded from disk.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from ..tiny import CHAT_TEMPLATE, SPECIAL_TOKENS
    from . import inference, latency, photo_set

    texts = [*photo_set.CAPTION_TEXTS, inference.TIMING_PROMPT, *inference.QUEUE_PROMPTS, *latency.PROMPT_TEXTS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=4096, min_frequency=1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(pair) for pair in model["merges"]],
                               unk_token="<|endoftext|>", pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_pipeline(tiny: bool):
    if tiny:
        from ..tiny import build_tiny_pipeline

        return build_tiny_pipeline()
    return build_full_pipeline()


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


def environment_info(tiny: bool) -> dict:
    import diffusers
    import torch
    import transformers

    info = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "tiny (CPU smoke run, not a benchmark)" if tiny else "full-size architecture, random weights",
        "device": torch.cuda.get_device_name() if (torch.cuda.is_available() and not tiny) else "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "peft": _version("peft"), "bitsandbytes": _version("bitsandbytes"), "torchao": _version("torchao"),
        "cuda": torch.version.cuda, "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in ("ZIMAGE_COMPILE", "ZIMAGE_ATTENTION", "ZIMAGE_QUANT")},
    }
    return info
