"""What a job's message says in each state: text and embeds, no Discord calls.

A job's messages are posted in the channel for everyone, but they are about one member's request: they are written
in the language of the member who asked (the ``locale`` their interaction carried, kept in the job's params at
intake by bot/imagine.py and bot/training/service.py), English for a job queued before that key existed. The
guild's preferred locale was the other choice: it is what a community server's owner set, but a zh-CN member on an
English server would then be told about their own image in English, and Discord only sends it on interactions, so
a job would have to keep it anyway."""

from __future__ import annotations

import discord

from zimage_protocol.messages import CheckpointReady, TrainProgress

from ..db.models import Job, JobKind, JobStatus
from ..i18n import LocaleLike, tr

EMBED_COLOUR = discord.Colour.from_rgb(88, 101, 242)
PROGRESS_BAR_WIDTH = 16


def short_prompt(prompt: str, limit: int = 80) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"


def quoted(text: str) -> str:
    """A member's text inside the bot's message: shown as typed, never formatting it or pinging anyone."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def locale_of(job: Job) -> str | None:
    """The language of the member who asked for the job (see the module's docstring); None reads as English."""
    locale = (job.params or {}).get("locale")
    return str(locale) if locale else None


def describe(job: Job, limit: int = 80, locale: LocaleLike = None) -> str:
    """A job in a few words: the prompt of a generation (escaped: see `quoted`), the name of a training.

    `locale`: the reader's language when it is not the job's own (the /queue and /mod queue listings)."""
    if job.kind == JobKind.TRAIN:
        return tr(locale or locale_of(job), "job.training_what", name=job.params["name"])
    return quoted(short_prompt(job.params["prompt"], limit))


def queued_text(job: Job, position: int | None, paused: bool = False) -> str:
    locale = locale_of(job)
    if job.status == JobStatus.AWAITING_APPROVAL:
        where = tr(locale, "job.where_approval")
    elif paused:
        where = tr(locale, "job.where_paused")
    else:
        where = tr(locale, "job.where_position", position=position) if position else tr(locale, "job.where_queue")
    return tr(locale, "job.queued", job=job.id, where=where, what=describe(job))


def progress_text(job: Job, step: int, total: int) -> str:
    filled = round(PROGRESS_BAR_WIDTH * step / max(total, 1))
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    return tr(locale_of(job), "job.progress", job=job.id, step=step, total=total, bar=bar, what=describe(job))


def starting_text(job: Job) -> str:
    return tr(locale_of(job), "job.starting", job=job.id, what=describe(job))


def done_text(job: Job, part: int = 0, parts: int = 1) -> str:
    locale = locale_of(job)
    suffix = tr(locale, "job.part", part=part + 1, parts=parts) if parts > 1 else ""
    return tr(locale, "job.done", user=job.user_id, job=job.id, suffix=suffix)


def failed_text(job: Job, reason: str) -> str:
    """`reason` may be a Text (bot/jobs/outcomes.py): it is then written in the job's language too."""
    return tr(locale_of(job), "job.failed", user=job.user_id, job=job.id, reason=reason)


def cancelled_text(job: Job) -> str:
    locale = locale_of(job)
    kept = tr(locale, "job.checkpoints_kept") if job.kind == JobKind.TRAIN else ""
    return tr(locale, "job.cancelled", job=job.id, what=describe(job), kept=kept)


def result_embed(job: Job) -> discord.Embed:
    params, result, locale = job.params, job.result or {}, locale_of(job)
    embed = discord.Embed(description=quoted(params["prompt"])[:4096], colour=EMBED_COLOUR)
    embed.set_author(name=tr(locale, "embed.job", job=job.id))
    embed.add_field(name=tr(locale, "embed.size"),
                    value=f"{params['width']}×{params['height']} ({params.get('aspect', '')})")
    embed.add_field(name=tr(locale, "embed.seeds" if len(params["seeds"]) > 1 else "embed.seed"),
                    value=", ".join(str(seed) for seed in params["seeds"]))
    embed.add_field(name=tr(locale, "embed.steps"), value=str(params["steps"]))
    embed.add_field(name=tr(locale, "embed.model"), value=str(result.get("model", "?"))[:100])
    if params.get("loras"):
        embed.add_field(name="LoRA", value=", ".join(f"{lora.get('label', lora['name'])} ×{lora['scale']:g}"
                                                      for lora in params["loras"]))
    if params.get("source"):  # made from a picture: which (bot/variants.py, an image prompt)
        source = params["source"]
        parent = tr(locale, "embed.parent", job=source["parent"]) if source.get("parent") else ""
        embed.add_field(name=tr(locale, "embed.from"),
                        value=tr(locale, "embed.from_value", mode=source["mode"], parent=parent,
                                 strength=source["strength"]))
    if params.get("seed_variance"):
        embed.add_field(name=tr(locale, "embed.seed_variance"), value=f"{params['seed_variance']:g}")
    if "seconds" in result:
        embed.add_field(name=tr(locale, "embed.time"), value=tr(locale, "embed.seconds", seconds=result["seconds"]))
    add_enhanced_prompts(embed, result.get("enhanced_prompts") or [], locale)
    return embed


ENHANCED_PROMPTS_CHARS = 3000  # all rewrites together, at most
EMBED_BUDGET = 5400  # of the 6000 characters an embed holds: the rest is for the other fields' names and values


def add_enhanced_prompts(embed: discord.Embed, prompts: list[str], locale: str | None = None) -> None:
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
            name = (tr(locale, "embed.enhanced_n", number=number) if len(prompts) > 1
                    else tr(locale, "embed.enhanced"))
            embed.add_field(name=name, value=quoted(short_prompt(prompt, limit))[:limit], inline=False)


def duration(seconds: float, locale: LocaleLike = None) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return tr(locale, "duration.seconds", n=seconds)
    if seconds < 5400:
        return tr(locale, "duration.minutes", n=round(seconds / 60))
    return tr(locale, "duration.hours", n=seconds / 3600)


def training_text(job: Job, progress: TrainProgress | None) -> str:
    name, locale = job.params["name"], locale_of(job)
    if progress is None:
        return tr(locale, "train.starting", job=job.id, name=name)
    step, total = progress.step, progress.total
    eta = duration((total - step) * progress.seconds_per_step, locale)
    filled = round(PROGRESS_BAR_WIDTH * step / max(total, 1))
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    return tr(locale, "train.progress", job=job.id, name=name, step=step, total=total, bar=bar, loss=progress.loss,
              speed=progress.seconds_per_step, eta=eta)


def training_done_text(job: Job) -> str:
    return tr(locale_of(job), "train.done", job=job.id, name=job.params["name"])


def checkpoint_text(job: Job, checkpoint: CheckpointReady, link: str | None, private: bool = False) -> str:
    step, total, locale = checkpoint.step, checkpoint.total, locale_of(job)
    eta = duration((total - step) * checkpoint.seconds_per_step, locale)
    lines = [tr(locale, "train.checkpoint", user=job.user_id, job=job.id, name=job.params["name"], step=step,
                total=total, loss=checkpoint.loss, speed=checkpoint.seconds_per_step, eta=eta)]
    if checkpoint.training_adapter:  # what the run merged in during its steps (TRAINING_ADAPTER), as the worker says
        lines.append(f"Training adapter: `{checkpoint.training_adapter[:200].replace('`', '')}`")
    if private:
        lines.append(tr(locale, "train.checkpoint_private"))
    elif link:
        lines.append(tr(locale, "train.checkpoint_link", link=link))
    return "\n".join(lines)


def private_checkpoint_text(job: Job, checkpoint: CheckpointReady, link: str | None) -> str:
    """The LoRA file of a checkpoint, for its owner only (attached, or `link` when it is too big to attach)."""
    name, locale = job.params["name"], locale_of(job)
    what = tr(locale, "train.private_link", link=link) if link else tr(locale, "train.private_file")
    lines = [tr(locale, "train.private_checkpoint", name=name, step=checkpoint.step, total=checkpoint.total,
                job=job.id, what=what),
             tr(locale, "train.private_only_you", name=name)]
    return "\n".join(lines)


def approval_text(job: Job) -> str:
    config = job.params["config"]
    return tr(locale_of(job), "train.approval", user=job.user_id, name=job.params["name"], job=job.id,
              steps=config["steps"], rank=config["rank"], channel=job.channel_id)
