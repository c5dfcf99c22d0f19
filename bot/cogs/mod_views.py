"""The /mod queue listing: paginated, with page buttons that survive restarts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self

import discord

from ..buttons import ReportingButton
from ..db.jobs import JobStore
from ..db.models import Job, JobStatus, utcnow
from ..db.moderation import ModerationStore
from ..i18n import Text, tr
from ..interaction_ids import guild_id_of
from ..jobs import render
from ..listing import MESSAGE_LIMIT
from ..permissions import NotModerator, is_moderator
from ..services import services_of
from ..workers_overview import WorkerRow, render_section
from .workers import rows_source

PAGE_SIZE = 10


def _age(created: datetime) -> str:
    seconds = int((utcnow() - created).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


async def queue_page(store: JobStore, moderation: ModerationStore, guild_id: int, page: int,
                     locale: discord.Locale | None = None,
                     workers: Sequence[WorkerRow] = ()) -> tuple[str, discord.ui.View | None]:
    """One page of the listing, in the moderator's language (`locale`), then the GPU workers in short
    (`workers`, bot/workers_overview.py) in what room the page leaves."""
    jobs = await store.guild_jobs(guild_id)
    settings = await moderation.settings(guild_id)
    order = await store.positions()
    pages = max(1, -(-len(jobs) // PAGE_SIZE))
    page = min(max(page, 0), pages - 1)
    header = tr(locale, "modq.header", count=len(jobs)) + (tr(locale, "modq.paused") if settings.paused else "")
    lines = [header]
    for job in jobs[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]:
        lines.append(_line(job, order, locale))
    if not jobs:
        lines.append(tr(locale, "modq.nothing"))
    view = None
    if pages > 1:
        lines.append(tr(locale, "modq.page", page=page + 1, pages=pages))
        view = discord.ui.View(timeout=None)
        view.add_item(ModQueuePage(page - 1, tr(locale, "modq.previous"), disabled=page == 0))
        view.add_item(ModQueuePage(page + 1, tr(locale, "modq.next"), disabled=page >= pages - 1))
    listing = "\n".join(lines)
    if workers:
        listing += "\n\n" + render_section(workers, locale, MESSAGE_LIMIT - len(listing) - 2)
    return listing, view


def _line(job: Job, order: dict[int, int], locale: discord.Locale | None) -> str:
    if job.status == JobStatus.QUEUED:
        state = (tr(locale, "modq.queued_at", position=order[job.id]) if job.id in order
                 else tr(locale, "modq.queued_paused"))
    else:
        state = tr(locale, f"status.{job.status}")
    return tr(locale, "modq.line", job=job.id, user=job.user_id, kind=job.kind, state=state, age=_age(job.created_at),
              what=render.describe(job, 50, locale))


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
            raise NotModerator(Text("modq.only"))
        guild_id = guild_id_of(interaction)
        content, view = await queue_page(services.store, services.moderation, guild_id, self.page,
                                         interaction.locale, rows_source(interaction)(guild_id))
        await interaction.response.edit_message(content=content, view=view)


MOD_BUTTONS = (ModQueuePage,)
