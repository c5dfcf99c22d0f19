"""/settings (issue #16): members' /imagine defaults and private results, stored on a real SQLite file and a real
PostgreSQL server, merged with /imagine's options (options given win, then the member's defaults under the server's
limits, then the bot's), and the bounded read that decides, before the answer, whether a request is private."""

from __future__ import annotations

import asyncio

import pytest
from databases import BACKENDS, migrated_database

from bot.db.jobs import JobStore
from bot.db.member_settings import MemberSettingsStore
from bot.db.models import MemberSettings
from bot.db.moderation import ModerationStore
from bot.errors import UserFacingError
from bot.member_settings import Chosen, MemberDefaults, merge

ALICE, BOB, GUILD = 11, 12, 100


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    async with migrated_database(request.param, tmp_path) as url:
        jobs = JobStore(url)
        try:
            yield jobs
        finally:
            await jobs.close()


@pytest.fixture
def members(store) -> MemberDefaults:
    return MemberDefaults(MemberSettingsStore(store), ModerationStore(store))


# -- the store -------------------------------------------------------------------------------------------------------


async def test_settings_are_saved_field_by_field_and_per_member(store):
    settings = MemberSettingsStore(store)
    assert await settings.get(ALICE) is None
    await settings.update(ALICE, aspect="16:9", steps=4)
    await settings.update(ALICE, count=3, private=True)
    await settings.update(BOB, steps=12)
    alice, bob = await settings.get(ALICE), await settings.get(BOB)
    assert (alice.aspect, alice.steps, alice.count, alice.private) == ("16:9", 4, 3, True)
    assert (bob.aspect, bob.steps, bob.count, bob.private) == (None, 12, None, False)
    await settings.update(ALICE, steps=None, private=False)  # None: back to the bot's default
    alice = await settings.get(ALICE)
    assert (alice.aspect, alice.steps, alice.count, alice.private) == ("16:9", None, 3, False)
    await settings.reset(ALICE)
    assert await settings.get(ALICE) is None and (await settings.get(BOB)).steps == 12
    with pytest.raises(TypeError):
        await settings.update(ALICE, user_id=BOB)


async def test_a_member_saving_twice_at_once_keeps_one_row_with_both_changes(store):
    settings = MemberSettingsStore(store)
    await asyncio.gather(settings.update(ALICE, steps=5), settings.update(ALICE, count=2),
                         settings.update(ALICE, private=True))
    alice = await settings.get(ALICE)
    assert (alice.steps, alice.count, alice.private) == (5, 2, True)


async def test_a_discord_sized_user_id_fits(store):
    settings = MemberSettingsStore(store)
    big = 2**63 - 1  # snowflakes are 64-bit
    await settings.update(big, private=True)
    assert (await settings.get(big)).private


# -- the merge ---------------------------------------------------------------------------------------------------------


def saved(**values) -> MemberSettings:
    return MemberSettings(user_id=ALICE, **{"aspect": None, "steps": None, "count": None, "private": False, **values})


def test_without_settings_the_bot_defaults_apply():
    assert merge(None, aspect=None, steps=None, count=None) == Chosen("1:1", 8, 1)
    assert merge(saved(), aspect=None, steps=None, count=None) == Chosen("1:1", 8, 1)


def test_options_given_win_and_options_left_out_take_the_defaults():
    mine = saved(aspect="9:16", steps=4, count=3)
    assert merge(mine, aspect=None, steps=None, count=None) == Chosen("9:16", 4, 3)
    assert merge(mine, aspect="4:3", steps=None, count=1) == Chosen("4:3", 4, 1)
    assert merge(mine, aspect=None, steps=16, count=None) == Chosen("9:16", 16, 3)


def test_the_servers_limits_cap_defaults_but_never_change_an_option_given():
    mine = saved(steps=12, count=4)
    assert merge(mine, aspect=None, steps=None, count=None, max_steps=6, max_count=2) == Chosen("1:1", 6, 2)
    assert merge(mine, aspect=None, steps=10, count=3, max_steps=6, max_count=2) == Chosen("1:1", 10, 3)  # refused later
    assert merge(mine, aspect=None, steps=None, count=None, max_steps=0, max_count=None) == Chosen("1:1", 12, 4)


def test_stored_values_the_bot_does_not_offer_count_as_unset():
    mine = saved(aspect="21:9", steps=99, count=0)
    assert merge(mine, aspect=None, steps=None, count=None) == Chosen("1:1", 8, 1)
    assert merge(None, aspect="nonsense", steps=None, count=None).aspect == "1:1"


# -- the service -------------------------------------------------------------------------------------------------------


async def test_choose_reads_the_member_and_the_servers_limits(members, store):
    await members.change(ALICE, aspect="3:2", steps=10, count=4)
    await ModerationStore(store).update_settings(GUILD, max_steps=6, max_count=2)
    assert await members.choose(ALICE, GUILD) == Chosen("3:2", 6, 2)
    assert await members.choose(ALICE, None) == Chosen("3:2", 10, 4)  # DMs: no server, no server limits
    assert await members.choose(ALICE, GUILD, steps=3) == Chosen("3:2", 3, 2)
    assert await members.choose(BOB, GUILD) == Chosen("1:1", 8, 1)


async def test_change_checks_what_discord_should_have_and_resets_first(members):
    for bad in ({"aspect": "21:9"}, {"steps": 0}, {"steps": 17}, {"count": 5}, {"count": -1}):
        with pytest.raises(UserFacingError):
            await members.change(ALICE, **bad)
    assert await members.get(ALICE) is None
    await members.change(ALICE, aspect="16:9", steps=4, private=True)
    after = await members.change(ALICE, reset=True, count=2)
    assert after is not None and (after.aspect, after.steps, after.count, after.private) == (None, None, 2, False)
    assert await members.change(ALICE, reset=True) is None
    assert await members.change(BOB) is None  # nothing given: nothing changed, nothing made


async def test_private_is_read_before_the_answer_and_a_slow_database_means_private(members):
    assert not await members.wants_private(ALICE)
    await members.change(ALICE, private=True)
    assert await members.wants_private(ALICE)
    await members.change(ALICE, private=False)
    assert not await members.wants_private(ALICE)

    class SlowStore:
        async def get(self, user_id: int):
            await asyncio.sleep(5)

    class BrokenStore:
        async def get(self, user_id: int):
            raise OSError("database gone")

    for broken in (SlowStore(), BrokenStore()):
        slow = MemberDefaults(broken, members.moderation, private_read_timeout=0.05)  # type: ignore[arg-type]
        assert await asyncio.wait_for(slow.wants_private(BOB), 1) is True  # never read: private, to be safe
        # A member read before keeps the answer last read (a burst must not turn public members private).
        members.store, slow_store = broken, members.store  # type: ignore[assignment]
        assert await asyncio.wait_for(members.wants_private(ALICE), 2) is False
        members.store = slow_store
        await members.change(ALICE, private=True)
        members.store = broken  # type: ignore[assignment]
        assert await asyncio.wait_for(members.wants_private(ALICE), 2) is True
        members.store = slow_store
        await members.change(ALICE, private=False)
