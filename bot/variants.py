"""New images from a result's picture: Vary (Subtle/Strong), Upscale 2x, Zoom Out, Pan (the buttons of bot/views.py).

Each click queues a normal /imagine job through ImagineService.submit (fair order, caps, rate limit, moderation,
cancel all apply), whose params carry a ``source``: the parent's first saved PNG in DATA_DIR/outputs, the strength,
and for outpainting the zoom factor or the pan direction (zimage_protocol.params.SourceImage; the worker's side is
gpu/variants.py). The new job is the clicker's: it may only start from a result of this server (a result posted
elsewhere, or in someone else's DMs, is not theirs to reuse), and the parent's LoRAs go through
LoraLibrary.for_rerun like Reroll's, so a private LoRA the clicker may not use refuses the click.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import discord

from .db.models import Job, JobKind, JobStatus
from .errors import UserFacingError
from .i18n import Text
from .imagine import ImagineService, random_seed

MAX_UPSCALE_SOURCE_PIXELS = 1536 * 1536  # an upscale of an upscale (4096x4096) is past what the worker holds


@dataclass(frozen=True)
class Variant:
    """What one button asks for."""

    mode: str  # zimage_protocol.params.SOURCE_MODES
    strength: float
    scale: int = 1  # the output's size over the parent's
    zoom: float = 1.0
    direction: str = ""


# The button's key (its custom_id part) -> what it makes. Outpainting redraws the new border completely.
VARIANTS: dict[str, Variant] = {
    "subtle": Variant("vary_subtle", 0.35),
    "strong": Variant("vary_strong", 0.7),
    "upscale": Variant("upscale", 0.35, scale=2),
    "zoom15": Variant("zoom", 1.0, zoom=1.5),
    "zoom2": Variant("zoom", 1.0, zoom=2.0),
    "left": Variant("pan", 1.0, direction="left"),
    "right": Variant("pan", 1.0, direction="right"),
    "up": Variant("pan", 1.0, direction="up"),
    "down": Variant("pan", 1.0, direction="down"),
}


def source_of(job: Job, outputs_dir: Path) -> Path:
    """The parent's first image on this host's disk."""
    files = (job.result or {}).get("files") or []
    if job.kind != JobKind.IMAGINE or job.status != JobStatus.DONE or not files:
        raise UserFacingError(Text("variants.not_finished"))
    return outputs_dir / str(job.id) / Path(str(files[0])).name  # .name: a stored name never leaves the folder


def check_may_reuse(interaction: discord.Interaction, job: Job) -> None:
    """A result of this server, or in DMs the clicker's own: anything else is not theirs to start from."""
    if job.guild_id != interaction.guild_id or (job.guild_id is None and job.user_id != interaction.user.id):
        raise UserFacingError(Text("variants.not_here"))


def variant_params(old: dict, variant: Variant, parent_id: int, source: Path, loras: list[dict],
                   upload_limit: int) -> dict:
    """The new job's params: the parent's prompt, steps and size (times the variant's scale), one new seed."""
    return {"prompt": old["prompt"], "aspect": old.get("aspect", ""), "width": int(old["width"]) * variant.scale,
            "height": int(old["height"]) * variant.scale, "steps": int(old["steps"]), "seeds": [random_seed()],
            "guidance_scale": float(old.get("guidance_scale", 0.0)), "upload_limit": upload_limit, "loras": loras,
            "source": {"path": str(source), "strength": variant.strength, "mode": variant.mode, "zoom": variant.zoom,
                       "direction": variant.direction, "parent": str(parent_id)}}


class VariantService:
    def __init__(self, imagine: ImagineService, outputs_dir: Path):
        self.imagine = imagine  # submit (the checks and the queue), result (the parent job), library (LoRA rights)
        self.outputs_dir = outputs_dir

    async def request(self, interaction: discord.Interaction, job_id: int, key: str) -> None:
        variant = VARIANTS[key]

        async def params() -> dict:
            parent = await self.imagine.result(job_id)
            check_may_reuse(interaction, parent)
            source = source_of(parent, self.outputs_dir)
            if not await asyncio.to_thread(source.is_file):
                raise UserFacingError(Text("variants.gone"))
            if variant.scale > 1 and int(parent.params["width"]) * int(parent.params["height"]) > MAX_UPSCALE_SOURCE_PIXELS:
                raise UserFacingError(Text("variants.too_large"))
            loras = await self.imagine.library.for_rerun(interaction.user.id, interaction.guild_id,
                                                         parent.params.get("loras") or [])
            return variant_params(parent.params, variant, parent.id, source, loras, interaction.filesize_limit)

        await self.imagine.submit(interaction, params)
