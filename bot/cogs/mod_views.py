"""The /mod queue listing: paginated, with page buttons that survive restarts."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Self

import discord

from ..buttons import ReportingButton
from ..db.jobs import JobStore
from ..db.models import Job, JobStatus, utcnow
from ..db.moderation import ModerationStore
from ..interaction_ids import guild_id_of
from ..jobs import render
from ..permissions import NotModerator, is_moderator
from ..services import services_of

PAGE_SIZE = 10


def _age(created: datetime) -> str:
    seconds = int((utcnow() - created).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


async def queue_page(store: JobStore, moderation: ModerationStore, guild_id: int,
                     page: int) -> tuple[str, discord.ui.View | None]:
    jobs = await store.guild_jobs(guild_id)
    settings = await moderation.settings(guild_id)
    order = await store.positions()
    pages = max(1, -(-len(jobs) // PAGE_SIZE))
    page = min(max(page, 0), pages - 1)
    header = f"**Queue of this server**: {len(jobs)} active job(s)" + (" — ⏸️ paused" if settings.paused else "")
    lines = [header]
    for job in jobs[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]:
        lines.append(_line(job, order))
    if not jobs:
        lines.append("Nothing is waiting or running.")
    view = None
    if pages > 1:
        lines.append(f"Page {page + 1}/{pages}")
        view = discord.ui.View(timeout=None)
        view.add_item(ModQueuePage(page - 1, "◀ Previous", disabled=page == 0))
        view.add_item(ModQueuePage(page + 1, "Next ▶", disabled=page >= pages - 1))
    return "\n".join(lines), view


def _line(job: Job, order: dict[int, int]) -> str:
    if job.status == JobStatus.QUEUED:
        state = f"queued, position {order[job.id]}" if job.id in order else "queued (paused)"
    else:
        state = str(job.status)
    return (f"**#{job.id}** <@{job.user_id}> {job.kind}, {state}, {_age(job.created_at)} old: "
            f"*{render.describe(job, 50)}*")


class ModQueuePage(ReportingButton, discord.ui.DynamicItem[discord.ui.Button],
                   template=r"zimage:modq:(?P<page>-?[0-9]+):(?P<tag>[a-z]+)"):
    """Moves the /mod queue listing to another page; checks the clicker is a moderator."""

    def __init__(self, page: int, label: str, disabled: bool = False):
        # The tag keeps the two buttons' custom_ids distinct even when both point at one page.
        tag = "prev" if label.startswith("◀") else "next"
        super().__init__(discord.ui.Button(label=label, style=discord.ButtonStyle.secondary, disabled=disabled,
                                           custom_id=f"zimage:modq:{page}:{tag}"))
        self.page = page

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]) -> Self:
        label = item.label if isinstance(item, discord.ui.Button) else None  # always one: DynamicItem[Button]
        return cls(int(match["page"]), label or "")

    async def handle(self, interaction: discord.Interaction) -> None:
        services = services_of(interaction)
        if not is_moderator(interaction, await services.moderation.settings(interaction.guild_id)):
            raise NotModerator("Only moderators can page through the server's queue.")
        content, view = await queue_page(services.store, services.moderation, guild_id_of(interaction), self.page)
        await interaction.response.edit_message(content=content, view=view)


MOD_BUTTONS = (ModQueuePage,)
