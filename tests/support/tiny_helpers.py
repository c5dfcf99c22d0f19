"""Helpers for tests that run the tiny pipeline directly (no worker)."""

from __future__ import annotations

import numpy as np
import torch


def tiny_image(pipe, prompt: str, size: int = 64, steps: int = 2, seed: int = 3) -> np.ndarray:
    """One Turbo-style image (guidance 0) as a float array, fixed seed: equal inputs give equal pixels."""
    embeds, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    with torch.inference_mode():
        return pipe(prompt_embeds=embeds, height=size, width=size, num_inference_steps=steps, guidance_scale=0.0,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
