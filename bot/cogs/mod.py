"""/mod: moderators run the queue (pause, cancel, ban, limits, content, blocklist, variety, audit).

Every command checks server-side that the caller is a moderator (Manage Server, or the role
set with /mod role) -- default permissions alone can be overridden by admins -- and every
action is written to the audit log. The autocompletes check too: a cog's interaction_check does
not run for them, and they list the server's jobs and blocklist.

/mod is offered by Discord to Manage Server members only (default permissions, defence in depth):
for members of the moderator role to see it, a server admin allows that role to use /mod in
Server Settings → Integrations → the bot.
"""

from __future__ import annotations

from datetime import UTC, datetime

import discord
from discord import app_commands
from discord.ext import commands

from ..db.jobs import JobStore
from ..db.models import GuildSettings, JobStatus
from ..db.moderation import ModerationStore, valid_pattern
from ..errors import UserFacingError
from ..i18n import Text, tr
from ..interaction_ids import guild_id_of
from ..jobs.positions import Positions
from ..jobs.runner import JobRunner
from ..listing import fit_lines
from ..moderation import expiry_from, parse_duration
from ..permissions import NotModerator, is_moderator
from ..safety import AgeRestrictedRule, ContentCheck, ContentMode
from ..services import services_of
from ..settings import Settings
from .mod_views import queue_page
from .workers import RowsOf, rows_source


@app_commands.guild_only()  # Discord hides it in DMs; interaction_check still refuses them
@app_commands.default_permissions(manage_guild=True)
class ModCog(commands.GroupCog, group_name="mod", group_description="Moderator tools for the image queue"):
    blocklist = app_commands.Group(name="blocklist", description="Words or patterns refused in prompts")
    approve_training = app_commands.Group(name="approve-training", description="Require approval of /train jobs")

    def __init__(self, settings: Settings, moderation: ModerationStore, store: JobStore, runner: JobRunner,
                 positions: Positions, rows_of: RowsOf, content_check: ContentCheck | None = None):
        self.settings = settings  # the defaults /mod limits shows
        self.moderation = moderation
        self.store = store
        self.runner = runner
        self.positions = positions
        self.rows_of = rows_of  # the GPU workers, under the /mod queue listing
        self.content_check = content_check  # /mod content mode: is its classifier installed
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise NotModerator(Text("mod.dm"))
        if not is_moderator(interaction, await self.moderation.settings(interaction.guild_id)):
            raise NotModerator(Text("mod.only"))
        return True

    async def _moderates(self, interaction: discord.Interaction) -> bool:
        """For the autocompletes, which interaction_check does not cover: no choices for anyone else."""
        if interaction.guild_id is None:
            return False
        return is_moderator(interaction, await self.moderation.settings(interaction.guild_id))

    async def _done(self, interaction: discord.Interaction, action: str, message: str, target: str | None = None,
                    details: str | None = None) -> None:
        await self.moderation.audit(guild_id_of(interaction), interaction.user.id, action, target, details)
        await interaction.response.send_message(message, ephemeral=True)

    # --- who moderates ----------------------------------------------------------------------

    @app_commands.command(name="role", description="Set (or clear) the role whose members are moderators")
    @app_commands.describe(role="Leave empty to clear: then only Manage Server members moderate")
    async def role(self, interaction: discord.Interaction, role: discord.Role | None = None) -> None:
        if not (interaction.permissions.manage_guild or interaction.permissions.administrator):
            raise NotModerator(Text("mod.role_needs_manage"))
        await self.moderation.update_settings(guild_id_of(interaction), mod_role_id=role.id if role else None)
        text = tr(interaction, "mod.role_set", role=role.mention) if role else tr(interaction, "mod.role_cleared")
        await self._done(interaction, "role", text, target=role.name if role else None)

    @app_commands.command(name="channel", description="Channel where moderator approvals are posted")
    async def channel(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        await self.moderation.update_settings(guild_id_of(interaction), mod_channel_id=channel.id)
        await self._done(interaction, "channel", tr(interaction, "mod.channel_set", channel=channel.mention),
                         target=channel.name)

    # --- the queue -------------------------------------------------------------------------

    @app_commands.command(name="queue", description="All active jobs of this server")
    async def queue(self, interaction: discord.Interaction) -> None:
        guild_id = guild_id_of(interaction)
        content, view = await queue_page(self.store, self.moderation, guild_id, 0, interaction.locale,
                                         self.rows_of(guild_id))
        await interaction.response.send_message(content, view=view or discord.utils.MISSING, ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel any job of this server")
    @app_commands.describe(job="The job number")
    async def cancel(self, interaction: discord.Interaction, job: int) -> None:
        record = await self.store.get(job)
        if record is None or record.guild_id != interaction.guild_id:
            raise UserFacingError(Text("mod.no_such_job", job=job))
        if record.status not in JobStatus.cancellable():
            raise UserFacingError(Text("mod.already", job=job, status=Text(f"status.{record.status}")))
        if not await self.runner.cancel(record):
            raise UserFacingError(Text("cancel.not_now", job=job))
        await self._done(interaction, "cancel", tr(interaction, "mod.cancelled", job=job, user=record.user_id),
                         target=f"job #{job} of <@{record.user_id}>")

    @cancel.autocomplete("job")
    async def cancel_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
        if interaction.guild_id is None or not await self._moderates(interaction):  # autocomplete skips interaction_check
            return []
        jobs = await self.store.guild_jobs(interaction.guild_id)
        return [app_commands.Choice(name=f"#{job.id} ({job.status}) by {job.user_id}", value=job.id)
                for job in jobs if str(job.id).startswith(current.strip("#"))][:25]

    @app_commands.command(name="clear", description="Cancel every waiting or running job (of one member)")
    async def clear(self, interaction: discord.Interaction, user: discord.User | None = None) -> None:
        cancelled = await self._cancel_jobs(guild_id_of(interaction), user.id if user else None)
        text = (tr(interaction, "mod.cleared_of", count=cancelled, user=user.mention) if user
                else tr(interaction, "mod.cleared_all", count=cancelled))
        await self._done(interaction, "clear", text,
                         target=user.mention if user else "everyone", details=f"{cancelled} job(s)")

    async def _cancel_jobs(self, guild_id: int, user_id: int | None) -> int:
        cancelled = 0
        for job in await self.store.guild_jobs(guild_id):
            if job.status in JobStatus.cancellable() and user_id in (None, job.user_id):
                cancelled += await self.runner.cancel(job)
        return cancelled

    @app_commands.command(name="pause", description="Pause this server's queue; jobs keep their place")
    async def pause(self, interaction: discord.Interaction) -> None:
        await self.moderation.update_settings(guild_id_of(interaction), paused=True)
        await self._done(interaction, "pause", tr(interaction, "mod.paused"))
        await self.positions.refresh(paused_guild=interaction.guild_id)

    @app_commands.command(name="resume", description="Resume this server's queue")
    async def resume(self, interaction: discord.Interaction) -> None:
        await self.moderation.update_settings(guild_id_of(interaction), paused=False)
        await self._done(interaction, "resume", tr(interaction, "mod.resumed"))
        self.runner.wake()
        await self.positions.refresh()

    # --- bans --------------------------------------------------------------------------------

    @app_commands.command(name="ban", description="Stop a member from using the bot in this server")
    @app_commands.describe(reason="Shown to the member when they try", duration="e.g. 30m, 12h, 7d, 2w; empty = permanent")
    async def ban(self, interaction: discord.Interaction, user: discord.User,
                  reason: app_commands.Range[str, 1, 300] | None = None, duration: str | None = None) -> None:
        if user.id == interaction.user.id:
            raise UserFacingError(Text("mod.ban_self"))
        expires_at = expiry_from(parse_duration(duration))
        await self.moderation.ban(guild_id_of(interaction), user.id, interaction.user.id, reason, expires_at)
        cancelled = await self._cancel_jobs(guild_id_of(interaction), user.id)
        await self._done(interaction, "ban",
                         tr(interaction, "mod.banned", user=user.mention, expiry=expiry(interaction, expires_at),
                            count=cancelled),
                         target=user.mention, details=f"reason: {reason or '-'}; duration: {duration or 'permanent'}")

    @app_commands.command(name="unban", description="Let a banned member use the bot again")
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        if not await self.moderation.unban(guild_id_of(interaction), user.id):
            raise UserFacingError(Text("mod.not_banned", user=user.mention))
        await self._done(interaction, "unban", tr(interaction, "mod.unbanned", user=user.mention), target=user.mention)

    @app_commands.command(name="bans", description="Members banned from the bot in this server")
    async def bans(self, interaction: discord.Interaction) -> None:
        bans = await self.moderation.bans(guild_id_of(interaction))
        lines = [tr(interaction, "mod.ban_line", user=ban.user_id, expiry=expiry(interaction, ban.expires_at),
                    moderator=ban.moderator_id) + (tr(interaction, "mod.ban_reason", reason=ban.reason) if ban.reason else "")
                 for ban in bans]
        await interaction.response.send_message(fit_lines(lines) or tr(interaction, "mod.no_bans"), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    # --- limits and content --------------------------------------------------------------------

    @app_commands.command(name="limits", description="View or set this server's limits (0 = back to the default)")
    @app_commands.describe(max_queued="Jobs one member may have waiting", per_minute="Requests per member per minute",
                           trainings_per_day="LoRA trainings per member per day", max_count="Images per request",
                           max_steps="Steps per image", lora_imports="LoRAs one member may import here",
                           lora_import_mb="MiB of imported LoRA files one member may keep here")
    async def limits(self, interaction: discord.Interaction, max_queued: app_commands.Range[int, 0, 50] | None = None,
                     per_minute: app_commands.Range[int, 0, 120] | None = None,
                     trainings_per_day: app_commands.Range[int, 0, 50] | None = None,
                     max_count: app_commands.Range[int, 0, 4] | None = None,
                     max_steps: app_commands.Range[int, 0, 16] | None = None,
                     lora_imports: app_commands.Range[int, 0, 1000] | None = None,
                     lora_import_mb: app_commands.Range[int, 0, 1_000_000] | None = None) -> None:
        given = {"max_queued_per_user": max_queued, "requests_per_minute": per_minute,
                 "trainings_per_day": trainings_per_day, "max_count": max_count, "max_steps": max_steps,
                 "lora_import_max_count": lora_imports, "lora_import_max_mb": lora_import_mb}
        changes = {key: (value or None) for key, value in given.items() if value is not None}
        if changes:
            settings = await self.moderation.update_settings(guild_id_of(interaction), **changes)
        else:
            settings = await self.moderation.settings(interaction.guild_id)
        text = self._limits_text(interaction, settings)
        if changes:
            await self._done(interaction, "limits", text, details=", ".join(f"{k}={v}" for k, v in changes.items()))
        else:
            await interaction.response.send_message(text, ephemeral=True)

    def _limits_text(self, interaction: discord.Interaction, settings: GuildSettings) -> str:
        defaults = self.settings

        def value(setting: int | None, default: object) -> object:
            return setting or tr(interaction, "mod.limits_default", value=default)

        rate = (tr(interaction, "mod.limits_rate", count=settings.requests_per_minute) if settings.requests_per_minute
                else tr(interaction, "mod.limits_rate_default", count=defaults.rate_limit_count,
                        period=defaults.rate_limit_period))
        return "\n".join([
            tr(interaction, "mod.limits_title"),
            tr(interaction, "mod.limits_queued", value=value(settings.max_queued_per_user, defaults.max_queued_per_user)),
            rate,
            tr(interaction, "mod.limits_trainings",
               value=settings.trainings_per_day or tr(interaction, "mod.limits_no_limit")),
            tr(interaction, "mod.limits_count", value=value(settings.max_count, 4)),
            tr(interaction, "mod.limits_steps", value=value(settings.max_steps, 16)),
            tr(interaction, "mod.limits_imports", count=value(settings.lora_import_max_count, defaults.lora_import_max_count),
               mib=value(settings.lora_import_max_mb, defaults.lora_import_max_bytes >> 20)),
        ])

    @app_commands.command(name="content", description="Age-restricted content: blocklist exemption and spoilers")
    @app_commands.describe(allow_in_age_restricted="Blocklisted prompts pass in age-restricted channels",
                           spoilers="Post generated images as spoilers",
                           mode="Image safety check of every result: off, spoiler (hide flagged ones) or block them",
                           age_restricted_channels="allow: results in age-restricted channels are not checked; "
                                                   "same: checked like everywhere else")
    @app_commands.choices(mode=[app_commands.Choice(name=mode.value, value=mode.value) for mode in ContentMode],
                          age_restricted_channels=[app_commands.Choice(name=rule.value, value=rule.value)
                                                   for rule in AgeRestrictedRule])
    async def content(self, interaction: discord.Interaction, allow_in_age_restricted: bool | None = None,
                      spoilers: bool | None = None, mode: str | None = None,
                      age_restricted_channels: str | None = None) -> None:
        changes: dict[str, object] = {}
        if allow_in_age_restricted is not None:
            changes["allow_blocklisted_in_nsfw"] = allow_in_age_restricted
        if spoilers is not None:
            changes["spoiler_images"] = spoilers
        if mode is not None:
            chosen = ContentMode.of(mode)
            # Refused before anything is stored: a check that cannot run would withhold (block) or hide (spoiler)
            # every result of the server (bot/safety/policy.py fails closed).
            if chosen is not ContentMode.OFF and self.content_check and (missing := self.content_check.available()):
                raise UserFacingError(Text("mod.content_check_missing", problem=missing))
            changes["content_mode"] = None if chosen is ContentMode.OFF else chosen.value
        if age_restricted_channels is not None:
            rule = AgeRestrictedRule.of(age_restricted_channels)
            changes["content_age_restricted"] = None if rule is AgeRestrictedRule.ALLOW else rule.value
        settings = await self.moderation.update_settings(guild_id_of(interaction), **changes)
        text = "\n".join([
            tr(interaction, "mod.content",
               exempt=tr(interaction, "mod.allowed" if settings.allow_blocklisted_in_nsfw else "mod.refused"),
               spoilers=tr(interaction, "mod.on" if settings.spoiler_images else "mod.off")),
            tr(interaction, "mod.content_check", mode=ContentMode.of(settings.content_mode).value,
               rule=AgeRestrictedRule.of(settings.content_age_restricted).value)])
        given = {"allow_in_age_restricted": allow_in_age_restricted, "spoilers": spoilers, "mode": mode,
                 "age_restricted_channels": age_restricted_channels}
        await self._done(interaction, "content", text,
                         details=", ".join(f"{k}={v}" for k, v in given.items() if v is not None) or None)

    @app_commands.command(name="variety", description="How different Reroll and Variations images are from each other")
    @app_commands.describe(seed_variance="0 to 1: noise on the prompt per seed (0 = off; 0.1-0.3 is a good start)")
    async def variety(self, interaction: discord.Interaction,
                      seed_variance: app_commands.Range[float, 0.0, 1.0] | None = None) -> None:
        """Seed variance (gpu/seed_variance.py) for this server's new images: /imagine, Reroll and Variations."""
        if seed_variance is None:
            settings = await self.moderation.settings(interaction.guild_id)
            await interaction.response.send_message(self._variety_text(interaction, settings), ephemeral=True)
            return
        strength = round(float(seed_variance), 3)
        settings = await self.moderation.update_settings(guild_id_of(interaction), seed_variance=strength or None)
        await self._done(interaction, "variety", self._variety_text(interaction, settings),
                         details=f"seed_variance={strength:g}")

    @staticmethod
    def _variety_text(interaction: discord.Interaction, settings: GuildSettings) -> str:
        if not settings.seed_variance:
            return tr(interaction, "mod.variety_off")
        return tr(interaction, "mod.variety", strength=settings.seed_variance)

    # --- blocklist -------------------------------------------------------------------------

    @blocklist.command(name="add", description="Refuse prompts containing this word, phrase, or re:regex")
    async def blocklist_add(self, interaction: discord.Interaction, pattern: app_commands.Range[str, 1, 200]) -> None:
        pattern = pattern.strip()
        if problem := valid_pattern(pattern):
            raise UserFacingError(problem)
        if not await self.moderation.add_blocked(guild_id_of(interaction), pattern, interaction.user.id):
            raise UserFacingError(Text("mod.blocklist_already", pattern=pattern))
        await self._done(interaction, "blocklist-add", tr(interaction, "mod.blocklist_added", pattern=pattern),
                         target=pattern)

    @blocklist.command(name="remove", description="Take a pattern off the blocklist")
    async def blocklist_remove(self, interaction: discord.Interaction, pattern: str) -> None:
        if not await self.moderation.remove_blocked(guild_id_of(interaction), pattern.strip()):
            raise UserFacingError(Text("mod.blocklist_missing", pattern=pattern))
        await self._done(interaction, "blocklist-remove", tr(interaction, "mod.blocklist_removed", pattern=pattern),
                         target=pattern)

    @blocklist_remove.autocomplete("pattern")
    async def blocklist_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None or not await self._moderates(interaction):  # autocomplete skips interaction_check
            return []
        patterns = await self.moderation.blocklist(interaction.guild_id)
        return [app_commands.Choice(name=p[:100], value=p) for p in patterns if current.lower() in p.lower()][:25]

    @blocklist.command(name="list", description="The patterns refused in prompts here")
    async def blocklist_list(self, interaction: discord.Interaction) -> None:
        patterns = await self.moderation.blocklist(guild_id_of(interaction))
        text = fit_lines([f"`{p}`" for p in patterns]) or tr(interaction, "mod.blocklist_empty")
        await interaction.response.send_message(text, ephemeral=True)

    # --- training approval -------------------------------------------------------------------

    @approve_training.command(name="on", description="/train jobs wait for a moderator's approval")
    async def approve_training_on(self, interaction: discord.Interaction) -> None:
        settings = await self.moderation.update_settings(guild_id_of(interaction), approve_training=True)
        where = f"<#{settings.mod_channel_id}>" if settings.mod_channel_id else tr(interaction, "mod.approval_nowhere")
        await self._done(interaction, "approve-training", tr(interaction, "mod.approval_on", where=where), details="on")

    @approve_training.command(name="off", description="/train jobs start without approval")
    async def approve_training_off(self, interaction: discord.Interaction) -> None:
        await self.moderation.update_settings(guild_id_of(interaction), approve_training=False)
        await self._done(interaction, "approve-training", tr(interaction, "mod.approval_off"), details="off")

    # --- audit -------------------------------------------------------------------------------

    @app_commands.command(name="audit", description="Recent moderator actions in this server")
    async def audit(self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 50] = 20) -> None:
        entries = await self.moderation.audit_log(guild_id_of(interaction), count)
        lines = [f"{discord.utils.format_dt(entry.created_at.replace(tzinfo=UTC), 'R')} "
                 f"<@{entry.moderator_id}> **{entry.action}**" + (f" {entry.target}" if entry.target else "")
                 + (f" ({entry.details})" if entry.details else "") for entry in entries]
        await interaction.response.send_message(fit_lines(lines) or tr(interaction, "mod.no_audit"), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())


def expiry(interaction: discord.Interaction, expires_at: datetime | None) -> str:
    """How long a ban lasts, in the moderator's language."""
    if expires_at is None:
        return tr(interaction, "expiry.permanent")
    return tr(interaction, "expiry.until", when=discord.utils.format_dt(expires_at.replace(tzinfo=UTC), "f"))


async def setup(bot: commands.Bot) -> None:
    services = services_of(bot)
    await bot.add_cog(ModCog(services.settings, services.moderation, services.store, services.runner, services.positions,
                             rows_source(bot), services.content_check))
