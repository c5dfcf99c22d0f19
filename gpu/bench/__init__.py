"""``python -m gpu.bench``: stock diffusers vs the worker's own path, side by side, in one run.

On CUDA it builds the FULL-SIZE Z-Image-Turbo architecture (6.15 B DiT, Qwen3-4B text encoder,
FLUX-layout VAE) with random weights directly on the GPU in bf16 (timings do not depend on the
weights; nothing is downloaded or saved), then measures three sections (``--sections``):

* ``inference``: stock ``pipe(prompt_embeds=..., guidance_scale=0, num_inference_steps=8)``, eager,
  vs ``gpu.engine.ImageEngine`` with that same pipeline injected into ``load()`` (the speed path of
  ``gpu/accel.py`` and the warm-up are exactly the worker's code); a second process started with a
  populated compile cache (cold start to first image); optionally ``--variant KEY=VALUE``, ``--fp8``,
  ``--vram16`` (ZIMAGE_VRAM=16gb under a 16 GiB allocator cap) and ``--profile`` (inference.py, children.py);
* ``lora``: LoRA switching on the inference section's engine: hot-swap slot warm-up, s/image with
  1-3 stacked LoRAs, switch times and the graphs compiled meanwhile, a peft control (lora.py);
* ``training``: LoRA training at 512 px, rank 64, batch 1: a plain peft loop vs gpu/training/trainer.py's
  ``LoraTrainer``, eager and on the worker's regionally compiled transformer (training.py);
* ``latency``: /imagine latency at 1024x1024 when idle vs while training steps are interleaved on
  the one GPU thread the way gpu/scheduler.py does (latency.py);
* ``enhancer``: the prompt enhancer's tokens/s (the Qwen3-4B text encoder decoding with its tied head, up to
  the worker's cap of 120 tokens), on the inference section's engine when it ran (enhancer.py).

Prints markdown tables (report.py; JSON with ``--json PATH``). ``--tiny`` (automatic without CUDA)
runs the same code on the CPU with gpu/tiny.py's pipeline at small sizes, for CI.
"""
