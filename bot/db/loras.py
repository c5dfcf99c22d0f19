"""The LoRA registry: who owns which adapter in which guild, and what each member picked.

Privacy invariant: a private LoRA exists only for its owner. Every lookup that a member's command
makes goes through `usable_by` / `find_usable` (own, or shared in the guild), so a private LoRA of
someone else answers exactly like a missing one. (`by_name` sees everything: uniqueness, moderators.)
"""

from __future__ import annotations

from sqlalchemy import delete, or_, select, update

from ..errors import UserFacingError
from .jobs import JobStore
from .models import Job, JobKind, JobStatus, Lora, LoraSelection
from .results import rowcount


class StackFull(UserFacingError):
    """The member already uses the most adapters allowed at once."""

    def __init__(self, names: list[str]):
        super().__init__(f"You already stack {len(names)} LoRAs ({', '.join(names)}), the most allowed at once. "
                         "`/lora clear name` one of them first.")
        self.names = names


class LoraStore:
    def __init__(self, jobs: JobStore):
        self.session = jobs.session

    async def create(self, *, guild_id: int, owner_id: int, name: str, rank: int, job_id: int | None,
                     path: str | None = None, source: str | None = None, origin: str | None = None) -> Lora:
        lora = Lora(guild_id=guild_id, owner_id=owner_id, name=name, rank=rank, job_id=job_id, steps=0, shared=False,
                    path=path, source=source, origin=origin)
        async with self.session() as session, session.begin():
            session.add(lora)
        return lora

    async def by_name(self, guild_id: int, name: str) -> Lora | None:
        """Any LoRA of the guild, private or not: for uniqueness checks and moderators only."""
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

    async def imported_by(self, owner_id: int, guild_id: int) -> list[Lora]:
        """The member's imported LoRAs in the guild (not those trained here): what their import quota counts."""
        async with self.session() as session:
            rows = await session.scalars(select(Lora).where(Lora.guild_id == guild_id, Lora.owner_id == owner_id,
                                                            Lora.source.is_not(None)))
            return list(rows)

    async def find_usable(self, user_id: int, guild_id: int, name: str) -> Lora | None:
        return next((lora for lora in await self.usable_by(user_id, guild_id) if lora.name == name), None)

    async def set_checkpoint(self, lora_id: int, path: str, steps: int) -> None:
        async with self.session() as session, session.begin():
            lora = await session.get(Lora, lora_id)
            if lora is not None:
                lora.path, lora.steps = path, steps

    async def set_shared(self, lora_id: int, shared: bool) -> int:
        """Share or unshare; unsharing drops other members' picks of it. Returns how many picks were dropped."""
        async with self.session() as session, session.begin():
            await session.execute(update(Lora).where(Lora.id == lora_id).values(shared=shared))
            if shared:
                return 0
            lora = await session.get(Lora, lora_id)
            if lora is None:  # deleted meanwhile, and its picks with it
                return 0
            result = await session.execute(delete(LoraSelection).where(
                LoraSelection.lora_id == lora_id, LoraSelection.user_id != lora.owner_id))
            return rowcount(result)

    async def rename(self, lora_id: int, name: str) -> None:
        """Raises sqlalchemy's IntegrityError when the guild already has that name."""
        async with self.session() as session, session.begin():
            await session.execute(update(Lora).where(Lora.id == lora_id).values(name=name))

    async def delete(self, lora_id: int) -> None:
        async with self.session() as session, session.begin():
            await session.execute(delete(LoraSelection).where(LoraSelection.lora_id == lora_id))
            await session.execute(delete(Lora).where(Lora.id == lora_id))

    async def training_active(self, lora_id: int) -> bool:
        """Whether a /train job for this LoRA is still waiting or running (its files are in use)."""
        async with self.session() as session:
            jobs = await session.scalars(select(Job).where(Job.kind == JobKind.TRAIN,
                                                           Job.status.in_(JobStatus.active())))
            return any((job.params or {}).get("lora_id") == lora_id for job in jobs)

    async def use(self, user_id: int, guild_id: int, lora_id: int, scale: float, max_stack: int) -> bool:
        """Add an adapter to the member's stack, or update its scale when already there (returns True then).

        Raises StackFull when `max_stack` other adapters are picked. Picks the member may no longer use
        (unshared or deleted since) are dropped on the way."""
        picked = {lora.id: lora.name for lora, _ in await self.selection(user_id, guild_id)}
        async with self.session() as session, session.begin():
            await session.execute(delete(LoraSelection).where(
                LoraSelection.user_id == user_id, LoraSelection.guild_id == guild_id,
                LoraSelection.lora_id.not_in([*picked, lora_id])))
            if lora_id in picked:
                await session.execute(update(LoraSelection).where(
                    LoraSelection.user_id == user_id, LoraSelection.guild_id == guild_id,
                    LoraSelection.lora_id == lora_id).values(scale=scale))
                return True
            if len(picked) >= max_stack:
                raise StackFull(sorted(picked.values()))
            session.add(LoraSelection(user_id=user_id, guild_id=guild_id, lora_id=lora_id, scale=scale))
            return False

    async def clear(self, user_id: int, guild_id: int, lora_id: int | None = None) -> int:
        """Drop all the member's picks, or only `lora_id`. Returns how many were dropped."""
        condition = [LoraSelection.user_id == user_id, LoraSelection.guild_id == guild_id]
        if lora_id is not None:
            condition.append(LoraSelection.lora_id == lora_id)
        async with self.session() as session, session.begin():
            return rowcount(await session.execute(delete(LoraSelection).where(*condition)))

    async def selection(self, user_id: int, guild_id: int | None) -> list[tuple[Lora, float]]:
        """The member's picked adapters that they may still use (a LoRA unshared since is dropped)."""
        if guild_id is None:
            return []
        async with self.session() as session:
            rows = (await session.execute(select(Lora, LoraSelection.scale).join(
                LoraSelection, LoraSelection.lora_id == Lora.id).where(
                LoraSelection.user_id == user_id, LoraSelection.guild_id == guild_id).order_by(Lora.name))).all()
        return [(lora, scale) for lora, scale in rows
                if lora.path and (lora.owner_id == user_id or lora.shared)]
