"""Which workers spawn mode starts: one per GPU (WORKER_GPUS), each on its own unix socket.

`auto` asks the machine: the devices CUDA_VISIBLE_DEVICES names, else those ``nvidia-smi`` lists, else none,
and then one worker runs without a GPU (the tiny model, or CPU). The bot never imports torch for this: a
CUDA context in the bot process would hold GPU memory the workers need.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings, SettingsError

log = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT = 10.0


@dataclass(frozen=True)
class LocalWorker:
    """One worker spawn mode runs: its GPU (an index into the devices the bot sees; None: whatever the worker
    finds, one CPU worker) and its socket."""

    gpu: int | None
    socket: Path

    def cuda_visible_devices(self, inherited: str | None) -> str | None:
        """What the worker's CUDA_VISIBLE_DEVICES must say so that it sees only its GPU. WORKER_GPUS counts among
        the devices the bot's own CUDA_VISIBLE_DEVICES names (as torch does), so `1` under `2,3` is device 3."""
        if self.gpu is None:
            return None
        if inherited is None:
            return str(self.gpu)
        # An empty or `-1` CUDA_VISIBLE_DEVICES hides every GPU: it shows none for WORKER_GPUS to pick from, rather
        # than letting a worker see a GPU the operator hid from the bot.
        names = visible_names(inherited)
        if self.gpu >= len(names):
            raise ValueError(f"WORKER_GPUS names GPU {self.gpu}, but CUDA_VISIBLE_DEVICES={inherited!r} shows "
                             f"{len(names)}")
        return names[self.gpu]

    @property
    def label(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else "the only worker"


async def local_workers(settings: Settings) -> list[LocalWorker]:
    gpus: list[int] | tuple[int, ...] | None = settings.worker_gpus
    if gpus is None:
        gpus = await visible_gpus()
        log.info("WORKER_GPUS=auto: %s", f"one worker on each of GPUs {list(gpus)}" if gpus else "no GPU seen, one worker")
    workers = plan_workers(settings.socket_path, gpus)
    for worker in workers:
        try:
            worker.cuda_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    return workers


def plan_workers(socket: Path, gpus: list[int] | tuple[int, ...]) -> list[LocalWorker]:
    """One GPU (or none) keeps the one socket the settings name; several get a socket each beside it."""
    if len(gpus) <= 1:
        return [LocalWorker(gpus[0] if gpus else None, socket)]
    return [LocalWorker(gpu, socket.with_name(f"{socket.stem}-gpu{gpu}{socket.suffix}")) for gpu in gpus]


async def visible_gpus() -> list[int]:
    """The CUDA devices this machine gives us, without touching CUDA in this process."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        return parse_visible_devices(named)
    try:
        process = await asyncio.create_subprocess_exec(
            "nvidia-smi", "--query-gpu=index", "--format=csv,noheader",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(process.communicate(), NVIDIA_SMI_TIMEOUT)
    except (OSError, TimeoutError):
        return []  # no driver tools: no GPU we could use
    if process.returncode != 0:
        return []
    return [int(line) for line in out.decode().split() if line.strip().isdigit()]


def parse_visible_devices(value: str) -> list[int]:
    """CUDA_VISIBLE_DEVICES as the workers will see it: indices into what it names. `-1`, or empty: no GPU."""
    return list(range(len(visible_names(value))))


def visible_names(value: str) -> list[str]:
    """The device names (indices or UUIDs) CUDA_VISIBLE_DEVICES shows, in order; CUDA stops at the first invalid
    entry (`-1`)."""
    names: list[str] = []
    for name in (part.strip() for part in value.split(",") if part.strip()):
        if name.startswith("-"):
            break
        names.append(name)
    return names
