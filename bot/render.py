"""What a job's message says in each state: text and embeds, no Discord calls."""

from __future__ import annotations

import discord

from .db.models import Job

EMBED_COLOUR = discord.Colour.from_rgb(88, 101, 242)
PROGRESS_BAR_WIDTH = 16


def short_prompt(prompt: str, limit: int = 80) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"


def queued_text(job: Job, position: int | None, paused: bool = False) -> str:
    if paused:
        where = "waiting: moderators paused the queue in this server; it keeps its place"
    else:
        where = f"position **{position}** in the queue" if position else "in the queue"
    return f"⏳ Job #{job.id} is {where}: *{short_prompt(job.params['prompt'])}*"


def progress_text(job: Job, step: int, total: int) -> str:
    filled = round(PROGRESS_BAR_WIDTH * step / max(total, 1))
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    return f"🎨 Job #{job.id}: step {step}/{total} `{bar}` *{short_prompt(job.params['prompt'])}*"


def starting_text(job: Job) -> str:
    return f"🎨 Job #{job.id} is starting: *{short_prompt(job.params['prompt'])}*"


def done_text(job: Job, part: int = 0, parts: int = 1) -> str:
    suffix = f" (part {part + 1}/{parts})" if parts > 1 else ""
    return f"<@{job.user_id}> here is job #{job.id}{suffix}"


def failed_text(job: Job, reason: str) -> str:
    return f"<@{job.user_id}> ❌ Job #{job.id} failed: {reason}"


def cancelled_text(job: Job) -> str:
    return f"🚫 Job #{job.id} was cancelled: *{short_prompt(job.params['prompt'])}*"


def result_embed(job: Job) -> discord.Embed:
    params, result = job.params, job.result or {}
    embed = discord.Embed(description=params["prompt"][:4000], colour=EMBED_COLOUR)
    embed.set_author(name=f"Job #{job.id}")
    embed.add_field(name="Size", value=f"{params['width']}×{params['height']} ({params.get('aspect', '')})")
    embed.add_field(name="Seed" + ("s" if len(params["seeds"]) > 1 else ""),
                    value=", ".join(str(seed) for seed in params["seeds"]))
    embed.add_field(name="Steps", value=str(params["steps"]))
    embed.add_field(name="Model", value=str(result.get("model", "?"))[:100])
    if "seconds" in result:
        embed.add_field(name="Time", value=f"{result['seconds']:.1f} s")
    return embed
