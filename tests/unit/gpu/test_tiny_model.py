"""The tiny pipeline goes through save_pretrained / from_pretrained like the real model."""

import json

from gpu.engine import resolve_model_path
from gpu.tiny import build_tokenizer
from zimage_protocol.constants import TINY_VERSION


def test_tiny_is_saved_as_a_diffusers_pipeline(data_dir):
    path = resolve_model_path("tiny", data_dir)
    assert path.endswith(f"tiny-v{TINY_VERSION}")
    index = json.loads((data_dir / "models" / f"tiny-v{TINY_VERSION}" / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert index["transformer"] == ["diffusers", "ZImageTransformer2DModel"]
    assert index["text_encoder"][1] == "Qwen3Model"


def test_real_model_names_pass_through(tmp_path):
    assert resolve_model_path("Tongyi-MAI/Z-Image-Turbo", tmp_path) == "Tongyi-MAI/Z-Image-Turbo"
    assert resolve_model_path("/models/zimage", tmp_path) == "/models/zimage"


def test_tokenizer_is_byte_level_with_a_chat_template():
    tokenizer = build_tokenizer()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "héllo 🦊"}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=True)
    assert text.startswith("<|im_start|>user\nhéllo 🦊<|im_end|>")
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text


def test_unpadded_prompt_encoding_matches_the_pipeline(data_dir):
    """While a LoRA trains the worker encodes prompts on the CPU without the 512-token padding."""
    import torch

    from gpu.engine import ImageEngine

    engine = ImageEngine("tiny", data_dir)
    engine.load_tokenizer()
    engine.load()
    for prompt in ("a red fox", "a much longer prompt about a lighthouse at dusk, oil painting, " * 3):
        [padded], _ = engine.pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        unpadded = engine.encode_unpadded(prompt)
        assert unpadded.shape == padded.shape
        torch.testing.assert_close(unpadded, padded, rtol=1e-4, atol=1e-5)
