"""The LoRA registry: who owns which adapter in which guild, and what each member picked."""

from __future__ import annotations

from sqlalchemy import delete, or_, select

from .jobs import JobStore
from .models import Lora, LoraSelection


class LoraStore:
    def __init__(self, jobs: JobStore):
        self.session = jobs.session

    async def create(self, *, guild_id: int, owner_id: int, name: str, rank: int, job_id: int | None) -> Lora:
        lora = Lora(guild_id=guild_id, owner_id=owner_id, name=name, rank=rank, job_id=job_id, steps=0, shared=False)
        async with self.session() as session, session.begin():
            session.add(lora)
        return lora

    async def by_name(self, guild_id: int, name: str) -> Lora | None:
        async with self.session() as session:
            return await session.scalar(select(Lora).where(Lora.guild_id == guild_id, Lora.name == name))

    async def get(self, lora_id: int) -> Lora | None:
        async with self.session() as session:
            return await session.get(Lora, lora_id)

    async def usable_by(self, user_id: int, guild_id: int) -> list[Lora]:
        """The member's own LoRAs with at least one checkpoint, and those shared in the guild."""
        async with self.session() as session:
            rows = await session.scalars(select(Lora).where(
                Lora.guild_id == guild_id, Lora.path.is_not(None),
                or_(Lora.owner_id == user_id, Lora.shared.is_(True))).order_by(Lora.name))
            return list(rows)

    async def set_checkpoint(self, lora_id: int, path: str, steps: int) -> None:
        async with self.session() as session, session.begin():
            lora = await session.get(Lora, lora_id)
            if lora is not None:
                lora.path, lora.steps = path, steps

    async def use(self, user_id: int, guild_id: int, lora_id: int, scale: float) -> None:
        """Pick one adapter for the member's later /imagine (replaces an earlier pick)."""
        async with self.session() as session, session.begin():
            await session.execute(delete(LoraSelection).where(
                LoraSelection.user_id == user_id, LoraSelection.guild_id == guild_id))
            session.add(LoraSelection(user_id=user_id, guild_id=guild_id, lora_id=lora_id, scale=scale))

    async def clear(self, user_id: int, guild_id: int) -> int:
        async with self.session() as session, session.begin():
            result = await session.execute(delete(LoraSelection).where(
                LoraSelection.user_id == user_id, LoraSelection.guild_id == guild_id))
            return result.rowcount

    async def selection(self, user_id: int, guild_id: int | None) -> list[tuple[Lora, float]]:
        """The member's picked adapters that they may still use (a LoRA unshared since is dropped)."""
        if guild_id is None:
            return []
        async with self.session() as session:
            rows = (await session.execute(select(Lora, LoraSelection.scale).join(
                LoraSelection, LoraSelection.lora_id == Lora.id).where(
                LoraSelection.user_id == user_id, LoraSelection.guild_id == guild_id))).all()
        return [(lora, scale) for lora, scale in rows
                if lora.path and (lora.owner_id == user_id or lora.shared)]
