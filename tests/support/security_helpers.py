"""The bot's services over a real (migrated) SQLite file, without Discord or a worker: for the tests of #18's findings.

`World` builds the stores, the LoRA library and its link signer the way bot/composition.py does; `interaction`
is the little of a discord.Interaction those services read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from bot.db.jobs import JobStore
from bot.db.loras import LoraStore
from bot.db.migrate import upgrade_to_head
from bot.db.moderation import ModerationStore
from bot.files_server import LinkSigner
from bot.lora_library import LoraLibrary
from bot.settings import Settings

GUILD, CHANNEL = 1000, 2000
ALICE, BOB, MOD = 11, 22, 33


@dataclass
class World:
    data_dir: Path
    settings: Settings
    store: JobStore
    loras: LoraStore
    moderation: ModerationStore
    signer: LinkSigner
    library: LoraLibrary
    files: list[Path] = field(default_factory=list)

    async def close(self) -> None:
        await self.store.close()

    def lora_file(self, folder: str, content: bytes = b"lora") -> Path:
        """A stand-in LoRA file inside DATA_DIR (the library never parses it in these tests)."""
        path = self.data_dir / "loras" / folder / "pytorch_lora_weights.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    async def lora(self, name: str, owner: int = ALICE, *, shared: bool = False, guild: int = GUILD,
                   source: str | None = "kohya", content: bytes = b"lora"):
        path = self.lora_file(f"{name}-{owner}", content)
        lora = await self.loras.create(guild_id=guild, owner_id=owner, name=name, rank=4, job_id=None,
                                       path=str(path), source=source, origin=f"{name}.safetensors")
        if shared:
            await self.loras.set_shared(lora.id, True)
        return await self.loras.get(lora.id)


async def make_world(tmp_path: Path, **settings) -> World:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    upgrade_to_head(f"sqlite:///{data_dir / 'zimage.db'}")
    config = Settings(discord_token="not-a-token", data_dir=data_dir,
                      database_url=f"sqlite+aiosqlite:///{data_dir / 'zimage.db'}", **settings)
    store = JobStore(config.database_url)
    loras = LoraStore(store)
    signer = LinkSigner(b"k" * 64, data_dir, "http://127.0.0.1:1", 3600)
    return World(data_dir, config, store, loras, ModerationStore(store), signer, LoraLibrary(config, loras, signer))


def interaction(user_id: int, guild_id: int | None = GUILD, *, interaction_id: int = 1, **extra) -> SimpleNamespace:
    """What the services read of a discord.Interaction (no response: the tests stop before answering)."""
    return SimpleNamespace(user=SimpleNamespace(id=user_id), guild_id=guild_id, channel_id=CHANNEL, id=interaction_id,
                           filesize_limit=10 << 20, token="interaction-token", **extra)
