"""#18: /lora import and /lora export are requests like /imagine (bans, the rate limit), and imports have limits of their
own: a quota per member (count and bytes of imported LoRAs, per server, overridable with /mod limits), one import at a
time per member and a few at once in all, and enough free disk before anything is downloaded."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
from security_helpers import ALICE, BOB, GUILD, MOD, make_world

from bot.errors import UserFacingError
from bot.limits import UserLimits
from bot.lora_library import LoraImporter
from bot.lora_library import imports as imports_module
from bot.moderation import RequestRules

MIB = 1 << 20
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
async def world(tmp_path):
    world = await make_world(tmp_path, rate_limit_count=100, lora_import_max_count=2, lora_import_max_bytes=3 * MIB,
                             lora_imports_at_once=2, lora_max_bytes=2 * MIB)
    yield world
    await world.close()


def importer_of(world) -> LoraImporter:
    return LoraImporter(world.settings, world.library, RequestRules(world.moderation), UserLimits(world.settings, world.store))


def upload(size: int = 1000, name: str = "x.safetensors"):
    return SimpleNamespace(filename=name, size=size, url="https://cdn.example/x")


async def test_banned_members_may_neither_import_nor_export(world):
    importer = importer_of(world)
    await world.moderation.ban(GUILD, BOB, MOD, "spam", None)
    with pytest.raises(UserFacingError, match="banned"):
        await importer.check(GUILD, BOB, "ink", upload(), None)
    with pytest.raises(UserFacingError, match="banned"):
        await importer.check_export(GUILD, BOB)
    await importer.check_export(GUILD, ALICE)


async def test_imports_and_exports_count_against_the_request_rate_limit(tmp_path):
    world = await make_world(tmp_path, rate_limit_count=3)
    try:
        importer = importer_of(world)
        await importer.check(GUILD, ALICE, "ink", upload(), None)
        await importer.check_export(GUILD, ALICE)
        await importer.check_export(GUILD, ALICE)
        with pytest.raises(UserFacingError, match="Slow down"):
            await importer.check_export(GUILD, ALICE)
        with pytest.raises(UserFacingError, match="Slow down"):
            await importer.check(GUILD, ALICE, "oil", upload(), None)
    finally:
        await world.close()


async def test_the_count_quota_counts_imports_only_and_a_server_may_change_it(world):
    importer = importer_of(world)
    await world.lora("one", ALICE)
    await world.lora("two", ALICE)
    await world.lora("trained", ALICE, source=None)  # /train's LoRAs are not imports
    with pytest.raises(UserFacingError, match="2 imported LoRAs"):
        await importer.check(GUILD, ALICE, "ink", upload(), None)
    await importer.check(GUILD, BOB, "ink", upload(), None)  # per member
    await importer.check(GUILD + 1, ALICE, "ink", upload(), None)  # per server
    await world.moderation.update_settings(GUILD, lora_import_max_count=3)
    await importer.check(GUILD, ALICE, "ink", upload(), None)


async def test_the_bytes_quota_counts_the_files_and_a_server_may_change_it(world):
    importer = importer_of(world)
    await world.moderation.update_settings(GUILD, lora_import_max_count=10)
    await world.lora("big", ALICE, content=b"x" * (2 * MIB))
    await importer.check(GUILD, ALICE, "ink", upload(MIB), None)
    with pytest.raises(UserFacingError, match="3 MiB"):
        await importer.check(GUILD, ALICE, "ink", upload(MIB + 1), None)
    url = "https://example.com/x.safetensors"
    await importer.check(GUILD, ALICE, "ink", None, url)  # a link's size is known only while downloading: capped then
    assert await importer.room_left(GUILD, ALICE) == MIB
    await world.lora("more", ALICE, content=b"x" * MIB)
    with pytest.raises(UserFacingError, match="3 MiB"):
        await importer.check(GUILD, ALICE, "ink", None, url)
    await world.moderation.update_settings(GUILD, lora_import_max_mb=5)
    await importer.check(GUILD, ALICE, "ink", upload(2 * MIB), None)
    await importer.check(GUILD, ALICE, "ink", None, url)


async def test_one_import_at_a_time_per_member_and_a_few_in_all(world):
    importer = importer_of(world)
    async with importer.slot(ALICE):
        with pytest.raises(UserFacingError, match="still running"):
            async with importer.slot(ALICE):
                pass
        async with importer.slot(BOB):
            with pytest.raises(UserFacingError, match="busy"):
                async with importer.slot(MOD):
                    pass
    async with importer.slot(ALICE), importer.slot(MOD):
        pass


async def test_slots_are_given_back_when_an_import_fails(world):
    importer = importer_of(world)
    with pytest.raises(UserFacingError):
        async with importer.slot(ALICE):
            raise UserFacingError("refused")
    async with importer.slot(ALICE):
        pass


async def test_too_little_free_disk_refuses_before_downloading(world, monkeypatch):
    importer = importer_of(world)
    monkeypatch.setattr(imports_module, "disk_usage", lambda path: Usage(100 * MIB, 97 * MIB, 3 * MIB))
    with pytest.raises(UserFacingError, match="disk"):
        await importer.check(GUILD, ALICE, "ink", upload(), None)
    monkeypatch.setattr(imports_module, "disk_usage", lambda path: Usage(100 * MIB, 96 * MIB, 4 * MIB))
    await importer.check(GUILD, ALICE, "ink", upload(), None)


def test_the_settings_and_their_defaults():
    from bot.settings import SettingsError, load_settings

    settings = load_settings({"DISCORD_TOKEN": "t"}, dotenv_path=None)
    assert (settings.lora_import_max_count, settings.lora_import_max_bytes, settings.lora_imports_at_once) == (20, 4096 * MIB, 2)
    settings = load_settings({"DISCORD_TOKEN": "t", "LORA_IMPORT_MAX_COUNT": "5", "LORA_IMPORT_MAX_MB": "100",
                              "LORA_IMPORTS_AT_ONCE": "1"}, dotenv_path=None)
    assert (settings.lora_import_max_count, settings.lora_import_max_bytes, settings.lora_imports_at_once) == (5, 100 * MIB, 1)
    with pytest.raises(SettingsError, match="LORA_IMPORTS_AT_ONCE must be at least 1"):
        load_settings({"DISCORD_TOKEN": "t", "LORA_IMPORTS_AT_ONCE": "0"}, dotenv_path=None)
