"""#18: file links of a LoRA (its /lora export links, a checkpoint's link) stop working when its owner unshares or
deletes it, and exporting it again does not bring an old link back."""

from __future__ import annotations

import struct

import pytest
from security_helpers import ALICE, BOB, GUILD, make_world

from bot.safetensors_io import write_safetensors


@pytest.fixture
async def world(tmp_path):
    world = await make_world(tmp_path)
    yield world
    await world.close()


async def shared_lora(world, tmp_path):
    """A shared LoRA whose file is a valid diffusers LoRA of one layer (export converts it, so it must parse)."""
    lora = await world.lora("ink", ALICE, shared=True)
    rank, width = 2, 4
    entries = [(f"transformer.layers.0.attention.to_q.lora_{part}.weight", "F32", shape,
                lambda shape=shape: struct.pack(f"<{shape[0] * shape[1]}f", *([0.5] * (shape[0] * shape[1]))))
               for part, shape in (("A", (rank, width)), ("B", (width, rank)))]
    write_safetensors(world.data_dir / "loras" / "ink-11" / "pytorch_lora_weights.safetensors", entries, {"format": "pt"})
    return await world.loras.get(lora.id)


def granted(world, link: str):
    return world.signer.resolve(link.split("/files/")[1].split("/")[0])


async def test_unsharing_revokes_every_link_and_a_new_export_does_not_revive_them(world, tmp_path):
    lora = await shared_lora(world, tmp_path)
    bobs = [link for _, link in await world.library.export(await world.library.usable(BOB, GUILD, "ink"))]
    checkpoint_link = world.signer.link(world.data_dir / "loras" / "ink-11" / "pytorch_lora_weights.safetensors")
    assert all(granted(world, link) for link in [*bobs, checkpoint_link])

    await world.library.unshare(ALICE, GUILD, "ink")
    assert not any(granted(world, link) for link in [*bobs, checkpoint_link])

    alices = [link for _, link in await world.library.export(await world.library.usable(ALICE, GUILD, "ink"))]
    assert all(granted(world, link) for link in alices)  # the owner's new links work...
    assert not any(granted(world, link) for link in bobs)  # ...and bob's old ones stay dead
    assert lora.path and (await world.loras.get(lora.id)).path == lora.path


async def test_deleting_revokes_every_link_at_once(world, tmp_path):
    await shared_lora(world, tmp_path)
    links = [link for _, link in await world.library.export(await world.library.usable(BOB, GUILD, "ink"))]
    lora = await world.library.delete(ALICE, GUILD, "ink", moderator=False)
    assert not any(granted(world, link) for link in links)  # before its files are removed (after the reply)
    await world.library.remove_files(lora)
    assert not any(granted(world, link) for link in links)
