"""What a job's message says in each state: text and embeds, no Discord calls."""

from __future__ import annotations

import discord

from zimage_protocol.messages import CheckpointReady, TrainProgress

from ..db.models import Job, JobKind, JobStatus

EMBED_COLOUR = discord.Colour.from_rgb(88, 101, 242)
PROGRESS_BAR_WIDTH = 16


def short_prompt(prompt: str, limit: int = 80) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"


def quoted(text: str) -> str:
    """A member's text inside the bot's message: shown as typed, never formatting it or pinging anyone."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def describe(job: Job, limit: int = 80) -> str:
    """A job in a few words: the prompt of a generation (escaped: see `quoted`), the name of a training."""
    if job.kind == JobKind.TRAIN:
        return f"training LoRA `{job.params['name']}`"
    return quoted(short_prompt(job.params["prompt"], limit))


def queued_text(job: Job, position: int | None, paused: bool = False) -> str:
    if job.status == JobStatus.AWAITING_APPROVAL:
        where = "waiting for a moderator's approval"
    elif paused:
        where = "waiting: moderators paused the queue in this server; it keeps its place"
    else:
        where = f"position **{position}** in the queue" if position else "in the queue"
    return f"⏳ Job #{job.id} is {where}: *{describe(job)}*"


def progress_text(job: Job, step: int, total: int) -> str:
    filled = round(PROGRESS_BAR_WIDTH * step / max(total, 1))
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    return f"🎨 Job #{job.id}: step {step}/{total} `{bar}` *{describe(job)}*"


def starting_text(job: Job) -> str:
    return f"🎨 Job #{job.id} is starting: *{describe(job)}*"


def done_text(job: Job, part: int = 0, parts: int = 1) -> str:
    suffix = f" (part {part + 1}/{parts})" if parts > 1 else ""
    return f"<@{job.user_id}> here is job #{job.id}{suffix}"


def failed_text(job: Job, reason: str) -> str:
    return f"<@{job.user_id}> ❌ Job #{job.id} failed: {reason}"


def cancelled_text(job: Job) -> str:
    kept = "; the checkpoints made so far are kept" if job.kind == JobKind.TRAIN else ""
    return f"🚫 Job #{job.id} was cancelled: *{describe(job)}*{kept}"


def result_embed(job: Job) -> discord.Embed:
    params, result = job.params, job.result or {}
    embed = discord.Embed(description=quoted(params["prompt"])[:4096], colour=EMBED_COLOUR)
    embed.set_author(name=f"Job #{job.id}")
    embed.add_field(name="Size", value=f"{params['width']}×{params['height']} ({params.get('aspect', '')})")
    embed.add_field(name="Seed" + ("s" if len(params["seeds"]) > 1 else ""),
                    value=", ".join(str(seed) for seed in params["seeds"]))
    embed.add_field(name="Steps", value=str(params["steps"]))
    embed.add_field(name="Model", value=str(result.get("model", "?"))[:100])
    if params.get("loras"):
        embed.add_field(name="LoRA", value=", ".join(f"{lora.get('label', lora['name'])} ×{lora['scale']:g}"
                                                      for lora in params["loras"]))
    if params.get("source"):  # made from a picture: which (bot/variants.py, an image prompt)
        source = params["source"]
        parent = f" of job #{source['parent']}" if source.get("parent") else ""
        embed.add_field(name="From", value=f"{source['mode']}{parent}, strength {source['strength']:g}")
    if params.get("seed_variance"):
        embed.add_field(name="Seed variance", value=f"{params['seed_variance']:g}")
    if "seconds" in result:
        embed.add_field(name="Time", value=f"{result['seconds']:.1f} s")
    add_enhanced_prompts(embed, result.get("enhanced_prompts") or [])
    return embed


ENHANCED_PROMPTS_CHARS = 3000  # all rewrites together, at most
EMBED_BUDGET = 5400  # of the 6000 characters an embed holds: the rest is for the other fields' names and values


def add_enhanced_prompts(embed: discord.Embed, prompts: list[str]) -> None:
    """The worker's rewrites (enhance), one field per image, shortened to fit the embed's limits."""
    shown = [prompt for prompt in prompts if prompt]
    if not shown:
        return
    budget = min(ENHANCED_PROMPTS_CHARS, EMBED_BUDGET - len(embed.description or ""))  # a long prompt leaves less
    limit = min(1024, budget // len(shown))  # 1024: a field's value
    if limit < 20:  # no room worth showing: the PNGs carry the rewrites in full
        return
    for number, prompt in enumerate(prompts, start=1):
        if prompt:
            name = "Enhanced prompt" + (f" {number}" if len(prompts) > 1 else "")
            embed.add_field(name=name, value=quoted(short_prompt(prompt, limit))[:limit], inline=False)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def training_text(job: Job, progress: TrainProgress | None) -> str:
    name = job.params["name"]
    if progress is None:
        return f"🧠 Job #{job.id}: training LoRA `{name}` is starting (caching latents and captions)…"
    step, total = progress.step, progress.total
    eta = duration((total - step) * progress.seconds_per_step)
    filled = round(PROGRESS_BAR_WIDTH * step / max(total, 1))
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    return (f"🧠 Job #{job.id}: training LoRA `{name}` step {step}/{total} `{bar}` loss {progress.loss:.4f}, "
            f"{progress.seconds_per_step:.2f} s/step, ETA {eta}")


def training_done_text(job: Job) -> str:
    return (f"✅ Job #{job.id}: LoRA `{job.params['name']}` finished training. "
            f"Use it with `/lora use name:{job.params['name']}`.")


def checkpoint_text(job: Job, checkpoint: CheckpointReady, link: str | None, private: bool = False) -> str:
    step, total = checkpoint.step, checkpoint.total
    eta = duration((total - step) * checkpoint.seconds_per_step)
    lines = [f"<@{job.user_id}> 📦 Job #{job.id}: checkpoint of `{job.params['name']}` at step {step}/{total}: "
             f"loss {checkpoint.loss:.4f}, {checkpoint.seconds_per_step:.2f} s/step, ETA {eta}"]
    if checkpoint.training_adapter:  # what the run merged in during its steps (TRAINING_ADAPTER), as the worker says
        lines.append(f"Training adapter: `{checkpoint.training_adapter[:200].replace('`', '')}`")
    if private:
        lines.append("The LoRA is private: its file goes to its owner only.")
    elif link:
        lines.append(f"The LoRA file is too big for Discord: [download it]({link}) (the link expires).")
    return "\n".join(lines)


def private_checkpoint_text(job: Job, checkpoint: CheckpointReady, link: str | None) -> str:
    """The LoRA file of a checkpoint, for its owner only (attached, or `link` when it is too big to attach)."""
    name = job.params["name"]
    lines = [f"📦 `{name}` at step {checkpoint.step}/{checkpoint.total} (job #{job.id}): "
             + (f"[download the LoRA file]({link}) (the link expires)." if link else "the LoRA file.")]
    lines.append(f"Only you get it while the LoRA is private; `/lora share {name}` lets this server use it.")
    return "\n".join(lines)


def approval_text(job: Job) -> str:
    config = job.params["config"]
    return (f"🔔 <@{job.user_id}> asks to train LoRA `{job.params['name']}` (job #{job.id}, {config['steps']} steps, "
            f"rank {config['rank']}) in <#{job.channel_id}>. A moderator may approve or deny it.")
