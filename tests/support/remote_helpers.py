"""Remote-worker test helpers: a private CA and a worker certificate (openssl CLI), a free port, a TCP proxy
that can be cut silently (a network drop: no FIN, no RST, just no more bytes), and a tiny training set."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TestPki:
    ca: Path
    cert: Path
    key: Path


def make_pki(folder: Path, names: tuple[str, ...] = ("DNS:localhost", "IP:127.0.0.1")) -> TestPki:
    """A CA and a worker certificate it signed, for the names given (checked by the bot's TLS)."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=zimage test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "worker.key",
            "-out", "worker.csr")
    (folder / "ext.cnf").write_text(f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "worker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "worker.pem")
    return TestPki(folder / "ca.pem", folder / "worker.pem", folder / "worker.key")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class CuttableProxy:
    """Forwards host:port to 127.0.0.1:target_port. cut() silences the connections open now (they swallow
    every byte and close nothing, like a dead network path); connections made later are forwarded again."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self._open: list[dict[str, bool]] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str = "127.0.0.1") -> None:
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        for state in self._open:
            state["cut"] = True
        self._open.clear()
        self.cuts += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the worker is not listening yet: the client sees a closed connection and retries
            writer.transport.abort()
            return
        state = {"cut": False}
        self._open.append(state)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, state))
            self._tasks.add(task)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, state: dict[str, bool]) -> None:
        try:
            while data := await source.read(65536):
                if not state["cut"]:
                    sink.write(data)
                    await sink.drain()
        except ConnectionError:
            pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._server:
            self._server.close()


def start_remote_worker(worker_dir: Path, tiny_models_dir: Path, pki: TestPki, token: str, heartbeat: float,
                        port: int) -> tuple[subprocess.Popen, Path]:
    """`python -m gpu --listen tcp://127.0.0.1:port` with the tiny model and a DATA_DIR of its own; its log path."""
    import os
    import sys

    worker_dir.mkdir(parents=True)
    (worker_dir / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    log = worker_dir.parent / "worker.log"
    env = {**os.environ, "WORKER_TLS_CERT": str(pki.cert), "WORKER_TLS_KEY": str(pki.key), "WORKER_TOKEN": token,
           "WORKER_HEARTBEAT_TIMEOUT": str(heartbeat)}
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "gpu", "--model", "tiny", "--data-dir", str(worker_dir),
                                    "--listen", f"tcp://127.0.0.1:{port}"], env=env, stderr=sink)
    return process, log


def write_dataset(root: Path, count: int = 4, size: int = 64) -> Path:
    """A few coloured PNGs and their manifest.json, as the bot's intake prepares a training set."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    entries = []
    for index in range(count):
        name = f"img{index:02d}.png"
        Image.new("RGB", (size, size), (40 * index, 200 - 30 * index, 90)).save(root / "images" / name)
        entries.append({"file": name, "caption": f"a square in colour {index}", "width": size, "height": size,
                        "source_name": f"upload-{index}.png"})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root
