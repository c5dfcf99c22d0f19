"""A member whose Discord is in Chinese (zh-CN) sees the commands and the bot's replies in Chinese; en-US in English.

The fake sends each interaction with the member's `locale`, as Discord does; the bot syncs its commands
with zh-CN localisations, which the fake checks against Discord's naming rules and its OpenAPI spec.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

ZH, EN = "zh-CN", "en-US"


async def reply(fake, name: str, options: dict | None = None, *, user=None, locale: str = EN) -> str:
    """Run a command as `user` with their client in `locale`; the content of its ephemeral reply."""
    ix = await fake.slash_command(name, options or {}, user=user or fake.alice, locale=locale)
    answer = await ix.wait_response(timeout=5)
    assert answer["type"] == 4 and answer["data"]["flags"] & 64, answer  # a private reply
    return answer["data"]["content"]


def option(command: dict, *path: str) -> dict:
    for name in path:
        command = next(item for item in command["options"] if item["name"] == name)
    return command


async def test_synced_commands_carry_chinese_names_and_descriptions(fake, bot):
    imagine, mod, lora = fake.find_command("imagine"), fake.find_command("mod"), fake.find_command("lora")
    assert imagine["name_localizations"] == {ZH: "画图"}
    assert imagine["description_localizations"][ZH].startswith("用 Z-Image-Turbo")
    assert option(imagine, "prompt")["name_localizations"] == {ZH: "提示词"}
    assert option(mod, "blocklist", "add")["name_localizations"] == {ZH: "添加"}
    assert option(lora, "use", "scale")["description_localizations"] == {ZH: "强度，0-2（默认 0.8）"}
    assert fake.find_command("queue")["name_localizations"] == {ZH: "队列"}
    assert fake.spec_violations == []  # the localisations are valid request bodies for Discord


async def test_replies_and_refusals_in_the_members_language(fake, bot):
    # Replies.
    assert await reply(fake, "queue", locale=ZH) == "你没有排队中的任务。"
    assert await reply(fake, "queue", locale=EN) == "You have no jobs in the queue."
    assert await reply(fake, "lora list", locale=ZH) == (
        "你在这里还没有 LoRA：用 `/train` 训练一个，或用 `/lora import` 导入一个。")
    # Errors raised by the commands, through the one reporter.
    assert await reply(fake, "cancel", {"job": 999}, locale=ZH) == "你没有 #999 号任务。用 `/queue` 查看你的任务。"
    assert await reply(fake, "cancel", {"job": 999}, locale=EN) == "You have no job #999. See your jobs with `/queue`."
    # A check's refusal: a member who is not a moderator.
    fake.allow_command("mod")
    assert (await reply(fake, "mod pause", locale=ZH)).startswith("只有管理员")
    assert (await reply(fake, "mod pause", locale=EN)).startswith("Only moderators")


async def test_a_chinese_moderator_runs_the_server_in_chinese(fake, bot):
    async def mod(name: str, options: dict | None = None, locale: str = ZH) -> str:
        return await reply(fake, f"mod {name}", options, user=fake.mod, locale=locale)

    assert await mod("pause") == "⏸️ 队列已暂停。任务会保留位置继续等待；用 `/mod resume` 恢复。"
    assert await mod("resume", locale=EN) == "▶️ The queue runs again."
    queue = await mod("queue")
    assert queue.startswith("**本服务器的队列**：0 个活动任务\n没有等待或运行中的任务。\n\n"
                            "**GPU 工作进程**（详情：`/workers`）\n")
    assert "端点" not in queue and "worker.sock：" in queue  # the short workers section (/workers has the details)
    banned = await mod("ban", {"user": fake.bob, "duration": "2h"})
    assert banned.startswith(f"<@{fake.bob['id']}> 已被封禁（直到 <t:") and banned.endswith("）；其 0 个任务已取消。")
    assert "（由 <@" in await mod("bans")
    assert await mod("blocklist add", {"pattern": "裸体"}) == "包含 `裸体` 的提示词现在会被拒绝。"
    assert await mod("blocklist add", {"pattern": "裸体"}) == "`裸体` 已在屏蔽词列表中。"  # an error, in Chinese
    limits = await mod("limits", {"max_queued": 2})
    assert limits.splitlines()[:2] == ["**本服务器的限制**", "每位成员排队任务数：2"]
    assert "（默认）" in limits
    audit = await mod("audit", locale=EN)
    assert "**blocklist-add** 裸体" in audit  # the audit log records what was done, not the reply's language
    assert fake.spec_violations == []
