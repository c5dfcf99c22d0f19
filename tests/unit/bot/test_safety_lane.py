"""The safety check in the generation lane (bot/jobs/screening.py, ImagineLane.resume), with a real SQLite queue,
the real ModerationStore, the tests' marker classifier behind the real ContentCheck, and recorded Discord calls.

A flagged result under mode:block is withheld (no file posted, the member told privately while the token lives,
the job done with why in its record); under mode:spoiler it is posted as a spoiler; age-restricted channels follow
the server's rule; mode off is today's path; /mod content refuses a mode whose classifier is not installed.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import discord
import pytest
from databases import migrated_database
from PIL import Image, PngImagePlugin
from pipeline_fakes import RecordingMessages
from security_helpers import MOD, interaction

from bot.cogs.mod import ModCog
from bot.db.jobs import JobStore
from bot.db.models import JobStatus
from bot.db.moderation import ModerationStore
from bot.errors import UserFacingError
from bot.imagine import build_params
from bot.jobs.imagine_lane import Generated, ImagineLane
from bot.jobs.lane import LaneContext
from bot.jobs.screening import Screening
from bot.jobs.status_edits import StatusEdits
from bot.safety import TEST_MARKER, ContentCheck, ContentCheckUnavailable, MarkerClassifier, Verdict
from bot.settings import Settings

GUILD, CHANNEL, NSFW_CHANNEL = 10, 20, 21


def png(prompt: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("prompt", prompt)
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 90, 160)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


class Counting(MarkerClassifier):
    def __init__(self):
        self.calls = 0

    def classify(self, png: bytes) -> Verdict:
        self.calls += 1
        return super().classify(png)


class World:
    def __init__(self, store: JobStore, data_dir, classifier=None):
        self.store, self.moderation = store, ModerationStore(store)
        self.messages = RecordingMessages()
        self.status = StatusEdits(self.messages, min_interval=0.0, position_interval=0.0)
        self.classifier = classifier or Counting()
        self.check = ContentCheck(self.classifier)
        context = LaneContext(settings=Settings(discord_token="t", data_dir=data_dir), store=store, worker=None,  # type: ignore[arg-type]
                              messages=self.messages, positions=None, status=self.status)  # type: ignore[arg-type]

        async def age_restricted(channel_id: int) -> bool:
            return channel_id == NSFW_CHANNEL

        self.lane = ImagineLane(context, self.moderation, lambda job: None, Screening(self.check, age_restricted))

    async def deliver(self, prompt: str, channel: int = CHANNEL, **params) -> int:
        """A job through keep (its PNG saved, DELIVERING) and resume (screened, posted), as the runner does."""
        job = await self.store.enqueue(user_id=7, guild_id=GUILD, channel_id=channel, interaction_token="token",
                                       params={**build_params(prompt, "1:1", 2, [1], 10 << 20), **params})
        await self.store.set_message(job.id, 1000 + job.id)
        job = await self.store.claim_next()
        assert job is not None
        await self.lane.keep(job, Generated({0: (1, png(prompt))}, 0.1, "tiny"))
        await self.lane.resume(job)
        return job.id

    async def close(self):
        await self.status.stop()
        self.check.close()


@pytest.fixture
async def world(tmp_path):
    async with migrated_database("sqlite", tmp_path) as url:
        store = JobStore(url)
        world = World(store, tmp_path / "data")
        yield world
        await world.close()
        await store.close()


FLAGGED = f"a beach {TEST_MARKER}"


async def test_block_withholds_a_flagged_result_and_says_why(world):
    await world.moderation.update_settings(GUILD, content_mode="block", content_age_restricted="same")
    job_id = await world.deliver(FLAGGED, locale="zh-CN")
    [final] = world.messages.of(job_id, "final")
    assert final.files == [] and "安全检查" in final.content and FLAGGED not in final.content
    [note] = world.messages.of(job_id, "ephemeral")
    assert f"#{job_id}" in note.content and "安全检查" in note.content
    job = await world.store.get(job_id)
    assert job.status == JobStatus.DONE and job.error == f"withheld by the server's content check: {TEST_MARKER} 1.00"
    # nothing lost: the PNG is still where every result is kept
    assert (world.lane.settings.outputs_dir / str(job_id) / job.result["files"][0]).read_bytes() == png(FLAGGED)


async def test_block_passes_a_plain_result(world):
    await world.moderation.update_settings(GUILD, content_mode="block")
    job_id = await world.deliver("a beach")
    [final] = world.messages.of(job_id, "final")
    assert [name for name, _ in final.files] == [f"zimage_{job_id}_1_1.png"] and world.messages.of(job_id, "ephemeral") == []
    assert (await world.store.get(job_id)).error is None


async def test_spoiler_posts_a_flagged_result_as_a_spoiler_and_a_plain_one_openly(world):
    await world.moderation.update_settings(GUILD, content_mode="spoiler")
    flagged, plain = await world.deliver(FLAGGED), await world.deliver("a beach")
    [(name, data)] = world.messages.of(flagged, "final")[0].files
    assert name == f"SPOILER_zimage_{flagged}_1_1.png" and data == png(FLAGGED)
    assert not world.messages.of(plain, "final")[0].files[0][0].startswith("SPOILER_")
    assert (await world.store.get(flagged)).status == JobStatus.DONE


async def test_age_restricted_channels_follow_the_servers_rule(world):
    await world.moderation.update_settings(GUILD, content_mode="block")  # age_restricted_channels: allow (NULL)
    allowed = await world.deliver(FLAGGED, channel=NSFW_CHANNEL)
    assert world.messages.of(allowed, "final")[0].files and world.classifier.calls == 0  # not even classified
    await world.moderation.update_settings(GUILD, content_age_restricted="same")
    same = await world.deliver(FLAGGED, channel=NSFW_CHANNEL)
    assert world.messages.of(same, "final")[0].files == []


async def test_mode_off_is_todays_path(world):
    job_id = await world.deliver(FLAGGED)
    assert world.messages.of(job_id, "final")[0].files and world.classifier.calls == 0
    await world.moderation.update_settings(GUILD, spoiler_images=True)  # the old spoilers option still works
    assert world.messages.of(await world.deliver(FLAGGED), "final")[0].files[0][0].startswith("SPOILER_")


async def test_a_missing_classifier_fails_closed(tmp_path):
    class Missing(MarkerClassifier):
        def classify(self, png: bytes) -> Verdict:
            raise ContentCheckUnavailable("nudenet not installed")

    async with migrated_database("sqlite", tmp_path) as url:
        store = JobStore(url)
        world = World(store, tmp_path / "data", Missing())
        try:
            await world.moderation.update_settings(GUILD, content_mode="block")
            job_id = await world.deliver("a beach")  # plain, but nobody could look at it
            assert world.messages.of(job_id, "final")[0].files == []
            assert "not checked (nudenet not installed)" in (await store.get(job_id)).error
            await world.moderation.update_settings(GUILD, content_mode="spoiler")
            assert world.messages.of(await world.deliver("a beach"), "final")[0].files[0][0].startswith("SPOILER_")
        finally:
            await world.close()
            await store.close()


async def test_previews_are_spoilers_while_a_check_is_on(world):
    job = SimpleNamespace(guild_id=GUILD)
    assert await world.lane._preview_name(job) == "preview.jpg"
    await world.moderation.update_settings(GUILD, content_mode="block")
    assert await world.lane._preview_name(job) == "SPOILER_preview.jpg"  # the check sees only the finished picture


# -- /mod content --------------------------------------------------------------------------------------------------

class Response:
    def __init__(self):
        self.sent: list[str] = []

    async def send_message(self, content: str, **fields) -> None:
        self.sent.append(content)


def moderator():
    ix = interaction(MOD, GUILD, permissions=discord.Permissions(manage_guild=True))
    ix.response = Response()
    return ix


async def test_mod_content_sets_the_mode_and_refuses_one_it_cannot_run(world):
    class Uninstalled(MarkerClassifier):
        def available(self) -> str | None:
            return "nudenet, onnxruntime not installed"

    cog = ModCog(None, world.moderation, world.store, None, None, lambda _: [], world.check)  # type: ignore[arg-type]
    ix = moderator()
    await cog.content.callback(cog, ix, mode="block", age_restricted_channels="same")
    assert "**block**" in ix.response.sent[0] and "**same**" in ix.response.sent[0]
    settings = await world.moderation.settings(GUILD)
    assert (settings.content_mode, settings.content_age_restricted) == ("block", "same")

    missing = ContentCheck(Uninstalled())
    try:
        cog = ModCog(None, world.moderation, world.store, None, None, lambda _: [], missing)  # type: ignore[arg-type]
        with pytest.raises(UserFacingError) as refused:
            await cog.content.callback(cog, moderator(), mode="spoiler")
        assert refused.value.args[0].key == "mod.content_check_missing"
        assert (await world.moderation.settings(GUILD)).content_mode == "block"  # unchanged
        await cog.content.callback(cog, moderator(), mode="off")  # off needs no classifier
    finally:
        missing.close()
    settings = await world.moderation.settings(GUILD)
    assert (settings.content_mode, settings.content_age_restricted) == (None, "same")
