"""A result's picture buttons (bot/variants.py): the parent's PNG, its size, strength and direction in the new job,
the clicker's LoRA rights (as for Reroll: tests/unit/bot/test_button_loras.py) and where the parent may be reused."""

from __future__ import annotations

import pytest
from security_helpers import ALICE, BOB, GUILD, interaction, make_world

from bot.db.models import Job, JobStatus
from bot.errors import UserFacingError
from bot.imagine import ImagineService, build_params
from bot.variants import VARIANTS, VariantService
from bot.views import VariantButton, result_view
from zimage_protocol.messages import GenerateParams


@pytest.fixture
async def world(tmp_path):
    world = await make_world(tmp_path)
    yield world
    await world.close()


class Captured:
    def __init__(self):
        self.params: list[dict] = []

    async def __call__(self, interaction, prepare) -> None:
        self.params.append(await prepare())


def service_of(world) -> tuple[VariantService, Captured]:
    imagine = ImagineService(world.store, world.moderation, None, None, None, None, world.library, None, None)
    captured = Captured()
    imagine.submit = captured  # the checks and the queue of submit are tested elsewhere
    return VariantService(imagine, world.settings.outputs_dir), captured


async def finished_job(world, user_id: int = ALICE, loras: list[dict] | None = None, guild: int | None = GUILD,
                       aspect: str = "16:9", done: bool = True) -> int:
    params = build_params("a hill", aspect, 8, [1, 2], 10 << 20, loras)
    job = await world.store.enqueue(user_id=user_id, guild_id=guild, channel_id=1, params=params,
                                    status=JobStatus.DONE if done else JobStatus.QUEUED)
    names = [f"zimage_{job.id}_1_1.png", f"zimage_{job.id}_2_2.png"]
    folder = world.settings.outputs_dir / str(job.id)
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"png")
    async with world.store.session() as session, session.begin():
        row = await session.get(Job, job.id)
        row.result = {"files": names, "seconds": 1.0, "model": "tiny"}
    return job.id


@pytest.mark.parametrize("key", list(VARIANTS))
async def test_each_button_asks_for_its_variant_of_the_first_picture(world, key):
    job_id = await finished_job(world)
    service, captured = service_of(world)
    await service.request(interaction(BOB), job_id, key)
    [params] = captured.params
    variant = VARIANTS[key]
    source = GenerateParams.from_json(params).source
    assert source is not None and source.path == str(world.settings.outputs_dir / str(job_id) / f"zimage_{job_id}_1_1.png")
    assert (source.mode, source.strength, source.zoom, source.direction, source.parent) == (
        variant.mode, variant.strength, variant.zoom, variant.direction, str(job_id))
    assert (params["width"], params["height"]) == (1344 * variant.scale, 768 * variant.scale)
    assert params["prompt"] == "a hill" and len(params["seeds"]) == 1 and params["steps"] == 8


async def test_subtle_and_strong_differ_in_strength_and_pan_has_four_directions():
    assert (VARIANTS["subtle"].strength, VARIANTS["strong"].strength) == (0.35, 0.7)
    assert {VARIANTS[key].direction for key in ("left", "right", "up", "down")} == {"left", "right", "up", "down"}
    assert (VARIANTS["zoom15"].zoom, VARIANTS["zoom2"].zoom) == (1.5, 2.0)


async def test_a_private_lora_of_the_parent_refuses_the_click_to_others(world):
    await world.lora("ink", ALICE)
    job_id = await finished_job(world, loras=await world.library.for_request(ALICE, GUILD, "ink"))
    service, captured = service_of(world)
    for key in VARIANTS:
        with pytest.raises(UserFacingError, match="may not use"):
            await service.request(interaction(BOB), job_id, key)
    assert captured.params == []
    await service.request(interaction(ALICE), job_id, "upscale")  # the owner may
    [lora] = captured.params[0]["loras"]
    assert lora["path"] == str(world.data_dir / "loras" / "ink-11" / "pytorch_lora_weights.safetensors")


async def test_a_result_of_another_server_or_someone_elses_dm_is_not_reused(world):
    service, captured = service_of(world)
    elsewhere = await finished_job(world, guild=GUILD + 1)
    with pytest.raises(UserFacingError, match="elsewhere"):
        await service.request(interaction(ALICE), elsewhere, "subtle")
    dm = await finished_job(world, guild=None)
    with pytest.raises(UserFacingError, match="elsewhere"):
        await service.request(interaction(BOB, None), dm, "subtle")
    await service.request(interaction(ALICE, None), dm, "subtle")  # the DM's own member may
    assert len(captured.params) == 1


async def test_unfinished_missing_and_already_upscaled_parents_are_refused(world):
    service, captured = service_of(world)
    with pytest.raises(UserFacingError, match="no longer known"):
        await service.request(interaction(ALICE), 9999, "subtle")
    queued = await finished_job(world, done=False)
    with pytest.raises(UserFacingError, match="not finished"):
        await service.request(interaction(ALICE), queued, "subtle")
    gone = await finished_job(world)
    for png in (world.settings.outputs_dir / str(gone)).iterdir():
        png.unlink()
    with pytest.raises(UserFacingError, match="no longer kept"):
        await service.request(interaction(ALICE), gone, "subtle")

    job_id = await finished_job(world, aspect="1:1")
    await service.request(interaction(ALICE), job_id, "upscale")
    upscaled = await world.store.enqueue(user_id=ALICE, guild_id=GUILD, channel_id=1, params=captured.params[0],
                                         status=JobStatus.DONE)
    folder = world.settings.outputs_dir / str(upscaled.id)
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"png")
    async with world.store.session() as session, session.begin():
        (await session.get(Job, upscaled.id)).result = {"files": ["a.png"]}
    with pytest.raises(UserFacingError, match="already upscaled"):
        await service.request(interaction(ALICE), upscaled.id, "upscale")
    await service.request(interaction(ALICE), upscaled.id, "subtle")  # other buttons of an upscale still work


async def test_a_stored_file_name_never_leaves_the_parents_folder(world):
    job_id = await finished_job(world)
    async with world.store.session() as session, session.begin():
        (await session.get(Job, job_id)).result = {"files": ["../../secret.png"]}
    (world.settings.outputs_dir / str(job_id) / "secret.png").write_bytes(b"png")
    service, captured = service_of(world)
    await service.request(interaction(ALICE), job_id, "subtle")
    assert captured.params[0]["source"]["path"] == str(world.settings.outputs_dir / str(job_id) / "secret.png")


async def test_the_view_has_every_button_localised_in_at_most_three_rows(world):
    job_id = await finished_job(world)
    job = await world.store.get(job_id)
    view = result_view(job)
    ids = [item.custom_id for item in view.children]
    assert ids[:3] == [f"zimage:reroll:{job_id}", f"zimage:vary:{job_id}", f"zimage:delete:{job_id}"]
    assert ids[3:] == [f"zimage:variant:{key}:{job_id}" for key in VARIANTS]
    assert {item.row for item in view.children} == {0, 1, 2}
    assert "Upscale 2×" in [item.item.label for item in view.children]
    job.params = {**job.params, "locale": "zh-CN"}
    assert "放大 2×" in [item.item.label for item in result_view(job).children]
    for key in VARIANTS:  # every id the view makes is one the DynamicItem reads back after a restart
        assert VariantButton.__discord_ui_compiled_template__.fullmatch(f"zimage:variant:{key}:{job_id}")
    assert not VariantButton.__discord_ui_compiled_template__.fullmatch(f"zimage:variant:nope:{job_id}")
