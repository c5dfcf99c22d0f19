"""The reply catalog: both languages for every message, the same fields, and the reporter choosing by locale."""

from __future__ import annotations

import re
import string
from pathlib import Path
from types import SimpleNamespace

import discord
import pytest

from bot.db.admission import AdmissionRefused
from bot.db.models import JobStatus
from bot.errors import UserFacingError
from bot.i18n import CHINESE, ENGLISH, Text, language_of, tr
from bot.i18n.catalog import CATALOG
from bot.jobs.outcomes import BOT_ERROR_MESSAGE
from bot.limits import UserLimits
from bot.permissions import NotModerator
from bot.reporting import report_error, user_message
from bot.settings import Settings

BOT = Path(__file__).resolve().parents[3] / "bot"
CJK = re.compile(r"[\u4e00-\u9fff]")


def fields(template: str) -> list[tuple[str, str, str | None]]:
    """Each replacement field's name, format spec and conversion, sorted."""
    return sorted((name, spec or "", conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None)


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_every_message_has_both_languages_with_the_same_fields(key):
    english, chinese = CATALOG[key]
    assert english.strip() and chinese.strip()
    assert fields(english) == fields(chinese), key
    # Mentions, commands and code stay as they are in both languages.
    for token in ("<@", "`/", "\n"):
        assert english.count(token) == chinese.count(token), (key, token)


def test_the_chinese_texts_are_chinese():
    # A few are only fields and punctuation (Chinese punctuation is full-width); the rest must not be English
    # left untranslated.
    no_chinese = [key for key, (english, chinese) in CATALOG.items() if not CJK.search(chinese)]
    assert no_chinese == ["queue.line", "mod.ban_reason", "lora.line", "lora.info_rank", "lora.info_alpha"]
    assert all(CATALOG[key][0] != CATALOG[key][1] or key == "lora.info_rank" for key in no_chinese)


def test_the_bot_error_matches_what_failed_jobs_say():
    assert CATALOG["error.bot"][0] == BOT_ERROR_MESSAGE


def test_every_job_state_has_a_name():
    assert {f"status.{status}" for status in JobStatus} <= CATALOG.keys()


def test_every_message_id_in_the_code_is_in_the_catalog():
    used = set()
    for path in BOT.rglob("*.py"):
        if path.parent.name == "i18n":  # its docstrings show the calls with made-up ids
            continue
        source = path.read_text()
        used |= set(re.findall(r"""\btr\([^,()]+,\s*"([a-z_]+\.[a-z_]+)\"""", source))
        used |= set(re.findall(r"""\bText\("([a-z_]+\.[a-z_]+)\"""", source))
    assert len(used) > 50  # the scan sees the calls
    assert used - CATALOG.keys() == set()


@pytest.mark.parametrize("locale, language", [
    (discord.Locale.chinese, CHINESE), ("zh-CN", CHINESE), (discord.Locale.american_english, ENGLISH),
    (discord.Locale.taiwan_chinese, ENGLISH), (discord.Locale.french, ENGLISH), (None, ENGLISH),
    (SimpleNamespace(locale=discord.Locale.chinese), CHINESE), (SimpleNamespace(), ENGLISH),
])
def test_chinese_only_for_zh_cn(locale, language):
    assert language_of(locale) == language


def test_a_text_reads_as_english_and_renders_for_a_locale():
    text = Text("cancel.already", job=7, status=Text("status.done"))
    assert text == "Job #7 is already done; there is nothing to cancel." and str(UserFacingError(text)) == text
    assert text.localised(discord.Locale.chinese) == "任务 #7 的状态是“已完成”，无需取消。"
    assert tr("zh-CN", "limits.slow_down", count=3, period=60.0) == "请慢一点：每 60 秒最多 3 次请求。"
    with pytest.raises(KeyError):
        tr(None, "no.such_message")


# -- the reporter ------------------------------------------------------------------------------------------

class Answered:
    """An interaction not yet answered, of a member whose Discord client is set to `locale`."""

    def __init__(self, locale: discord.Locale):
        self.locale = locale
        self.sent: list[tuple[str, bool]] = []
        self.response = self

    def is_done(self) -> bool:
        return False

    type = None

    async def send_message(self, content: str, ephemeral: bool = False) -> None:
        self.sent.append((content, ephemeral))


@pytest.mark.parametrize("locale, expected", [
    (discord.Locale.chinese, "你已有 3 个任务在排队（上限为 3 个）。请等其中一个完成，或用 `/cancel` 取消一个。"),
    (discord.Locale.british_english,
     "You already have 3 jobs in the queue (the limit is 3). Wait for one to finish, or cancel one with `/cancel`."),
])
async def test_a_limit_refusal_reaches_the_member_in_their_language(locale, expected):
    limits = UserLimits(Settings(discord_token="x"), store=None)  # type: ignore[arg-type]
    caps = limits.caps()
    ix = Answered(locale)
    await report_error(ix, limits.refusal(AdmissionRefused("queue_full", 3), caps))  # type: ignore[arg-type]
    assert ix.sent == [(expected, True)]


def test_checks_plain_messages_and_crashes():
    assert user_message(NotModerator(Text("mod.only")), discord.Locale.chinese).startswith("只有管理员")
    assert user_message(NotModerator(), discord.Locale.chinese) == "你不能在这里使用这个命令。"
    # A message not yet in the catalog is shown as written rather than lost.
    assert user_message(UserFacingError("The zip is empty."), discord.Locale.chinese) == "The zip is empty."
    assert user_message(RuntimeError("boom"), discord.Locale.chinese) == "我们这边出了点问题，错误已记录。"
