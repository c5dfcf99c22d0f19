"""Every reply the bot's commands and buttons write, in English and Simplified Chinese.

A message id maps to (English, 简体中文); both are `str.format` templates with the same fields
(tests/unit/bot/test_i18n_catalog.py holds them to that). Write a new reply here, then call
`tr(interaction, "its.id", field=...)` or raise `UserFacingError(Text("its.id", field=...))`.
Discord markdown, mentions and `/commands` stay as they are in both languages: members type the
English command names too.
"""

from __future__ import annotations

from .catalog_jobs import JOB_MESSAGES

CATALOG: dict[str, tuple[str, str]] = {
    # -- errors (bot/reporting.py) ------------------------------------------------------------------------------
    "error.bot": ("Something went wrong on our side; the error was logged.",
                  "我们这边出了点问题，错误已记录。"),
    "error.not_allowed": ("You are not allowed to use this command here.",
                          "你不能在这里使用这个命令。"),

    # -- per-member limits (bot/limits.py) -----------------------------------------------------------------------
    "limits.queue_full": ("You already have {active} jobs in the queue (the limit is {limit}). "
                          "Wait for one to finish, or cancel one with `/cancel`.",
                          "你已有 {active} 个任务在排队（上限为 {limit} 个）。请等其中一个完成，或用 `/cancel` 取消一个。"),
    "limits.slow_down": ("Slow down: at most {count} requests every {period:g} seconds.",
                         "请慢一点：每 {period:g} 秒最多 {count} 次请求。"),
    "limits.daily_trainings": ("This server allows {count} training(s) per member per day.",
                               "本服务器每位成员每天最多训练 {count} 次。"),
    "limits.banned": ("You are banned from using this bot here.", "你已被禁止在此服务器使用本机器人。"),

    # -- job states, as members read them ------------------------------------------------------------------------
    "status.awaiting_approval": ("awaiting approval", "等待审批"),
    "status.queued": ("queued", "排队中"),
    "status.running": ("running", "生成中"),
    "status.delivering": ("delivering", "发送中"),
    "status.done": ("done", "已完成"),
    "status.failed": ("failed", "已失败"),
    "status.cancelled": ("cancelled", "已取消"),
    "expiry.permanent": ("permanently", "永久"),
    "expiry.until": ("until {when}", "直到 {when}"),

    # -- /queue and /cancel ---------------------------------------------------------------------------------------
    "queue.empty": ("You have no jobs in the queue.", "你没有排队中的任务。"),
    "queue.position": ("position {position} in the queue", "队列第 {position} 位"),
    "queue.position_training": ("position {position} in the training queue", "训练队列第 {position} 位"),
    "queue.paused": ("waiting: moderators paused the queue in this server", "等待中：管理员暂停了本服务器的队列"),
    "queue.awaiting_approval": ("waiting for a moderator's approval", "等待管理员审批"),
    "queue.running": ("generating now", "正在生成"),
    "queue.delivering": ("posting the result", "正在发送结果"),
    "queue.line": ("**#{job}** {state}: *{what}*", "**#{job}** {state}：*{what}*"),
    "cancel.no_such_job": ("You have no job #{job}. See your jobs with `/queue`.",
                           "你没有 #{job} 号任务。用 `/queue` 查看你的任务。"),
    "cancel.already": ("Job #{job} is already {status}; there is nothing to cancel.",
                       "任务 #{job} 的状态是“{status}”，无需取消。"),
    "cancel.not_now": ("Job #{job} could not be cancelled right now; it may have just finished.",
                       "任务 #{job} 暂时无法取消，它可能刚刚完成。"),
    "cancel.done": ("Job #{job} is cancelled.", "任务 #{job} 已取消。"),

    # -- /mod -----------------------------------------------------------------------------------------------------
    "mod.dm": ("Moderator commands work in a server, not in DMs.", "管理命令只能在服务器中使用，不能在私信中使用。"),
    "mod.only": ("Only moderators (Manage Server, or the moderator role) can use /mod commands.",
                 "只有管理员（拥有“管理服务器”权限或管理员身份组）才能使用 /mod 命令。"),
    "mod.role_needs_manage": ("Only members with Manage Server can choose the moderator role.",
                              "只有拥有“管理服务器”权限的成员才能设置管理员身份组。"),
    "mod.role_set": ("Members with {role} are now moderators.", "拥有 {role} 的成员现在是管理员。"),
    "mod.role_cleared": ("The moderator role is cleared.", "已清除管理员身份组。"),
    "mod.channel_set": ("Approvals will be posted in {channel}.", "审批请求将发布在 {channel}。"),
    "mod.no_such_job": ("There is no job #{job} in this server.", "本服务器没有 #{job} 号任务。"),
    "mod.already": ("Job #{job} is already {status}.", "任务 #{job} 的状态已是“{status}”。"),
    "mod.cancelled": ("Job #{job} of <@{user}> is cancelled.", "<@{user}> 的任务 #{job} 已取消。"),
    "mod.cleared_of": ("Cancelled {count} job(s) of {user} in this server.", "已取消 {user} 在本服务器的 {count} 个任务。"),
    "mod.cleared_all": ("Cancelled {count} job(s) in this server.", "已取消本服务器的 {count} 个任务。"),
    "mod.paused": ("⏸️ The queue is paused. Jobs wait and keep their place; `/mod resume` to go on.",
                   "⏸️ 队列已暂停。任务会保留位置继续等待；用 `/mod resume` 恢复。"),
    "mod.resumed": ("▶️ The queue runs again.", "▶️ 队列已恢复运行。"),
    "mod.ban_self": ("You cannot ban yourself.", "你不能封禁自己。"),
    "mod.banned": ("{user} is banned {expiry}; {count} of their job(s) cancelled.",
                   "{user} 已被封禁（{expiry}）；其 {count} 个任务已取消。"),
    "mod.not_banned": ("{user} is not banned here.", "{user} 在本服务器未被封禁。"),
    "mod.unbanned": ("{user} may use the bot again.", "{user} 可以再次使用本机器人。"),
    "mod.ban_line": ("<@{user}> {expiry} (by <@{moderator}>)", "<@{user}> {expiry}（由 <@{moderator}> 封禁）"),
    "mod.ban_reason": (": {reason}", "：{reason}"),
    "mod.no_bans": ("Nobody is banned.", "没有被封禁的成员。"),
    "mod.no_audit": ("No moderator actions yet.", "还没有管理操作记录。"),
    "mod.limits_title": ("**Limits in this server**", "**本服务器的限制**"),
    "mod.limits_default": ("{value} (default)", "{value}（默认）"),
    "mod.limits_queued": ("Jobs waiting per member: {value}", "每位成员排队任务数：{value}"),
    "mod.limits_rate": ("Requests per member: {count} per minute", "每位成员请求数：每分钟 {count} 次"),
    "mod.limits_rate_default": ("Requests per member: {count} per {period:g} s (default)",
                                "每位成员请求数：每 {period:g} 秒 {count} 次（默认）"),
    "mod.limits_trainings": ("Trainings per member per day: {value}", "每位成员每天训练次数：{value}"),
    "mod.limits_no_limit": ("no limit set", "未设上限"),
    "mod.limits_count": ("Images per request: {value}", "每次请求图片数：{value}"),
    "mod.limits_steps": ("Steps per image: {value}", "每张图片步数：{value}"),
    "mod.limits_imports": ("Imported LoRAs per member: {count}, {mib} MiB", "每位成员可导入 LoRA：{count} 个，{mib} MiB"),
    "mod.content": ("Blocklisted prompts in age-restricted channels: {exempt}\nImages as spoilers: {spoilers}",
                    "年龄限制频道中的屏蔽词提示词：{exempt}\n图片以剧透遮罩发送：{spoilers}"),
    "mod.content_check": ("Image safety check of results: **{mode}** (off, spoiler or block); in age-restricted "
                          "channels: **{rule}** (allow: not checked; same: checked like everywhere)",
                          "结果图片的安全检查：**{mode}**（off 关闭、spoiler 剧透遮罩或 block 拦截）；年龄限制频道："
                          "**{rule}**（allow：不检查；same：与其他频道相同）"),
    "mod.content_check_missing": ("The image safety check cannot run on this bot ({problem}). The bot's admin "
                                  "installs the `safety` extra (`pip install -e \".[safety]\"`) and restarts it; "
                                  "the mode stays as it was.",
                                  "本机器人无法运行图片安全检查（{problem}）。请机器人管理员安装 `safety` 扩展"
                                  "（`pip install -e \".[safety]\"`）并重启；模式保持不变。"),
    "mod.allowed": ("allowed", "允许"),
    "mod.refused": ("refused", "拒绝"),
    "imagine.enhancer_off": ("The prompt enhancer is turned off on this bot (PROMPT_ENHANCER=off): "
                             "ask again without `enhance`.",
                             "本机器人已关闭提示词扩写（PROMPT_ENHANCER=off）：请去掉 `enhance` 选项后重试。"),
    "mod.variety": ("Seed variance in this server: **{strength:g}**. Each image's prompt embedding gets noise "
                    "from its seed, so Reroll and Variations differ more (same seed, same image).",
                    "本服务器的种子变化强度：**{strength:g}**。每张图片的提示词嵌入会加入由其种子决定的噪声，"
                    "让重新生成和变体的差异更大（相同种子仍得到相同图片）。"),
    "mod.variety_off": ("Seed variance in this server: **off** (0). Set it with `/mod variety seed_variance:0.2`.",
                        "本服务器的种子变化强度：**关闭**（0）。可用 `/mod variety seed_variance:0.2` 设置。"),
    "mod.on": ("on", "开"),
    "mod.off": ("off", "关"),
    "mod.blocklist_already": ("`{pattern}` is already on the blocklist.", "`{pattern}` 已在屏蔽词列表中。"),
    "mod.blocklist_added": ("Prompts containing `{pattern}` are now refused.", "包含 `{pattern}` 的提示词现在会被拒绝。"),
    "mod.blocklist_missing": ("`{pattern}` is not on the blocklist.", "`{pattern}` 不在屏蔽词列表中。"),
    "mod.blocklist_removed": ("`{pattern}` is off the blocklist.", "`{pattern}` 已从屏蔽词列表移除。"),
    "mod.blocklist_empty": ("The blocklist is empty.", "屏蔽词列表为空。"),
    "mod.approval_on": ("Training jobs now wait for approval in {where}.", "训练任务现在需要在 {where} 审批。"),
    "mod.approval_nowhere": ("the channel set with `/mod channel` (none yet)", "用 `/mod channel` 设置的频道（尚未设置）"),
    "mod.approval_off": ("Training jobs no longer need approval.", "训练任务不再需要审批。"),

    # -- the /mod queue listing (bot/cogs/mod_views.py) -------------------------------------------------------------
    "modq.header": ("**Queue of this server**: {count} active job(s)", "**本服务器的队列**：{count} 个活动任务"),
    "modq.paused": (" — ⏸️ paused", " — ⏸️ 已暂停"),
    "modq.nothing": ("Nothing is waiting or running.", "没有等待或运行中的任务。"),
    "modq.page": ("Page {page}/{pages}", "第 {page}/{pages} 页"),
    "modq.previous": ("◀ Previous", "◀ 上一页"),
    "modq.next": ("Next ▶", "下一页 ▶"),
    "modq.queued_at": ("queued, position {position}", "排队中，第 {position} 位"),
    "modq.queued_paused": ("queued (paused)", "排队中（已暂停）"),
    "modq.line": ("**#{job}** <@{user}> {kind}, {state}, {age} old: *{what}*",
                  "**#{job}** <@{user}> {kind}，{state}，已等 {age}：*{what}*"),
    "modq.only": ("Only moderators can page through the server's queue.", "只有管理员才能翻看本服务器的队列。"),

    # -- /workers and the workers section of /mod queue (bot/workers_overview.py, bot/cogs/workers.py) ---------------
    "worker_state.down": ("down", "未运行"),
    "worker_state.refused": ("refused the connection", "拒绝连接"),
    "worker_state.loading": ("loading the model", "正在加载模型"),
    "worker_state.idle": ("ready, idle", "就绪，空闲"),
    "worker_state.generating": ("generating", "生成中"),
    "worker_state.training": ("training", "训练中"),
    "workers.refusal": (" ({reason})", "（原因：{reason}）"),
    "workers.header": ("**GPU workers**: {count}, {ready} ready", "**GPU 工作进程**：共 {count} 个，{ready} 个就绪"),
    "workers.row": ("**{name}** (`{endpoint}`): {state}", "**{name}**（端点 `{endpoint}`）：{state}"),
    "workers.row_unnamed": ("**`{endpoint}`**: {state}", "**端点 `{endpoint}`**：{state}"),
    "workers.device": ("{device}, pid {pid}", "设备 {device}，pid {pid}"),
    "workers.memory": ("GPU memory {used:.1f}/{total:.1f} GiB", "显存 {used:.1f}/{total:.1f} GiB"),
    "workers.utilization": ("{percent:.0f}% busy", "利用率 {percent:.0f}%"),
    "workers.jobs": ("jobs: {jobs}", "任务：{jobs}"),
    "workers.no_jobs": ("no jobs", "无任务"),
    "workers.elsewhere": ("{kind} of another server", "其他服务器的 {kind}"),
    "workers.rate": ("{rate:.1f} images/min", "{rate:.1f} 张图片/分钟"),
    "workers.restarts": ("restarted {count}×", "已重启 {count} 次"),
    "workers.section": ("**GPU workers** (details: `/workers`)", "**GPU 工作进程**（详情：`/workers`）"),
    "workers.short": ("{name}: {state}, {rate:.1f} images/min", "{name}：{state}，{rate:.1f} 张图片/分钟"),
    "workers.short_jobs": (" — {jobs}", " — 任务：{jobs}"),
    "workers.dm": ("/workers works in a server, not in DMs.", "/workers 只能在服务器中使用，不能在私信中使用。"),
    "workers.only": ("Only moderators (Manage Server, or the moderator role) can see the GPU workers.",
                     "只有管理员（拥有“管理服务器”权限或管理员身份组）才能查看 GPU 工作进程。"),

    # -- /lora ----------------------------------------------------------------------------------------------------
    "lora.dm": ("LoRAs belong to a server: use /lora in a server channel.", "LoRA 属于服务器：请在服务器频道中使用 /lora。"),
    "lora.imported": ("✅ Imported `{name}` ({format} format): rank {rank}, alpha {alpha:g}, {layers} layers, {mb:.1f} MB. "
                      "It is private: `/lora use {name}` to use it, `/lora share {name}` to let this server use it.",
                      "✅ 已导入 `{name}`（{format} 格式）：rank {rank}，alpha {alpha:g}，{layers} 层，{mb:.1f} MB。"
                      "它是私有的：用 `/lora use {name}` 使用它，用 `/lora share {name}` 让本服务器的成员也能使用。"),
    "lora.line": ("`{name}` {label}, rank {rank}", "`{name}` {label}，rank {rank}"),
    "lora.step": ("step {step}", "第 {step} 步"),
    "lora.imported_from": ("imported ({source})", "导入（{source}）"),
    "lora.yours_shared": (" (yours, shared)", "（你的，已共享）"),
    "lora.yours_private": (" (yours, private)", "（你的，私有）"),
    "lora.shared_by": (" (shared by <@{owner}>)", "（由 <@{owner}> 共享）"),
    "lora.in_use": (" — in use at {scale:g}", " — 使用中，强度 {scale:g}"),
    "lora.more": ("… and more: type a name in `/lora info`.", "……还有更多：在 `/lora info` 中输入名称查看。"),
    "lora.none": ("You have no LoRAs here yet: train one with `/train` or bring one with `/lora import`.",
                  "你在这里还没有 LoRA：用 `/train` 训练一个，或用 `/lora import` 导入一个。"),
    "lora.info_title": ("**{name}** — owner <@{owner}>, {where}", "**{name}** — 所有者 <@{owner}>，{where}"),
    "lora.info_shared": ("shared in this server", "已在本服务器共享"),
    "lora.info_private": ("private", "私有"),
    "lora.info_rank": ("rank {rank}", "rank {rank}"),
    "lora.info_alpha": (", alpha {alpha:g}", "，alpha {alpha:g}"),
    "lora.info_size": (", {layers} layers, {mb:.1f} MB", "，{layers} 层，{mb:.1f} MB"),
    "lora.info_trained": ("trained here: step {step}", "在这里训练：第 {step} 步"),
    "lora.info_imported": ("imported from `{origin}` ({source} format)", "导入自 `{origin}`（{source} 格式）"),
    "lora.info_created": ("created {when}", "创建于 {when}"),
    "lora.shared": ("`{name}` is now shared: everyone here can use it.", "`{name}` 已共享：这里的所有人都可以使用它。"),
    "lora.unshared": ("`{name}` is private again.", "`{name}` 已恢复为私有。"),
    "lora.unshared_dropped": ("`{name}` is private again ({count} member(s) stopped using it).",
                              "`{name}` 已恢复为私有（{count} 位成员不再使用它）。"),
    "lora.renamed": ("`{old}` is now `{new}`.", "`{old}` 已改名为 `{new}`。"),
    "lora.deleted": ("Deleted `{name}` and its files.", "已删除 `{name}` 及其文件。"),
    "lora.export": ("`{name}` (links expire in {days:g} days):\n• diffusers: [{ours}]({ours_link})\n"
                    "• ComfyUI / ai-toolkit: [{comfy}]({comfy_link})",
                    "`{name}`（链接 {days:g} 天后失效）：\n• diffusers：[{ours}]({ours_link})\n"
                    "• ComfyUI / ai-toolkit：[{comfy}]({comfy_link})"),
    "lora.using": ("Your /imagine images now use {stack}. `/lora clear` to stop.",
                   "你的 /imagine 图片现在使用 {stack}。用 `/lora clear` 停止。"),
    "lora.stack_item": ("`{name}` at {scale:g}", "`{name}`（强度 {scale:g}）"),
    "lora.cleared": ("Your /imagine images use the base model again.", "你的 /imagine 图片已恢复使用基础模型。"),
    "lora.was_not_using": ("You were not using a LoRA.", "你没有在使用 LoRA。"),
    "lora.stopped_one": ("Stopped using `{name}`; still using {rest}.", "已停止使用 `{name}`；仍在使用 {rest}。"),
    "lora.stopped_last": ("Stopped using `{name}`; back to the base model.", "已停止使用 `{name}`；恢复使用基础模型。"),

    # -- /settings (bot/cogs/member_settings.py) and private results (bot/jobs/delivery.py) ----------------------
    "settings.title": ("Your /imagine defaults (the same in every server and in DMs):",
                       "你的 /imagine 默认设置（在所有服务器和私信中相同）："),
    "settings.saved": ("✅ Saved. Your /imagine defaults now (the same in every server and in DMs):",
                       "✅ 已保存。你现在的 /imagine 默认设置（在所有服务器和私信中相同）："),
    "settings.reset": ("✅ Your settings are forgotten: /imagine uses the bot's defaults again.",
                       "✅ 已清除你的设置：/imagine 重新使用机器人的默认值。"),
    "settings.aspect": ("• aspect: {value}", "• 比例：{value}"),
    "settings.steps": ("• steps: {value}", "• 步数：{value}"),
    "settings.count": ("• count: {value}", "• 数量：{value}"),
    "settings.bot_default": ("{value} (the bot's default)", "{value}（机器人默认值）"),
    "settings.private_on": ("• results: **private**, seen by you alone (an ephemeral message, or a DM after 15 minutes)",
                            "• 结果：**私密**，只有你能看到（临时消息，15 分钟后改为私信）"),
    "settings.private_off": ("• results: posted in the channel", "• 结果：发到频道中"),
    "settings.footer": ("Options typed into /imagine override these, and a server's limits cap them. "
                        "Change one with e.g. `/settings steps:4`; forget them all with `/settings reset:True`.",
                        "在 /imagine 中填写的选项优先于这些设置，服务器的限制也会对其设上限。"
                        "用 `/settings steps:4` 等修改一项；用 `/settings reset:True` 全部清除。"),
    "settings.bad_aspect": ("`{aspect}` is not an aspect the bot offers; pick one of {aspects}.",
                            "`{aspect}` 不是机器人提供的比例；请从 {aspects} 中选择。"),
    "settings.bad_range": ("`{option}` must be between {low} and {high}.", "`{option}` 必须在 {low} 到 {high} 之间。"),
    "safety.withheld": ("<@{user}> job #{job}: the picture was withheld by this server's image safety check.",
                        "<@{user}> 任务 #{job}：图片被本服务器的图片安全检查拦截，未发送。"),
    "safety.withheld_private": ("Job #{job}: your picture was not posted: this server's image safety check flagged "
                                "it. Nothing of it was shown in the channel.",
                                "任务 #{job}：你的图片未发送：本服务器的图片安全检查将其标记为不适宜内容。"
                                "频道中没有显示它的任何内容。"),
    "settings.private_undelivered": ("<@{user}> job #{job}: your results are set to private, and they could not reach "
                                     "you: the private reply had expired and your direct messages are closed to this "
                                     "bot. Allow direct messages from this server's members (Privacy Settings) to get "
                                     "private results later; nothing was posted here.",
                                     "<@{user}> 任务 #{job}：你的结果设为私密，但无法送达：临时回复已过期，且你关闭了"
                                     "来自本机器人的私信。请在隐私设置中允许来自本服务器成员的私信，以便之后接收私密"
                                     "结果；这里没有发布任何内容。"),
    # -- /train failures the member can relay (bot/jobs/outcomes.py) ----------------------------------------------
    "train.adapter_failed": ("the training adapter could not be used ({detail}). Nothing was trained. An admin can set "
                             "`TRAINING_ADAPTER=none` (train without it; LoRAs may come out blurrier at 8 steps) or "
                             "`TRAINING_ADAPTER=/path/to/adapter.safetensors` (a file on the GPU worker), then you "
                             "can try again.",
                             "训练适配器无法使用（{detail}）。本次没有进行任何训练。管理员可以设置 "
                             "`TRAINING_ADAPTER=none`（不使用适配器训练；LoRA 在 8 步下可能更模糊），或设置 "
                             "`TRAINING_ADAPTER=/path/to/adapter.safetensors`（GPU 工作进程所在机器上的文件），"
                             "之后你可以再试一次。"),
    # -- a result's picture buttons and image prompts (bot/variants.py, bot/image_prompt.py) ---------------------
    "button.reroll": ("Reroll", "重新生成"),
    "button.variations": ("Variations", "变体"),
    "button.delete": ("Delete", "删除"),
    "button.subtle": ("Vary (Subtle)", "微调变化"),
    "button.strong": ("Vary (Strong)", "大幅变化"),
    "button.upscale": ("Upscale 2×", "放大 2×"),
    "button.zoom15": ("Zoom Out 1.5×", "缩小 1.5×"),
    "button.zoom2": ("Zoom Out 2×", "缩小 2×"),
    "button.left": ("Pan", "左移"),
    "button.right": ("Pan", "右移"),
    "button.up": ("Pan", "上移"),
    "button.down": ("Pan", "下移"),
    "variants.not_finished": ("This image is not finished yet, or it failed: there is no picture to start from.",
                              "这张图片尚未完成或已失败：没有可用作起点的图片。"),
    "variants.not_here": ("This image was made elsewhere; you can only start from results of this server.",
                          "这张图片来自别处；你只能基于本服务器的结果继续创作。"),
    "variants.gone": ("The original image is no longer kept by the bot, so nothing can be made from it.",
                      "机器人已不再保存原图，无法基于它继续创作。"),
    "variants.too_large": ("This image is already upscaled; it cannot be upscaled again.",
                           "这张图片已经放大过，不能再次放大。"),
    "image_prompt.strength_without_image": ("`strength` only applies with an `image`: attach a picture, or leave "
                                            "`strength` out.",
                                            "`strength` 只在提供 `image` 时有效：请附上图片，或不要填写 `strength`。"),
    "image_prompt.bad_image": ("Your image cannot be used: {reason}. Send a JPEG, PNG or WebP picture.",
                               "你的图片无法使用：{reason}。请发送 JPEG、PNG 或 WebP 图片。"),
    "image_prompt.too_big": ("Your image is larger than the {limit} MiB limit.", "你的图片超过了 {limit} MiB 的上限。"),
}

# The job, intake and LoRA library messages live in their own module (the catalog in one file would be too long to read).
_SHARED = CATALOG.keys() & JOB_MESSAGES.keys()
if _SHARED:  # a message id defined twice would silently lose one text
    raise RuntimeError(f"message ids defined twice: {sorted(_SHARED)}")
CATALOG.update(JOB_MESSAGES)
