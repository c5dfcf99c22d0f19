"""Runs the real bot (`python -m bot`) as a subprocess pointed at a FakeDiscord."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from paths import ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BotProcess:
    def __init__(self, fake, data_dir: Path, **env: str):
        self.fake = fake
        self.data_dir = data_dir
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "DISCORD_TOKEN": fake.bot_token,
            "DISCORD_API_BASE": fake.api_base,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            "DEV_GUILD_ID": str(fake.guild_id),
            "DATA_DIR": str(data_dir),
            "ZIMAGE_MODEL": "tiny",
            "LOG_LEVEL": "INFO",
            "HTTP_PORT": str(free_port()),
            **env,
        }
        self.log_path = data_dir.parent / "bot.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, wait_ready: bool = True, require_commands: bool = True) -> None:
        self.fake.ready_event_reset() if hasattr(self.fake, "ready_event_reset") else None
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=str(self.data_dir.parent), env=self.env, stdout=log, stderr=log)
        log.close()
        if wait_ready:
            await self.fake.wait_ready(timeout=60, require_commands=require_commands)

    def worker_pid(self) -> int | None:
        """The GPU worker is the bot's child running `-m gpu` (read from /proc: Linux only)."""
        assert self.process is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.process.pid and b"gpu" in cmdline:
                return int(entry.name)
        return None

    async def wait_worker(self, timeout: float = 60) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            pid = self.worker_pid()
            if pid and (self.data_dir / "worker.sock").exists():
                return pid
            await asyncio.sleep(0.1)
        raise TimeoutError("the bot did not start a GPU worker")

    async def kill(self) -> None:
        """SIGKILL: the bot gets no chance to clean up, like a power cut."""
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> int | None:
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode if self.process else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
