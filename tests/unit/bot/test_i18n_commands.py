"""The slash commands' zh-CN localisations: complete, and within Discord's rules for names and descriptions.

The cogs are added to a tree as the bot does (their services are not needed to describe the commands);
the payloads are what `tree.sync` sends, made by discord.py with the bot's Translator.
"""

from __future__ import annotations

import asyncio

import discord
import pytest
import regex
from discord.ext import commands

from bot.cogs.imagine import ImagineCog
from bot.cogs.lora import LoraCog
from bot.cogs.member_settings import MemberSettingsCog
from bot.cogs.mod import ModCog
from bot.cogs.queue import QueueCog
from bot.cogs.train import TrainCog
from bot.cogs.workers import WorkersCog
from bot.i18n import CommandTranslator

ZH = discord.Locale.chinese.value
# Discord's rule for command and option names (its docs: "Application Command Naming").
NAME = regex.compile(r"^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$")
# Kept as they are in Chinese: the word Chinese members use, and discord.py's placeholder description.
UNTRANSLATED = {"lora", "…"}


async def synced_payloads() -> list[dict]:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.none())
    for cog in (ImagineCog(None, None, None), QueueCog(None, None), ModCog(None, None, None, None, None, None),  # type: ignore[arg-type]
                TrainCog(None), LoraCog(None, None, None, None), WorkersCog(None, None),  # type: ignore[arg-type]
                MemberSettingsCog(None)):  # type: ignore[arg-type]
        await bot.add_cog(cog)
    translator = CommandTranslator()
    return [await command.get_translated_payload(bot.tree, translator) for command in bot.tree.get_commands()]


def walk(item: dict, path: str = ""):
    """Every command, subcommand, group and option of a payload, with its path."""
    path = f"{path} {item['name']}".strip()
    yield path, item
    for option in item.get("options") or []:
        yield from walk(option, path)


def needs_translation(text: str) -> bool:
    return text not in UNTRANSLATED and any(ch.isascii() and ch.isalpha() for ch in text)


@pytest.fixture(scope="module")
def payloads() -> list[dict]:
    return asyncio.run(synced_payloads())


def test_every_name_and_description_has_a_chinese_one(payloads):
    missing = []
    for command in payloads:
        for path, item in walk(command):
            if needs_translation(item["name"]) and ZH not in (item.get("name_localizations") or {}):
                missing.append(f"{path}: name {item['name']!r}")
            if needs_translation(item["description"]) and ZH not in (item.get("description_localizations") or {}):
                missing.append(f"{path}: description {item['description']!r}")
            for choice in item.get("choices") or []:
                if needs_translation(choice["name"]) and ZH not in (choice.get("name_localizations") or {}):
                    missing.append(f"{path}: choice {choice['name']!r}")
    assert not missing, "add these to bot/i18n/commands.py:\n" + "\n".join(missing)


def test_chinese_names_follow_discords_rules(payloads):
    for command in payloads:
        for path, item in walk(command):
            name = (item.get("name_localizations") or {}).get(ZH, item["name"])
            assert NAME.match(name) and name == name.lower(), (path, name)
            description = (item.get("description_localizations") or {}).get(ZH, item["description"])
            assert 1 <= len(description) <= 100, (path, description)
            for choice in item.get("choices") or []:
                assert 1 <= len((choice.get("name_localizations") or {}).get(ZH, choice["name"])) <= 100


def test_chinese_names_are_unique_where_discord_requires_it(payloads):
    def unique(items: list[dict], where: str) -> None:
        names = [(item.get("name_localizations") or {}).get(ZH, item["name"]) for item in items]
        assert len(names) == len(set(names)), (where, names)

    unique(payloads, "top level")
    for command in payloads:
        for path, item in walk(command):
            if item.get("options"):
                unique(item["options"], path)


def test_the_chinese_names_members_see(payloads):
    names = {path: item for command in payloads for path, item in walk(command)}
    assert names["imagine"]["name_localizations"] == {ZH: "画图"}
    assert names["imagine prompt"]["name_localizations"] == {ZH: "提示词"}
    assert names["mod blocklist add"]["name_localizations"] == {ZH: "添加"}
    assert names["lora"].get("name_localizations") in (None, {})
    assert names["queue"]["description_localizations"] == {ZH: "查看你的任务及其排队位置"}


async def test_only_zh_cn_is_localised():
    translator = CommandTranslator()
    context = discord.app_commands.TranslationContext(discord.app_commands.TranslationContextLocation.command_name,
                                                      None)
    string = discord.app_commands.locale_str("imagine")
    assert await translator.translate(string, discord.Locale.chinese, context) == "画图"  # type: ignore[arg-type]
    for locale in discord.Locale:
        if locale != discord.Locale.chinese:
            assert await translator.translate(string, locale, context) is None  # type: ignore[arg-type]


def test_the_fake_discord_accepts_these_payloads_and_refuses_bad_localisations(payloads):
    """The e2e fake enforces the same rules (tests/support/fake_discord/rest.py): it must pass the real payloads
    and refuse what Discord refuses, or the e2e locale test proves nothing."""
    import copy

    from fake_discord.rest import _validate_commands
    from fake_discord.wire import DiscordError

    _validate_commands(payloads)
    for break_it in (lambda imagine: imagine["name_localizations"].update({ZH: "画 图"}),       # a space
                     lambda imagine: imagine["name_localizations"].update({ZH: "Imagine"}),   # a capital
                     lambda imagine: imagine["name_localizations"].update({"zh": "画图"}),     # not a Discord locale
                     lambda imagine: imagine["options"][1].update(name_localizations={ZH: "提示词"})):  # a duplicate
        broken = copy.deepcopy(payloads)
        break_it(next(command for command in broken if command["name"] == "imagine"))
        with pytest.raises(DiscordError):
            _validate_commands(broken)


async def test_a_changed_translation_syncs_the_global_commands_again(monkeypatch):
    """Without a dev guild the bot syncs globally only when the commands changed: a translation is a change."""
    from types import SimpleNamespace

    from bot.client import ZImageBot
    from bot.i18n import commands as strings
    from bot.settings import Settings

    state: dict[str, str] = {}

    async def get_state(key: str) -> str | None:
        return state.get(key)

    async def set_state(key: str, value: str) -> None:
        state[key] = value

    bot = ZImageBot(Settings(discord_token="x"))
    bot.services = SimpleNamespace(store=SimpleNamespace(get_state=get_state, set_state=set_state))  # type: ignore[assignment]
    await bot.add_cog(QueueCog(None, None))  # type: ignore[arg-type]
    await bot.tree.set_translator(CommandTranslator())
    syncs = []

    async def sync(*, guild=None):
        syncs.append(await bot.tree.get_commands()[0].get_translated_payload(bot.tree, bot.tree.translator))

    monkeypatch.setattr(bot.tree, "sync", sync)
    await bot.sync_commands()
    await bot.sync_commands()
    assert len(syncs) == 1
    monkeypatch.setitem(strings.COMMAND_NAMES, "queue", "排队")
    await bot.sync_commands()
    assert len(syncs) == 2 and syncs[-1]["name_localizations"] == {ZH: "排队"}
