"""Runs ``python -m gpu`` as a child process and restarts it, with back-off, when it dies.

Spawn mode runs one per GPU (bot/worker/gpus.py); each is restarted on its own."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from ..settings import Settings
from .gpus import LocalWorker

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
HEALTHY_AFTER = 60.0  # a worker that lived this long resets the back-off
WORKER_SECRETS = ("DISCORD_TOKEN", "DATABASE_URL", "WORKER_TOKEN")  # left out of the worker's environment


class WorkerSupervisor:
    def __init__(self, settings: Settings, worker: LocalWorker | None = None):
        self.settings = settings
        self.worker = worker or LocalWorker(None, settings.socket_path)
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"worker-supervisor {self.worker.label}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "gpu", "--model", self.settings.zimage_model,
                   "--data-dir", str(self.settings.data_dir), "--socket", str(self.worker.socket), "--exit-with-parent"]
        # The worker needs neither the bot's Discord token nor its database: secrets it does not hold cannot leak.
        env = {**{k: v for k, v in os.environ.items() if k not in WORKER_SECRETS}, "LOG_LEVEL": self.settings.log_level}
        device = self.worker.cuda_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device  # the worker sees its one GPU, as cuda:0
        # The worker's logs go to our stdout/stderr: one place to read for an operator.
        return await asyncio.create_subprocess_exec(*command, env=env, start_new_session=True)

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            started = time.monotonic()
            self.process = await self._spawn()
            log.info("started GPU worker pid %s (%s)", self.process.pid, self.worker.label)
            code = await self.process.wait()
            if self._stopping:
                return
            lived = time.monotonic() - started
            if lived > HEALTHY_AFTER:
                backoff = 1.0
            self.restarts += 1
            log.error("GPU worker exited with code %s after %.0f s (%s); restarting in %.0f s", code, lived,
                      self.worker.label, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def stop(self) -> None:
        self._stopping = True
        if self.process and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
