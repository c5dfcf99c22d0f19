"""Chinese (zh-CN) names and descriptions of the slash commands, keyed by their English text.

discord.py hands every command, group, option and choice string to the tree's Translator when it
syncs (bot/i18n/translator.py), which looks them up here; the English in the cogs stays the
source. A string with no entry is synced without a zh-CN localisation (tests/unit/bot/test_i18n_commands.py
lists any the cogs have that this file lacks). Localised names follow Discord's rules for names:
lowercase, 1-32 characters of letters, digits, - and _ (Chinese characters are letters); `lora`
stays `lora`, the word Chinese members use too.
"""

from __future__ import annotations

# Command, subcommand and group names.
COMMAND_NAMES: dict[str, str] = {
    "imagine": "画图", "queue": "队列", "cancel": "取消", "train": "训练", "mod": "管理", "workers": "工作进程",
    "settings": "设置",
    # /lora
    "import": "导入", "list": "列表", "info": "详情", "share": "共享", "unshare": "取消共享", "rename": "重命名",
    "delete": "删除", "export": "导出", "use": "使用", "clear": "清除",
    # /mod
    "role": "身份组", "channel": "频道", "pause": "暂停", "resume": "恢复", "ban": "封禁", "unban": "解封",
    "bans": "封禁列表", "limits": "限制", "content": "内容", "audit": "操作日志", "blocklist": "屏蔽词",
    "add": "添加", "remove": "移除", "approve-training": "训练审批", "on": "开启", "off": "关闭",
    "variety": "多样性",
}

# Option names; unique within each command in both languages.
OPTION_NAMES: dict[str, str] = {
    "prompt": "提示词", "aspect": "比例", "seed": "种子", "count": "数量", "steps": "步数",
    "name": "名称", "new_name": "新名称", "file": "文件", "url": "链接", "scale": "强度", "photos": "照片",
    "caption": "描述", "job": "任务", "user": "成员", "role": "身份组", "channel": "频道", "reason": "原因",
    "duration": "时长", "pattern": "规则", "max_queued": "排队上限", "per_minute": "每分钟请求数",
    "trainings_per_day": "每日训练次数", "max_count": "每次图片数", "max_steps": "步数上限",
    "lora_imports": "导入数量", "lora_import_mb": "导入容量mb", "allow_in_age_restricted": "年龄限制频道放行",
    "spoilers": "剧透遮罩", "private": "私密", "reset": "重置", "image": "图片", "strength": "重绘强度",
    "enhance": "扩写提示词", "seed_variance": "种子变化强度", "mode": "模式", "age_restricted_channels": "年龄限制频道",
}

# Descriptions of commands, groups and options.
DESCRIPTIONS: dict[str, str] = {
    # /imagine
    "Generate images from a text prompt with Z-Image-Turbo": "用 Z-Image-Turbo 根据文字提示词生成图片",
    "What to draw": "要画什么（中文或英文）",
    "Aspect ratio (about one megapixel)": "宽高比（约一百万像素）",
    "Seed for reproducible images (random when left out)": "随机种子，用于复现图片（不填则随机）",
    "How many images (1-4)": "图片数量（1-4）",
    "Denoising steps (8 is what Turbo was made for)": "去噪步数（Turbo 为 8 步设计）",
    "A LoRA for this image only, instead of those picked with /lora use": "仅用于本次的 LoRA，代替 /lora use 选择的那些",
    # /settings
    "Your /imagine defaults and private results": "你的 /imagine 默认设置和私密结果",
    "Aspect ratio when /imagine leaves it out": "/imagine 未填写时使用的宽高比",
    "Steps when /imagine leaves them out (1-16)": "/imagine 未填写时使用的步数（1-16）",
    "Images per /imagine when it leaves count out (1-4)": "/imagine 未填写数量时每次的图片数（1-4）",
    "Results seen by you alone (an ephemeral message, or a DM), not posted in the channel":
        "结果只有你能看到（临时消息或私信），不发到频道",
    "Forget all your settings first (back to the bot's defaults)": "先清除你的全部设置（恢复机器人的默认值）",
    "A picture to start from (JPEG, PNG or WebP)": "作为起点的图片（JPEG、PNG 或 WebP）",
    "How much of the picture is redrawn with image (0.1-1.0, default 0.6)":
        "配合 image 使用：图片被重绘的程度（0.1-1.0，默认 0.6）",
    "Rewrite the prompt in detail first (a different rewrite per image)": "先把提示词扩写得更详细（每张图片一种不同的扩写）",
    # /queue, /cancel
    "Show your jobs and their places in the queue": "查看你的任务及其排队位置",
    "Cancel one of your jobs": "取消你的一个任务",
    "The job number (see /queue)": "任务编号（见 /queue）",
    # /train
    "Train a LoRA of a person or style from a zip of photos": "用一个照片 zip 训练人物或风格的 LoRA",
    "Name of the LoRA (lowercase, digits, - and _)": "LoRA 名称（小写字母、数字、- 和 _）",
    "A .zip of 10+ photos": "包含 10 张以上照片的 .zip",
    "Caption for every image (default: 'a photo of <name>'); a .txt beside an image overrides it":
        "每张图片的描述（默认：'a photo of <名称>'）；图片旁的 .txt 优先",
    "Training steps (default from the server settings, usually 4000)": "训练步数（默认取服务器设置，通常为 4000）",
    "An https link to a zip, for archives over the upload limit": "zip 的 https 链接，用于超过上传限制的压缩包",
    # /lora
    "Your LoRA adapters": "你的 LoRA 适配器",
    "Import a LoRA (.safetensors) from a file or an https link": "从文件或 https 链接导入 LoRA（.safetensors）",
    "Name in this server (lowercase, digits, - and _)": "在本服务器中的名称（小写字母、数字、- 和 _）",
    "A .safetensors LoRA file": ".safetensors 格式的 LoRA 文件",
    "An https link to a .safetensors LoRA, for files over the upload limit":
        ".safetensors LoRA 的 https 链接，用于超过上传限制的文件",
    "Your LoRAs and those shared in this server": "你的 LoRA 和本服务器共享的 LoRA",
    "Details of a LoRA, with its last sample image": "LoRA 的详情及最新样图",
    "One of your LoRAs or one shared here": "你的 LoRA 或这里共享的 LoRA",
    "Let everyone in this server use one of your LoRAs": "让本服务器所有人都能使用你的一个 LoRA",
    "Make one of your LoRAs private again": "把你的一个 LoRA 改回私有",
    "Rename one of your LoRAs": "重命名你的一个 LoRA",
    "Delete a LoRA and its files (its owner or a moderator)": "删除 LoRA 及其文件（所有者或管理员）",
    "Download links for a LoRA: diffusers and ComfyUI formats": "LoRA 的下载链接：diffusers 和 ComfyUI 格式",
    "Add a LoRA to your next /imagine images (several can be stacked)": "在之后的 /imagine 图片中加入 LoRA（可叠加多个）",
    "One of your LoRAs (or one shared here)": "你的 LoRA（或这里共享的 LoRA）",
    "Strength, 0-2 (default 0.8)": "强度，0-2（默认 0.8）",
    "Stop using one LoRA, or all of them (back to the base model)": "停止使用一个或全部 LoRA（恢复基础模型）",
    "Only this LoRA (default: all)": "只停止这个 LoRA（默认：全部）",
    # /mod
    "Moderator tools for the image queue": "图片队列的管理工具",
    "Words or patterns refused in prompts": "提示词中禁止的词语或规则",
    "Require approval of /train jobs": "/train 任务需要审批",
    "Set (or clear) the role whose members are moderators": "设置（或清除）管理员身份组",
    "Leave empty to clear: then only Manage Server members moderate": "留空即清除：之后只有拥有“管理服务器”权限的成员是管理员",
    "Channel where moderator approvals are posted": "发布审批请求的频道",
    "All active jobs of this server": "本服务器所有活动任务",
    "Cancel any job of this server": "取消本服务器的任意任务",
    "The job number": "任务编号",
    "Cancel every waiting or running job (of one member)": "取消所有等待或运行中的任务（可限定某位成员）",
    "Pause this server's queue; jobs keep their place": "暂停本服务器的队列；任务保留位置",
    "Resume this server's queue": "恢复本服务器的队列",
    "Stop a member from using the bot in this server": "禁止某位成员在本服务器使用机器人",
    "Shown to the member when they try": "成员尝试使用时看到的原因",
    "e.g. 30m, 12h, 7d, 2w; empty = permanent": "例如 30m、12h、7d、2w；留空 = 永久",
    "Let a banned member use the bot again": "允许被封禁的成员再次使用机器人",
    "Members banned from the bot in this server": "本服务器中被封禁的成员",
    "View or set this server's limits (0 = back to the default)": "查看或设置本服务器的限制（0 = 恢复默认）",
    "Jobs one member may have waiting": "每位成员可排队的任务数",
    "Requests per member per minute": "每位成员每分钟的请求数",
    "LoRA trainings per member per day": "每位成员每天的 LoRA 训练次数",
    "Images per request": "每次请求的图片数",
    "Steps per image": "每张图片的步数",
    "LoRAs one member may import here": "每位成员可在这里导入的 LoRA 数",
    "MiB of imported LoRA files one member may keep here": "每位成员可在这里保存的导入 LoRA 文件大小（MiB）",
    "Age-restricted content: blocklist exemption and spoilers": "年龄限制内容：屏蔽词豁免和剧透遮罩",
    "Blocklisted prompts pass in age-restricted channels": "年龄限制频道中放行屏蔽词提示词",
    "Post generated images as spoilers": "以剧透遮罩发送生成的图片",
    "Image safety check of every result: off, spoiler (hide flagged ones) or block them":
        "每个结果的图片安全检查：off 关闭、spoiler（给被标记的加剧透遮罩）或 block（拦截）",
    "allow: results in age-restricted channels are not checked; same: checked like everywhere else":
        "allow：年龄限制频道中的结果不检查；same：与其他频道一样检查",
    "Refuse prompts containing this word, phrase, or re:regex": "拒绝包含此词语、短语或 re:正则表达式 的提示词",
    "Take a pattern off the blocklist": "从屏蔽词列表中移除一条规则",
    "The patterns refused in prompts here": "这里禁止的提示词规则",
    "/train jobs wait for a moderator's approval": "/train 任务需等待管理员审批",
    "/train jobs start without approval": "/train 任务无需审批即可开始",
    "Recent moderator actions in this server": "本服务器最近的管理操作",
    "How different Reroll and Variations images are from each other": "重新生成和变体的图片彼此差异有多大",
    "0 to 1: noise on the prompt per seed (0 = off; 0.1-0.3 is a good start)":
        "0 到 1：按种子给提示词加的噪声（0 = 关闭；建议从 0.1-0.3 开始）",
    # /workers
    "The GPU workers: state, jobs and speed (moderators)": "GPU 工作进程：状态、任务和速度（管理员）",
}

# Choice names (the /imagine aspects are numbers and sizes: the same in both languages).
CHOICE_NAMES: dict[str, str] = {
    # /mod content mode and age_restricted_channels
    "off": "关闭", "spoiler": "剧透遮罩", "block": "拦截", "allow": "不检查", "same": "同样检查",
}
