"""Start-up failures end in one line on stderr and their own exit code (bot/startup_errors.py, gpu/startup_errors.py).

The bot runs as a subprocess (`python -m bot`, LOG_LEVEL=WARNING so that only the line is left)
against a closed port, an unresolvable host, a plain-HTTP port spoken to over TLS, and the fake
Discord told to refuse the token or the intents.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from paths import ROOT

from bot.startup_errors import ExitCode
from bot_process import free_port
from gpu.startup_errors import WorkerExit, explain_load_error


async def run_bot(data_dir: Path, **env: str) -> tuple[int, list[str], str]:
    data_dir.chmod(0o700)  # as the bot leaves it: otherwise it warns that it made DATA_DIR private
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "DISCORD_TOKEN": "MTIz.NDU2.Nzg5", "DATA_DIR": str(data_dir), "ZIMAGE_MODEL": "tiny",
            "LOG_LEVEL": "WARNING", "HTTP_PORT": str(free_port())}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=str(data_dir.parent), env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, stderr.decode().splitlines(), stdout.decode()


@pytest.mark.parametrize("case, code, line", [
    ("closed port", ExitCode.DISCORD_UNREACHABLE,
     "cannot reach Discord at {base}: cannot connect to 127.0.0.1:{port} (connection refused); no network, a firewall, "
     "or a wrong DISCORD_API_BASE?"),
    ("unresolvable host", ExitCode.DISCORD_UNREACHABLE,
     "cannot reach Discord at {base}: cannot resolve discord.invalid (DNS: "),
    ("TLS to a plain HTTP port", ExitCode.DISCORD_UNREACHABLE,
     "cannot reach Discord at {base}: the TLS handshake with 127.0.0.1:{port} failed ("),
    ("database", ExitCode.DATABASE,
     "database error: cannot migrate sqlite+aiosqlite:////nonexistent/folder/zimage.db: unable to open database file"),
])
async def test_bot_cannot_start(case, code, line, data_dir, fake):
    port = {"closed port": free_port()}.get(case, fake.port)
    base = {"unresolvable host": "https://discord.invalid/api/v10",
            "TLS to a plain HTTP port": f"https://127.0.0.1:{port}/api/v10"}.get(case, f"http://127.0.0.1:{port}/api/v10")
    extra = {"DATABASE_URL": "sqlite+aiosqlite:////nonexistent/folder/zimage.db"} if case == "database" else {}
    returncode, stderr, stdout = await run_bot(data_dir, DISCORD_API_BASE=base, **extra)
    assert (returncode, len(stderr), stdout) == (code, 1, ""), stderr
    assert stderr[0].startswith(line.format(base=base, port=port)), stderr[0]


async def test_a_rejected_token(data_dir, fake):
    returncode, stderr, _ = await run_bot(data_dir, **{**fake.env(), "DISCORD_TOKEN": "MTIz.NDU2.bm90LXRoZS10b2tlbg"})
    assert returncode == ExitCode.TOKEN_REJECTED and stderr == [
        "Discord rejected DISCORD_TOKEN: copy a new one from https://discord.com/developers/applications "
        "(your application → Bot → Reset Token) into the environment or .env"]


@pytest.mark.parametrize("close, code, fragment", [
    ((4014, "Disallowed intent(s)."), ExitCode.INTENTS_MISSING, "Privileged Gateway Intents"),
    ((4004, "Authentication failed."), ExitCode.TOKEN_REJECTED, "Discord rejected DISCORD_TOKEN"),
])
async def test_the_gateway_refuses(close, code, fragment, data_dir, fake):
    """The token passes REST but the gateway closes the connection (4014 is what Discord sends for intents
    the developer portal has not enabled). The worker was spawned by then and is stopped on the way out."""
    fake.gateway.refuse_identify = close
    returncode, stderr, _ = await run_bot(data_dir, **fake.env(), DEV_GUILD_ID=str(fake.guild_id))
    assert returncode == code and len(stderr) == 1 and fragment in stderr[0], "\n".join(stderr)


async def test_the_file_port_is_in_use(data_dir, fake):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        returncode, stderr, _ = await run_bot(data_dir, **fake.env(), HTTP_PORT=str(port))
    assert returncode == ExitCode.PORT_IN_USE and stderr == [
        f"cannot serve file links on 127.0.0.1:{port}: the address is in use (another zimage-bot?); "
        "set HTTP_PORT (or HTTP_HOST) to a free one"]


async def test_the_worker_cannot_download_the_model_offline(tmp_path):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpu", "--data-dir", str(tmp_path / "data"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == WorkerExit.DOWNLOAD and stderr.decode().splitlines() == [
        "cannot download model 'Tongyi-MAI/Z-Image-Turbo': it is not in the Hugging Face cache and HF_HUB_OFFLINE is "
        "set: download it first with `hf download Tongyi-MAI/Z-Image-Turbo` (~20 GB) on a machine that reaches the "
        "hub, into the same HF_HOME"]


def wrapped(*errors: BaseException) -> BaseException:
    """errors[0] raised from errors[1] raised from ...: the chain transformers builds around the hub's errors."""
    for outer, inner in zip(errors, errors[1:], strict=False):
        outer.__cause__ = inner
    return errors[0]


def test_worker_load_errors_are_told_apart(monkeypatch):
    from huggingface_hub import errors as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.6 GiB")
    code, line = explain_load_error("m/x", oom)
    assert code == WorkerExit.OUT_OF_MEMORY and line.startswith("out of GPU memory loading 'm/x'")
    assert "`python -m bot check` names the speed profile" in line
    unreachable = wrapped(OSError("We couldn't connect to 'https://huggingface.co'\nCheck your connection"),
                          hub.LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub"),
                          socket.gaierror(-2, "Name or service not known"))
    assert explain_load_error("m/x", unreachable) == (WorkerExit.DOWNLOAD, (
        "cannot download model 'm/x': the hub cannot be reached ([Errno -2] Name or service not known) and it is not in "
        "the Hugging Face cache: download it first with `hf download m/x` on a machine that reaches the hub, into the "
        "same HF_HOME"))
    full = wrapped(RuntimeError("download failed"), OSError(28, "No space left on device", "/cache/blobs/x.incomplete"))
    assert explain_load_error("m/x", full) == (
        WorkerExit.DOWNLOAD, "cannot download model 'm/x': the disk is full (/cache/blobs/x.incomplete); free some space "
                             "or move HF_HOME")
    code, line = explain_load_error("/models/z", ValueError("no file named model_index.json\nin /models/z"))
    assert (code, line) == (WorkerExit.MODEL, "cannot load model '/models/z': ValueError: no file named model_index.json "
                                              "in /models/z")


class FailingEngine:
    """What the worker's server needs of an engine, failing in load() as a GPU that is too small would."""

    model_name = "Tongyi-MAI/Z-Image-Turbo"

    def load(self) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 60.00 MiB")


async def test_the_worker_exits_with_one_line_when_loading_runs_out_of_memory(tmp_path, capsys):
    from gpu.__main__ import serve

    assert await serve(FailingEngine(), tmp_path / "worker.sock", warm_up=False) == WorkerExit.OUT_OF_MEMORY
    assert await serve(FailingEngine(), tmp_path / "missing" / "worker.sock", warm_up=False) == WorkerExit.SOCKET
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("out of GPU memory loading 'Tongyi-MAI/Z-Image-Turbo': ")
    assert lines[1] == f"cannot listen on {tmp_path / 'missing' / 'worker.sock'}: No such file or directory"
