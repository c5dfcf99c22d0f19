"""Replies and command names in the member's language: English, and Simplified Chinese for zh-CN.

`tr(interaction, key, **fields)` writes a reply; `Text(key, **fields)` is an error message the
reporter re-renders (bot/i18n/text.py); `CommandTranslator` localises the slash commands.
"""

from .text import CHINESE, ENGLISH, LocaleLike, Text, language_of, localised_message, tr
from .translator import CommandTranslator

__all__ = ["CHINESE", "ENGLISH", "CommandTranslator", "LocaleLike", "Text", "language_of", "localised_message", "tr"]
