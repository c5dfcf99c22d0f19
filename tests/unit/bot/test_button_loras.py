"""#18: a job made from a result's button (Reroll, Variations) uses only the LoRAs the clicker may use *now*.

The job named in the button is only a template: each LoRA in it is looked up again by id in the library, with the
clicker's rights and the LoRA's current file; a path stored in the old job is never reused.
"""

from __future__ import annotations

import pytest
from security_helpers import ALICE, BOB, GUILD, interaction, make_world

from bot.errors import UserFacingError
from bot.imagine import ImagineService, build_params


@pytest.fixture
async def world(tmp_path):
    world = await make_world(tmp_path)
    yield world
    await world.close()


class Captured:
    def __init__(self):
        self.params: list[dict] = []

    async def __call__(self, interaction, prepare) -> None:
        self.params.append(await prepare())  # submit answers first, then prepares: its refusal reaches the member


def service_of(world) -> tuple[ImagineService, Captured]:
    service = ImagineService(world.store, world.moderation, None, None, None, None, world.library, None, None)
    captured = Captured()
    service.submit = captured  # the checks, defer and enqueue of submit are not what these tests are about
    return service, captured


async def job_with(world, user_id: int, loras: list[dict]) -> int:
    params = build_params("a hill", "1:1", 8, [1], 10 << 20, loras)
    job = await world.store.enqueue(user_id=user_id, guild_id=GUILD, channel_id=1, params=params)
    return job.id


@pytest.mark.parametrize("button", ["reroll", "vary"])
async def test_a_private_lora_is_refused_to_others_and_follows_sharing(world, button):
    ink = await world.lora("ink", ALICE)
    job_id = await job_with(world, ALICE, await world.library.for_request(ALICE, GUILD, "ink"))
    service, captured = service_of(world)
    click = getattr(service, button)

    with pytest.raises(UserFacingError, match="`ink`") as refused:
        await click(interaction(BOB), job_id)
    assert "may not use" in str(refused.value) and captured.params == []

    await world.library.share(ALICE, GUILD, "ink")
    await click(interaction(BOB), job_id)
    [params] = captured.params
    assert [(lora["path"], lora["scale"]) for lora in params["loras"]] == [(ink.path, 0.8)]

    await world.library.unshare(ALICE, GUILD, "ink")
    with pytest.raises(UserFacingError, match="may not use"):
        await click(interaction(BOB), job_id)
    await click(interaction(ALICE), job_id)  # the owner still may
    assert len(captured.params) == 2


async def test_the_current_file_is_used_never_the_stored_path(world):
    ink = await world.lora("ink", ALICE)
    job_id = await job_with(world, ALICE, await world.library.for_request(ALICE, GUILD, "ink"))
    newer = world.lora_file("ink-newer")
    await world.loras.set_checkpoint(ink.id, str(newer), 500)  # a newer checkpoint (or a re-import) since
    service, captured = service_of(world)
    await service.reroll(interaction(ALICE), job_id)
    [lora] = captured.params[0]["loras"]
    assert lora["path"] == str(newer) and "-s500-" in lora["name"]


async def test_a_deleted_lora_refuses_the_button_even_to_its_owner(world):
    await world.lora("ink", ALICE)
    job_id = await job_with(world, ALICE, await world.library.for_request(ALICE, GUILD, "ink"))
    await world.library.delete(ALICE, GUILD, "ink", moderator=False)
    service, captured = service_of(world)
    with pytest.raises(UserFacingError, match="no longer"):
        await service.vary(interaction(ALICE), job_id)
    assert captured.params == []


async def test_a_stored_path_without_a_known_lora_is_never_used(world):
    """An old job whose params name a file but no LoRA id the library knows: refused, not copied."""
    forged = [{"name": "whatever", "path": "/etc/passwd", "scale": 1.0, "label": "x"},]
    job_id = await job_with(world, ALICE, forged)
    service, captured = service_of(world)
    with pytest.raises(UserFacingError):
        await service.reroll(interaction(ALICE), job_id)
    assert captured.params == []


async def test_a_lora_of_another_server_is_not_usable_here(world):
    await world.lora("ink", ALICE, shared=True, guild=GUILD + 1)
    job_id = await job_with(world, ALICE, await world.library.for_request(ALICE, GUILD + 1, "ink"))
    service, captured = service_of(world)
    with pytest.raises(UserFacingError, match="may not use"):
        await service.reroll(interaction(ALICE, GUILD), job_id)
    assert captured.params == []


async def test_a_job_without_loras_rerolls_as_before(world):
    job_id = await job_with(world, ALICE, [])
    service, captured = service_of(world)
    await service.reroll(interaction(BOB), job_id)
    assert captured.params[0]["loras"] == [] and captured.params[0]["prompt"] == "a hill"
