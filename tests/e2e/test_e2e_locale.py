"""A member whose Discord is in Chinese (zh-CN) sees the commands and the bot's replies in Chinese; en-US in English.

The fake sends each interaction with the member's `locale`, as Discord does; the bot syncs its commands
with zh-CN localisations, which the fake checks against Discord's naming rules and its OpenAPI spec.
"""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from PIL import Image

from e2e_helpers import contents, png_text, pngs, queued_job, wait_refusal, wait_result

pytestmark = pytest.mark.e2e

ZH, EN = "zh-CN", "en-US"
BOT_ENV = {"TRAIN_RESOLUTION": "64", "TRAIN_RANK": "4", "TRAIN_STEPS": "400"}  # a /train that is cheap to cancel


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


# -- a job's messages: in the language of the member who asked, for everyone in the channel --------------------

async def test_an_image_is_queued_drawn_and_delivered_in_its_requesters_language(fake, bot):
    zh = await fake.slash_command("imagine", {"prompt": "一只穿着宇航服的橘猫", "seed": 3, "count": 2},
                                  user=fake.alice, locale=ZH)
    en = await fake.slash_command("imagine", {"prompt": "an orange cat", "seed": 3, "count": 2}, user=fake.bob,
                                  locale=EN)
    zh_job, en_job = await queued_job(zh), await queued_job(en)
    [zh_result] = await wait_result(fake, zh_job, count=2)
    [en_result] = await wait_result(fake, en_job, count=2)

    zh_texts, en_texts = contents(zh_result), contents(en_result)
    assert any(re.fullmatch(rf"⏳ 任务 #{zh_job} (排在队列第 \*\*\d\*\* 位|在队列中)：\*一只穿着宇航服的橘猫\*", text)
               for text in zh_texts), zh_texts
    assert any(re.fullmatch(rf"🎨 任务 #{zh_job}：第 \d+/16 步 `[█░]{{16}}` \*一只穿着宇航服的橘猫\*", text)
               for text in zh_texts), zh_texts
    assert zh_result.content == f"<@{fake.alice['id']}> 任务 #{zh_job} 的结果"
    assert any(f"⏳ Job #{en_job} is position **" in text for text in en_texts), en_texts
    # Which steps are shown depends on PROGRESS_INTERVAL's clock, not on the step: any step of the 16 (2 images x 8).
    assert any(re.fullmatch(rf"🎨 Job #{en_job}: step \d+/16 `[█░]{{16}}` \*an orange cat\*", text)
               for text in en_texts), en_texts
    assert en_result.content == f"<@{fake.bob['id']}> here is job #{en_job}"
    assert not any(re.search(r"[\u4e00-\u9fff]", text) for text in en_texts)  # nothing Chinese for the English member

    zh_embed, en_embed = zh_result.embeds[0], en_result.embeds[0]
    assert zh_embed["author"]["name"] == f"任务 #{zh_job}" and en_embed["author"]["name"] == f"Job #{en_job}"
    assert [f["name"] for f in zh_embed["fields"]] == ["尺寸", "种子", "步数", "模型", "用时"]
    assert [f["name"] for f in en_embed["fields"]] == ["Size", "Seeds", "Steps", "Model", "Time"]
    assert zh_embed["fields"][-1]["value"].endswith(" 秒") and en_embed["fields"][-1]["value"].endswith(" s")
    assert zh_result.find_component(f"zimage:reroll:{zh_job}")["label"] == "重新生成"
    assert en_result.find_component(f"zimage:reroll:{en_job}")["label"] == "Reroll"
    # The Chinese prompt is kept whole in the PNG's text chunks.
    assert [png_text(png)["prompt"] for png in pngs(zh_result)] == ["一只穿着宇航服的橘猫"] * 2
    assert fake.spec_violations == []


async def test_chinese_prompts_meet_the_blocklist_and_the_token_cap_in_chinese(fake, bot):
    assert await reply(fake, "mod blocklist add", {"pattern": "裸体"}, user=fake.mod, locale=ZH) == (
        "包含 `裸体` 的提示词现在会被拒绝。")
    # No spaces in Chinese: the word is found inside the sentence.
    blocked = await fake.slash_command("imagine", {"prompt": "画一个裸体的女人"}, user=fake.alice, locale=ZH)
    assert await wait_refusal(blocked) == "本服务器不允许提示词中出现 `裸体`。"
    blocked_en = await fake.slash_command("imagine", {"prompt": "画一个裸体的女人"}, user=fake.bob, locale=EN)
    assert await wait_refusal(blocked_en) == "This server does not allow `裸体` in prompts."
    # Counted in the model's tokens (the tiny tokenizer: one per UTF-8 byte, 3 per character), not in characters.
    long = await fake.slash_command("imagine", {"prompt": "猫" * 200}, user=fake.alice, locale=ZH)
    refusal = await wait_refusal(long)
    assert re.fullmatch(r"你的提示词有 6\d\d 个 token，模型最多读取 \d+ 个。请缩短。", refusal), refusal
    assert await reply(fake, "queue", locale=ZH) == "你没有排队中的任务。"  # nothing was queued


def photo_zip(count: int = 12) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            data = io.BytesIO()
            Image.new("RGB", (96, 96), (index * 20, 80, 160)).save(data, format="PNG")
            archive.writestr(f"photos/{index:02d}.png", data.getvalue())
        archive.writestr("__MACOSX/._00.png", b"junk")
    return buffer.getvalue()


async def test_train_intake_and_its_job_in_chinese(fake, bot):
    refused = await fake.slash_command("train", {"name": "bad"}, user=fake.alice, locale=ZH,
                                       attachments={"photos": ("bad.zip", b"this is not a zip")})
    await refused.wait_response(timeout=3)
    private = await refused.wait_original(lambda m: "❌" in m.content, timeout=30)
    assert private.content == "❌ 这个文件不是 zip 压缩包，或者已损坏。请把照片打包成 .zip 后上传。"

    ix = await fake.slash_command("train", {"name": "ada"}, user=fake.alice, locale=ZH,
                                  attachments={"photos": ("ada.zip", photo_zip())})
    summary = (await ix.wait_original(lambda m: "已接受" in (m.content or ""), timeout=60)).content
    assert re.fullmatch(r"✅ 已接受 12 张图片。忽略了 1 个系统文件或文件夹。\n`ada` 的训练任务 #\d+：400 步，"
                        r"在这个工作进程（cpu）上大约需要 13 分钟。", summary), summary
    job = int(re.search(r"训练任务 #(\d+)", summary)[1])
    status = await fake.wait_for(lambda: next((m for m in ix.followups if not m.ephemeral), None), timeout=10,
                                 what="the job's public message")
    first = contents(status)[0]
    assert re.fullmatch(rf"⏳ 任务 #{job} (排在队列第 \*\*1\*\* 位|在队列中)：\*训练 LoRA `ada`\*", first), first
    # Training, then cancelled (on the worker: its lane ends it), each said in Chinese on the public message.
    await fake.wait_for(lambda: status.content.startswith(f"🧠 任务 #{job}：") and "LoRA `ada`" in status.content,
                        timeout=120, what="the training's progress in Chinese")
    assert await reply(fake, "cancel", {"job": job}, locale=ZH) == f"任务 #{job} 已取消。"
    await fake.wait_for(lambda: status.content == f"🚫 任务 #{job} 已取消：*训练 LoRA `ada`*；已生成的检查点会保留",
                        timeout=120, what="the cancelled training's message in Chinese")
    assert fake.spec_violations == []
