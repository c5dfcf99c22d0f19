"""A reply in the member's language: message ids, locales, and `Text`, an error message that can be re-read.

Discord tells the bot each member's client language (`interaction.locale`); replies are written in
Simplified Chinese for `zh-CN` and in English otherwise. Every reply is a message id of the catalog
(bot/i18n/catalog.py) with `str.format` fields.

Errors travel as exceptions before they become replies (bot/reporting.py), and most code only knows
them as `str(error)`. `Text` is a str (its English wording, so logs, tests and code that reads the
message see English) that also remembers its message id and fields: `UserFacingError(Text("…", n=3))`
is rendered again in the member's language by the reporter.
"""

from __future__ import annotations

from typing import Any

import discord

from .catalog import CATALOG

ENGLISH = "en"
CHINESE = "zh-CN"
LANGUAGES = (ENGLISH, CHINESE)  # the order of the texts in a catalog entry

LocaleLike = discord.Interaction | discord.Locale | str | None


def language_of(where: LocaleLike) -> str:
    """The catalog language for an interaction (its member's locale) or a locale: Chinese only for zh-CN.

    zh-TW members read Traditional Chinese; they get English rather than a script they did not choose."""
    if not isinstance(where, (str, discord.Locale, type(None))):
        where = getattr(where, "locale", None)  # an interaction (or a test's stand-in for one)
    if isinstance(where, discord.Locale):
        where = where.value
    return CHINESE if where == CHINESE else ENGLISH


def render(key: str, language: str, fields: dict[str, Any]) -> str:
    """The message `key` in `language`, its fields filled in (a field that is a `Text`, e.g. a job's state, or any
    other str with a `localised(where)` method, in the same language). A key the catalog lacks is a KeyError: a typo
    in a message id is a bug, found by the tests that cover the reply."""
    english, chinese = CATALOG[key]
    template = chinese if language == CHINESE else english
    return template.format(**{name: value.localised(language) if callable(getattr(value, "localised", None)) else value
                              for name, value in fields.items()})


def tr(where: LocaleLike, key: str, /, **fields: Any) -> str:
    """The message `key` for this interaction's member (or this locale), e.g. `tr(interaction, "queue.empty")`."""
    return render(key, language_of(where), fields)


class Text(str):
    """A message id and its fields that reads as its English text: raise `UserFacingError(Text(key, **fields))`."""

    key: str
    fields: dict[str, Any]

    def __new__(cls, key: str, /, **fields: Any) -> Text:
        text = super().__new__(cls, render(key, ENGLISH, fields))
        text.key = key
        text.fields = fields
        return text

    def localised(self, where: LocaleLike) -> str:
        return render(self.key, language_of(where), self.fields)


def localised_message(error: BaseException, where: LocaleLike) -> str | None:
    """The error's message in the member's language, when it was raised with a `Text`; otherwise None."""
    message = error.args[0] if error.args else None
    return message.localised(where) if isinstance(message, Text) else None
