"""#18: /mod's autocompletes answer moderators only, and Discord offers /mod only to Manage Server members by default.

A cog's interaction_check does not run for autocomplete, so each autocomplete checks the member itself; a plain
member who types in /mod cancel's `job` or /mod blocklist remove's `pattern` must see nothing of the server.
"""

from __future__ import annotations

import discord
import pytest
from security_helpers import ALICE, BOB, GUILD, MOD, interaction, make_world

from bot.cogs.mod import ModCog


@pytest.fixture
async def world(tmp_path):
    world = await make_world(tmp_path)
    yield world
    await world.close()


def member(user_id: int, *, manage_guild: bool = False):
    return interaction(user_id, permissions=discord.Permissions(manage_guild=manage_guild))


def with_roles(ix, roles: tuple[int, ...]):
    ix.user.roles = [discord.Object(role) for role in roles]
    return ix


async def seeded(world) -> ModCog:
    await world.store.enqueue(user_id=BOB, guild_id=GUILD, channel_id=1, params={"prompt": "bob's secret prompt"})
    await world.moderation.add_blocked(GUILD, "forbidden-word", MOD)
    return ModCog(world.settings, world.moderation, world.store, None, None, lambda _: [])


async def test_plain_members_get_no_choices(world):
    cog = await seeded(world)
    alice = with_roles(member(ALICE), ())
    assert await cog.cancel_autocomplete(alice, "") == []
    assert await cog.blocklist_autocomplete(alice, "") == []


async def test_moderators_get_the_choices(world):
    cog = await seeded(world)
    moderator = with_roles(member(MOD, manage_guild=True), ())
    [job] = await cog.cancel_autocomplete(moderator, "")
    assert job.value == 1
    assert [choice.value for choice in await cog.blocklist_autocomplete(moderator, "")] == ["forbidden-word"]
    # The moderator role counts too (set with /mod role).
    await world.moderation.update_settings(GUILD, mod_role_id=777)
    helper = with_roles(member(BOB), (777,))
    assert len(await cog.cancel_autocomplete(helper, "")) == 1


async def test_no_choices_in_dms(world):
    cog = await seeded(world)
    dm = with_roles(interaction(MOD, None, permissions=discord.Permissions(manage_guild=True)), ())
    assert await cog.cancel_autocomplete(dm, "") == [] and await cog.blocklist_autocomplete(dm, "") == []


async def test_mod_is_offered_to_manage_server_members_by_default(world):
    """Defence in depth: Discord hides /mod from others unless a server admin allows them (the bot still checks)."""
    cog = ModCog(world.settings, world.moderation, world.store, None, None, lambda _: [])
    assert cog.app_command.default_permissions == discord.Permissions(manage_guild=True)
