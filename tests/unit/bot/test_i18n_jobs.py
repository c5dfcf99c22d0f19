"""A job's channel messages in its requester's language: English exactly as before, Chinese for zh-CN."""

from __future__ import annotations

import pytest

from bot.db.models import Job, JobKind, JobStatus
from bot.errors import UserFacingError
from bot.i18n import CHINESE
from bot.jobs import render
from bot.jobs.outcomes import worker_crashed_message, worker_error_message
from bot.moderation import describe_expiry
from bot.reporting import user_message
from bot.training import images
from bot.training.intake import IntakeReport, Reasons
from zimage_protocol.errors import ErrorCode
from zimage_protocol.messages import CheckpointReady, TrainProgress


def image_job(locale: str | None, **params) -> Job:
    params = {"prompt": "a red fox", "aspect": "16:9", "width": 1344, "height": 768, "steps": 8, "seeds": [42, 43],
              **({"locale": locale} if locale else {}), **params}
    return Job(id=5, kind=JobKind.IMAGINE, status=JobStatus.QUEUED, user_id=11, guild_id=1, channel_id=9,
               params=params, result={"model": "tiny", "seconds": 2.345})


def train_job(locale: str | None) -> Job:
    return Job(id=6, kind=JobKind.TRAIN, status=JobStatus.RUNNING, user_id=11, guild_id=1, channel_id=9,
               params={"name": "ada", "config": {"steps": 400, "rank": 4}, **({"locale": locale} if locale else {})})


@pytest.mark.parametrize("locale", [None, "en-US", "en-GB", "fr", "zh-TW"])
def test_english_texts_are_what_they_always_were(locale):
    job = image_job(locale)
    assert render.queued_text(job, 1) == "⏳ Job #5 is position **1** in the queue: *a red fox*"
    assert render.queued_text(job, None) == "⏳ Job #5 is in the queue: *a red fox*"
    assert render.queued_text(job, None, paused=True) == (
        "⏳ Job #5 is waiting: moderators paused the queue in this server; it keeps its place: *a red fox*")
    assert render.progress_text(job, 8, 16) == "🎨 Job #5: step 8/16 `████████░░░░░░░░` *a red fox*"
    assert render.starting_text(job) == "🎨 Job #5 is starting: *a red fox*"
    assert render.done_text(job) == "<@11> here is job #5"
    assert render.done_text(job, 1, 2) == "<@11> here is job #5 (part 2/2)"
    assert render.cancelled_text(job) == "🚫 Job #5 was cancelled: *a red fox*"
    assert render.failed_text(job, worker_error_message(ErrorCode.OUT_OF_MEMORY, "")) == (
        "<@11> ❌ Job #5 failed: The GPU ran out of memory on this request. Try fewer images or a smaller size.")
    assert worker_crashed_message(JobKind.IMAGINE, 3) == (
        "The GPU worker crashed while making this image, 3 times; it was not retried again.")
    assert worker_error_message(ErrorCode.LORA, "bad rank") == "A LoRA could not be used: bad rank"
    embed = render.result_embed(image_job(locale, source={"mode": "upscale", "parent": "4", "strength": 0.35}))
    assert embed.author.name == "Job #5"
    assert {field.name: field.value for field in embed.fields} == {
        "Size": "1344×768 (16:9)", "Seeds": "42, 43", "Steps": "8", "Model": "tiny",
        "From": "upscale of job #4, strength 0.35", "Time": "2.3 s"}
    training = train_job(locale)
    assert render.training_text(training, TrainProgress(id="r", step=100, total=400, loss=0.1234,
                                                        seconds_per_step=1.5)) == (
        "🧠 Job #6: training LoRA `ada` step 100/400 `████░░░░░░░░░░░░` loss 0.1234, 1.50 s/step, ETA 8 min")
    checkpoint = CheckpointReady(id="r", step=5, total=400, loss=0.5, seconds_per_step=0.01, lora_file="",
                                 sample_png="", loss_png="")
    assert render.checkpoint_text(training, checkpoint, None, private=True) == (
        "<@11> 📦 Job #6: checkpoint of `ada` at step 5/400: loss 0.5000, 0.01 s/step, ETA 3 s\n"
        "The LoRA is private: its file goes to its owner only.")
    assert render.cancelled_text(training) == (
        "🚫 Job #6 was cancelled: *training LoRA `ada`*; the checkpoints made so far are kept")
    assert render.approval_text(training) == (
        "🔔 <@11> asks to train LoRA `ada` (job #6, 400 steps, rank 4) in <#9>. A moderator may approve or deny it.")


def test_a_zh_cn_members_job_speaks_chinese():
    job = image_job(CHINESE)
    assert render.queued_text(job, 2) == "⏳ 任务 #5 排在队列第 **2** 位：*a red fox*"
    assert render.progress_text(job, 16, 16) == "🎨 任务 #5：第 16/16 步 `████████████████` *a red fox*"
    assert render.done_text(job, 0, 2) == "<@11> 任务 #5 的结果（第 1/2 部分）"
    # A failure is stored in English (the job's `error`) and posted in the requester's language.
    reason = worker_crashed_message(JobKind.IMAGINE, 2)
    assert reason == "The GPU worker crashed while making this image, twice; it was not retried again."
    assert render.failed_text(job, reason) == "<@11> ❌ 任务 #5 失败：GPU 工作进程在生成这张图片时崩溃了两次；不再重试。"
    embed = render.result_embed(image_job(CHINESE, enhance=True))
    assert embed.author.name == "任务 #5"
    assert [field.name for field in embed.fields] == ["尺寸", "种子", "步数", "模型", "用时"]
    assert embed.fields[-1].value == "2.3 秒"
    training = train_job(CHINESE)
    assert render.training_text(training, None) == "🧠 任务 #6：LoRA `ada` 的训练即将开始（正在缓存潜变量和描述）……"
    assert render.training_done_text(training) == "✅ 任务 #6：LoRA `ada` 训练完成。用 `/lora use name:ada` 使用它。"
    # The reader's language wins in a listing: a Chinese member's training in an English member's /queue.
    assert render.describe(training, locale="en-US") == "training LoRA `ada`"
    assert render.describe(training) == "训练 LoRA `ada`"


def test_refusals_carry_their_message_id_for_the_reporter():
    error = UserFacingError(describe_expiry(None))
    assert str(error) == "permanently" and user_message(error, CHINESE) == "永久"


def test_the_intake_summary_in_both_languages():
    report = IntakeReport(accepted=12, skipped=[("a.txt", images.NOT_IMAGE), ("b.txt", images.NOT_IMAGE),
                                                ("__MACOSX/", "folder")],
                          duplicates=0, manifest_path=None, images_dir=None)  # type: ignore[arg-type]
    assert report.summary() == ("Accepted 12 images. Skipped 2: 2 not images. "
                                "Ignored 1 system file or folder.")
    assert report.summary(CHINESE) == "已接受 12 张图片。跳过 2 个：不是图片 2 个。忽略了 1 个系统文件或文件夹。"
    reasons = Reasons([images.NOT_IMAGE, images.CORRUPT, images.NOT_IMAGE])
    assert reasons == "2 not images, 1 corrupt or truncated image"
    assert reasons.localised(CHINESE) == "不是图片 2 个、图片损坏或不完整 1 个"


IMPORT_REFUSALS = [
    ("lora_import.pickle", {"filename": "x.ckpt"}, "`x.ckpt` is a pickle file, which can run code when loaded: only "
                                                   ".safetensors files are accepted.", "pickle"),
    ("lora_import.too_many", {"count": 2, "limit": 2}, "You already have 2 imported LoRAs in this server, the most "
                                                       "allowed (2). Delete one with `/lora delete` first.", "已导入 2 个"),
    ("lora_import.over_quota", {"used": 31.6, "limit": 40}, "Your imported LoRAs here take 32 MiB: with this file they "
                                                            "would pass this server's 40 MiB limit per member. Delete "
                                                            "one with `/lora delete` first.", "32 MiB"),
    ("lora_import.refused", {"detail": "The file holds no LoRA weights."}, "The file holds no LoRA weights.",
     "未通过检查"),
    ("attachment.too_large_zip", {"limit": 200}, "The zip is larger than the 200 MiB limit.", "200 MiB"),
]


@pytest.mark.parametrize(("key", "fields", "english", "in_chinese"), IMPORT_REFUSALS)
def test_lora_import_and_upload_refusals_in_the_members_language(key, fields, english, in_chinese):
    from bot.i18n import Text

    error = UserFacingError(Text(key, **fields))
    assert user_message(error, "en-US") == english
    chinese = user_message(error, CHINESE)
    assert in_chinese in chinese and chinese != english and "{" not in chinese
