"""Warm-ups after "ready" (gpu/scheduler.py): a generation asked for meanwhile waits for one step, not all of them."""

from __future__ import annotations

import asyncio
import threading

from zimage_protocol.messages import GenerateParams


async def test_a_generation_runs_between_the_warm_up_steps_after_ready(tiny_models_dir, tmp_path):
    from gpu.engine import ImageEngine
    from gpu.scheduler import GpuScheduler

    (tmp_path / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    engine = ImageEngine("tiny", tmp_path)
    events: list[str] = []
    variants_started, release_variants = threading.Event(), threading.Event()

    def slow_variants_warm_up() -> None:
        events.append("variants warm-up")
        variants_started.set()
        assert release_variants.wait(30)

    def adapters_warm_up() -> None:
        events.append("adapters warm-up")

    generate = engine.generate

    def logged_generate(params, *args, **kwargs):
        events.append(f"images {params.prompt}")
        return generate(params, *args, **kwargs)

    engine.warm_up_variants = slow_variants_warm_up  # type: ignore[method-assign]
    engine.warm_up_adapters = adapters_warm_up  # type: ignore[method-assign]
    scheduler = GpuScheduler(engine)
    await scheduler.load(warm_up=True)
    assert scheduler.ready
    engine.generate = logged_generate  # type: ignore[method-assign]  # after load's own warm-up image
    assert await asyncio.to_thread(variants_started.wait, 30)
    assert scheduler.busy  # health says so while the background warm-up runs

    async def no_step(step, total):
        pass

    async def no_image(index, seed, png, prompt):
        pass

    request = asyncio.create_task(scheduler.generate(
        "r1", GenerateParams(prompt="first request", width=64, height=64, steps=1, seeds=[1]), no_step, no_image))
    await asyncio.sleep(0.2)  # the request is waiting for the GPU behind the warm-up step in progress
    release_variants.set()
    await asyncio.wait_for(request, 60)
    for _ in range(300):
        if not scheduler.busy:
            break
        await asyncio.sleep(0.05)
    assert events == ["variants warm-up", "images first request", "adapters warm-up"]
    assert not scheduler.busy
