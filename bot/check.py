"""``python -m bot check``: can this machine run the bot? One line per check; exit 0 when every one passes.

It changes nothing: the database is neither created nor migrated, the model neither downloaded nor
built, the worker not started (its imports are tried in a child process, as the supervisor would
start it). ``--worker`` runs only the checks of the GPU side (no Discord token needed), for the
machine or container of a worker run with WORKER_MODE=external.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gpu import model_files, profiles
from gpu.startup_errors import one_line
from zimage_protocol.constants import DEFAULT_MODEL, TINY_MODEL, tiny_model_dir_name

from .settings import Settings, SettingsError, load_settings

MIN_FREE_GIB = 5.0  # images, LoRAs (~0.3 GB each at rank 64), KEEP_CHECKPOINTS checkpoints per training, the compile cache
WORKER_IMPORT_TIMEOUT = 180.0
TOKEN_PART = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Check:
    ok: bool
    name: str
    detail: str

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.name}: {self.detail}"


def token_problem(token: str) -> str | None:
    """What is wrong with the shape of a bot token (never the token itself), or None.

    A bot token is three base64url parts joined by dots, the first the bot's user id in base64."""
    if token.lower().startswith("bot "):
        return "starts with 'Bot ': set only the token itself"
    parts = token.split(".")
    if len(parts) != 3:
        hint = ""
        if token.isdigit():
            hint = " (all digits: an application id?)"
        elif len(parts) == 1 and len(token) == 32:
            hint = " (32 characters, no dots: the OAuth2 client secret?)"
        return f"has {len(parts)} dot-separated part(s), a bot token has 3{hint}"
    if not all(TOKEN_PART.fullmatch(part) for part in parts):
        return "has characters a bot token never contains (quotes, spaces?)"
    try:
        user_id = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        user_id = ""
    if not user_id.isdigit():
        return "its first part is not a base64 user id, as in every bot token"
    return None


def bot_user_id(token: str) -> str:
    first = token.split(".")[0]
    return base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")


def check_token(token: str) -> Check:
    problem = token_problem(token)
    if problem:
        return Check(False, "DISCORD_TOKEN", f"{problem} (Discord developer portal: Bot → Reset Token)")
    return Check(True, "DISCORD_TOKEN", f"shaped like a bot token (bot user id {bot_user_id(token)})")


def check_database(settings: Settings) -> Check:
    """Reachable, and at which migration. Behind head is fine: the bot migrates at every start."""
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url

    from .db.migrate import alembic_config

    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        folder = Path(url.database).parent
        if not os.access(_existing_parent(folder), os.W_OK):
            return Check(False, "database", f"{url.database} does not exist and {folder} is not writable")
        return Check(True, "database", f"{url.database} does not exist yet: created and migrated at the first start")
    script = ScriptDirectory.from_config(alembic_config(settings.sync_database_url))
    heads = set(script.get_heads())
    try:
        current = asyncio.run(_current_revisions(settings.database_url))
    except Exception as exc:  # noqa: BLE001 - any driver's error, told on one line
        reason = getattr(exc, "orig", None) or exc  # the driver's words, without SQLAlchemy's help link
        return Check(False, "database", f"cannot connect to {shown}: {one_line(reason)}")
    known = {revision.revision for revision in script.walk_revisions()}
    if current == heads:
        return Check(True, "database", f"{shown} reachable, migrated to head ({', '.join(sorted(heads))})")
    if current - known:
        return Check(False, "database", f"{shown} is at revision {', '.join(sorted(current - known))}, which this "
                                        "version does not know (migrated by a newer version?)")
    return Check(True, "database", f"{shown} reachable, at {', '.join(sorted(current)) or 'no revision'}: "
                                   f"`python -m bot` migrates it to {', '.join(sorted(heads))} at start")


async def _current_revisions(database_url: str) -> set[str]:
    """The database's Alembic revisions, read through the bot's own async driver, as the bot connects."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    # asyncpg waits 60 s for an unreachable server by default; a check should answer sooner.
    connect_args = {"timeout": 10} if database_url.startswith("postgresql+asyncpg") else {}
    engine = create_async_engine(database_url, poolclass=NullPool, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_heads()))
    finally:
        await engine.dispose()


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(data_dir: Path, min_free_gib: float = MIN_FREE_GIB) -> Check:
    free = shutil.disk_usage(_existing_parent(data_dir)).free / profiles.GIB
    detail = f"{free:.1f} GiB free for DATA_DIR ({data_dir})"
    if free < min_free_gib:
        return Check(False, "disk", f"{detail}; images, LoRAs and training checkpoints need at least {min_free_gib:.0f} GiB")
    return Check(True, "disk", detail)


def check_gpu(model: str, env: dict[str, str]) -> list[Check]:
    """torch, the CUDA GPU the worker would use (device 0), and the speed profile that fits it."""
    import torch

    build = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ", no CUDA build")
    if not torch.cuda.is_available():
        if model == TINY_MODEL:
            return [Check(True, "GPU", f"none ({build}): the tiny model runs on the CPU")]
        return [Check(False, "GPU", f"no CUDA GPU found ({build}): {model} needs one (README, \"With a GPU\"); "
                                    "ZIMAGE_MODEL=tiny tries the bot on the CPU")]
    device = torch.cuda.get_device_properties(0)
    capability = (device.major, device.minor)
    checks = [Check(True, "GPU", f"{device.name}, {device.total_memory / profiles.GIB:.1f} GiB, compute capability "
                                 f"{device.major}.{device.minor} ({build})")]
    checks.append(profile_check(device.total_memory, capability, env, device.name))
    chosen = _chosen_profile(device.total_memory, capability, env)
    if chosen is not None and chosen is not profiles.BF16 and not _importable("torchao"):
        checks.append(Check(False, "torchao", f"{chosen.settings} needs torchao: "
                                              "pip install -c requirements.lock -e \".[fp8]\""))
    return checks


def _chosen_profile(total_memory: int, capability: tuple[int, int], env: dict[str, str]) -> profiles.Profile | None:
    try:
        return profiles.resolve(env, total_memory, capability).profile
    except profiles.ProfileError:
        return None


def profile_check(total_memory: int, capability: tuple[int, int], env: dict[str, str], gpu_name: str = "GPU") -> Check:
    """The profile the worker will run (picked from the card unless ZIMAGE_VRAM / ZIMAGE_QUANT set one), checked
    against the card (pure: tested without a GPU)."""
    try:
        pick = profiles.resolve(env, total_memory, capability)
    except profiles.ProfileError as exc:
        return Check(False, "speed profile", str(exc))
    if pick.auto:  # the worker's own start line, word for word
        return Check(True, "speed profile", profiles.describe_pick(pick, gpu_name))
    configured = pick.profile
    best = profiles.choose_profile(total_memory, capability)
    problem = profiles.fits(configured, total_memory, capability)
    if problem:
        hint = f"set {best.settings}" if best is not None else "no profile fits this GPU"
        return Check(False, "speed profile", f"{problem}; {hint} (or unset ZIMAGE_VRAM / ZIMAGE_QUANT: the worker "
                                             "picks from the card)")
    detail = f"{configured.name} ({configured.settings}) fits"
    if best is not None and best is not configured and best.min_gib > configured.min_gib:
        detail += f"; {best.name} ({best.settings}) fits too and is faster"
    if not configured.trains:
        detail += "; generation only: /train needs 16 GB"
    return Check(True, "speed profile", detail)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_model(model: str, data_dir: Path, hub_offline: bool) -> Check:
    """The model's files: the tiny model, a local folder, or a hub id in the Hugging Face cache."""
    if model == TINY_MODEL:
        folder = data_dir / "models" / tiny_model_dir_name()
        if (folder / "model_index.json").is_file():
            return Check(True, "model", f"tiny, in {folder}")
        return Check(True, "model", f"tiny: built offline in {folder} at the first start (seconds)")
    local = Path(model).expanduser()
    if local.is_dir():
        return _folder_check(model_files.pipeline_status(local), model)
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        return Check(False, "model", f"ZIMAGE_MODEL={model!r} is neither a folder nor a Hugging Face id (owner/name)")
    snapshot = model_files.cached_snapshot(model)
    if snapshot is not None:
        return _folder_check(model_files.pipeline_status(snapshot), model)
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    fetch = f"download it first: hf download {model} (~{model_files.DOWNLOAD_ESTIMATE / 1e9:.0f} GB)"
    if hub_offline:
        return Check(False, "model", f"{model} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: {fetch}")
    try:
        size = model_files.download_size(model)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, DNS: the reason on one line
        return Check(False, "model", f"{model} is not in the Hugging Face cache ({cache}) and the hub cannot be "
                                     f"reached ({one_line(exc)}): {fetch}")
    free = shutil.disk_usage(_existing_parent(cache)).free
    detail = f"{model} not downloaded yet: the worker downloads {size / 1e9:.1f} GB into {cache} at its first start"
    if free < size:
        return Check(False, "model", f"{detail}, but only {free / 1e9:.1f} GB are free there")
    return Check(True, "model", f"{detail} ({free / 1e9:.0f} GB free)")


def _folder_check(status: model_files.FolderStatus, model: str) -> Check:
    if status.problem:
        return Check(False, "model", f"{model} in {status.folder} is incomplete: {status.problem}")
    return Check(True, "model", f"{model}: {status.size / 1e9:.1f} GB in {status.folder}")


def check_worker_starts(timeout: float = WORKER_IMPORT_TIMEOUT) -> Check:
    """The worker's imports, in a child process with this interpreter and environment (as the supervisor starts it)."""
    code = "import gpu.__main__, gpu.server, diffusers; from diffusers import ZImagePipeline; print(diffusers.__version__)"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Check(False, "worker", f"importing the worker took over {timeout:.0f} s")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return Check(False, "worker", f"python -m gpu cannot start: {last}")
    return Check(True, "worker", f"python -m gpu imports (diffusers {done.stdout.strip()}, ZImagePipeline found)")


def check_external_worker(socket_path: Path) -> Check:
    from gpu.server import socket_is_live

    if socket_is_live(socket_path):
        return Check(True, "worker", f"WORKER_MODE=external: a worker answers on {socket_path}")
    return Check(False, "worker", f"WORKER_MODE=external: nothing answers on {socket_path}; start the worker "
                                  f"(python -m gpu --socket {socket_path}) and check it with `python -m bot check --worker`")


def check_listed_workers(settings: Settings) -> list[Check]:
    """WORKERS: each endpoint connected to as the bot will (TLS, certificate, token, protocol version)."""
    from .worker.probe import probe_worker

    return [Check(ok, "worker", line) for ok, line in
            (asyncio.run(probe_worker(endpoint, settings.worker_security)) for endpoint in settings.workers)]


def _guarded(name: str, run: Callable[[], Check | list[Check]]) -> list[Check]:
    """A check that raises is a failed check, on one line."""
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001
        return [Check(False, name, f"{type(exc).__name__}: {one_line(exc)}")]
    return result if isinstance(result, list) else [result]


def worker_checks(data_dir: Path, model: str, env: dict[str, str]) -> Iterator[Check]:
    offline = env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    yield from _guarded("GPU", lambda: check_gpu(model, env))
    yield from _guarded("model", lambda: check_model(model, data_dir, offline))
    yield from _guarded("worker", check_worker_starts)


def all_checks(worker_only: bool) -> Iterator[Check]:
    if worker_only:
        _load_dotenv()
        env = dict(os.environ)
        data_dir = Path(env.get("DATA_DIR", "").strip() or "data").expanduser().resolve()
        yield from _guarded("disk", lambda: check_disk(data_dir))
        yield from worker_checks(data_dir, env.get("ZIMAGE_MODEL", "").strip() or DEFAULT_MODEL, env)
        return
    try:
        settings = load_settings()
    except SettingsError as exc:
        yield Check(False, "settings", str(exc))
        return
    yield Check(True, "settings", f"parsed (DATA_DIR={settings.data_dir}, ZIMAGE_MODEL={settings.zimage_model}, "
                                  f"WORKER_MODE={settings.worker_mode})")
    yield check_token(settings.discord_token)
    yield from _guarded("database", lambda: check_database(settings))
    yield from _guarded("disk", lambda: check_disk(settings.data_dir))
    if settings.worker_mode == "external" and settings.workers:
        yield from _guarded("worker", lambda: check_listed_workers(settings))
        return
    if settings.worker_mode == "external":
        yield from _guarded("worker", lambda: check_external_worker(settings.socket_path))
        return
    yield from worker_checks(settings.data_dir, settings.zimage_model, dict(os.environ))


def _load_dotenv() -> None:
    if Path(".env").is_file():
        from dotenv import load_dotenv

        load_dotenv(".env", override=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help="only the GPU worker's checks (WORKER_MODE=external)")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # ✓/✗ on a terminal that is not UTF-8
    failed = False
    for check in all_checks(args.worker):
        print(check.line(), flush=True)
        failed |= not check.ok
    return 1 if failed else 0
