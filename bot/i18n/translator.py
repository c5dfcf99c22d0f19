"""The command tree's Translator: zh-CN names and descriptions for the commands Discord shows.

discord.py asks it for every Discord locale and every string of every command when it syncs; it
answers zh-CN from bot/i18n/commands.py and None (no localisation) otherwise.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation as Where

from .commands import CHOICE_NAMES, COMMAND_NAMES, DESCRIPTIONS, OPTION_NAMES

_TABLES = {
    Where.command_name: COMMAND_NAMES,
    Where.group_name: COMMAND_NAMES,
    Where.parameter_name: OPTION_NAMES,
    Where.command_description: DESCRIPTIONS,
    Where.group_description: DESCRIPTIONS,
    Where.parameter_description: DESCRIPTIONS,
    Where.choice_name: CHOICE_NAMES,
}


class CommandTranslator(app_commands.Translator):
    async def translate(self, string: app_commands.locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContextTypes) -> str | None:
        if locale != discord.Locale.chinese:  # zh-CN
            return None
        return _TABLES.get(context.location, {}).get(string.message)
