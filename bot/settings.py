"""Settings from the environment (and a `.env` file): parsed once, validated at start-up.

A bad value stops the bot with one clear line (`SettingsError`), never a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from zimage_protocol.constants import DEFAULT_MODEL
from zimage_protocol.endpoints import Endpoint, TcpEndpoint, UnixEndpoint, parse_endpoints
from zimage_protocol.security import WireSecurity
from zimage_protocol.settings import (
    EnhancerSettings,
    LoraLimits,
    PreviewSettings,
    SettingsError,
    read_choice,
    read_float,
    read_int,
    read_optional_int,
)
from zimage_protocol.training_adapter import DEFAULT_SPEC as DEFAULT_ADAPTER_SPEC
from zimage_protocol.training_adapter import HUB_PREFIX, parse_spec

from .safety.classifiers import CONTENT_CLASSIFIERS

__all__ = ["Settings", "SettingsError", "load_settings"]


@dataclass(frozen=True)
class Settings:
    discord_token: str = field(repr=False)  # secrets stay out of reprs (logs, tracebacks)
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    dev_guild_id: int | None = None
    data_dir: Path = Path("data")
    database_url: str = field(default="", repr=False)  # may hold a password
    zimage_model: str = DEFAULT_MODEL
    worker_mode: str = "spawn"  # spawn: the bot runs `python -m gpu`; external: connect only
    worker_socket: Path | None = None
    # WORKER_GPUS (spawn mode): one supervised worker per GPU; None = auto (every CUDA device, or one CPU worker)
    worker_gpus: tuple[int, ...] | None = None
    # WORKERS (external mode): unix:/path and tcp://host:port endpoints; empty: the one socket above.
    workers: tuple[Endpoint, ...] = ()
    # WORKER_TLS_CERT/KEY/CA, WORKER_TOKEN, WORKER_HEARTBEAT_TIMEOUT: read by the worker too, one parser for both
    worker_security: WireSecurity = WireSecurity()
    max_queued_per_user: int = 3
    rate_limit_count: int = 5
    rate_limit_period: float = 60.0
    max_attempts: int = 2
    progress_interval: float = 1.0
    # PREVIEWS / PREVIEW_EVERY: live previews on the progress message; read by the worker too, one parser for both
    previews: PreviewSettings = PreviewSettings()
    # PROMPT_ENHANCER: /imagine enhance:True (the worker rewrites the prompt); off: the option is refused
    enhancer: EnhancerSettings = EnhancerSettings()
    log_level: str = "INFO"
    allow_dms: bool = False  # /imagine in DMs (no server's rules there: see bot/moderation.py)
    # CONTENT_CLASSIFIER: the /mod content check's classifier (bot/safety/); `marker` is the tests' stand-in
    content_classifier: str = "nudenet"
    # LoRA training (/train); defaults follow the Z-Image character-LoRA guide.
    train_steps: int = 4000
    train_rank: int = 64
    train_learning_rate: float = 2e-4
    train_weight_decay: float = 1e-4
    train_resolution: int = 512
    train_timesteps: str = "sigmoid"
    checkpoint_every: int = 250
    keep_checkpoints: int = 7
    training_retention_days: int = 7  # then a finished training keeps only its LoRA's checkpoint (0: forever)
    # TRAINING_ADAPTER (zimage_protocol/training_adapter.py): "default" (the published de-distillation adapter,
    # resolved by the worker), None (none), "hf:owner/repo/file@revision" or a path on the worker's disk
    training_adapter: str | None = DEFAULT_ADAPTER_SPEC
    train_min_images: int = 10
    train_max_images: int = 500
    max_zip_bytes: int = 512 << 20
    # The LoRA library (/lora import, /lora use, /imagine lora:).
    lora_max_bytes: int = 1024 << 20
    lora_max_header_bytes: int = 1024 << 10
    lora_default_scale: float = 0.8
    lora_download_timeout: int = 300
    # Each member's imports, per server (/mod limits overrides the first two); imports running at once, in all.
    lora_import_max_count: int = 20
    lora_import_max_bytes: int = 4096 << 20
    lora_imports_at_once: int = 2
    # LORA_MAX_STACK / LORA_MAX_RANK / LORA_CACHE_MB / LORA_HOTSWAP: read by the worker too, one parser for both
    lora: LoraLimits = LoraLimits()
    # The bot's small HTTP endpoint for files too big for Discord (signed, expiring links).
    http_host: str = "127.0.0.1"
    http_port: int = 8765
    public_url: str = ""
    link_ttl: float = 7 * 86400.0

    @property
    def socket_path(self) -> Path:
        return self.worker_socket or self.data_dir / "worker.sock"

    @property
    def worker_endpoints(self) -> tuple[Endpoint, ...]:
        """The workers the bot connects to: WORKERS, or the one unix socket (spawn mode, or external without WORKERS)."""
        return self.workers or (UnixEndpoint(self.socket_path),)

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def training_dir(self) -> Path:
        return self.data_dir / "training"

    @property
    def link_base(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @property
    def sync_database_url(self) -> str:
        """The same database through a synchronous driver (Alembic runs synchronously)."""
        return self.database_url.replace("+aiosqlite", "")


def _url(env: dict[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip() or default
    url = URL(raw)
    if url.scheme not in schemes or not url.host:
        raise SettingsError(f"{name} must be a {' or '.join(schemes)} URL, got {raw!r}")
    return raw


def load_settings(env: dict[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
    """Read settings; values already in the environment win over the `.env` file."""
    if env is None:
        if dotenv_path and Path(dotenv_path).is_file():
            from dotenv import load_dotenv

            load_dotenv(dotenv_path, override=False)
        env = dict(os.environ)
    token = env.get("DISCORD_TOKEN", "").strip()
    if not token:
        raise SettingsError("DISCORD_TOKEN is not set: put your bot token in the environment or in .env")
    data_dir = Path(env.get("DATA_DIR", "").strip() or "data").expanduser().resolve()
    database_url = env.get("DATABASE_URL", "").strip() or f"sqlite+aiosqlite:///{data_dir / 'zimage.db'}"
    if "://" not in database_url:
        raise SettingsError(f"DATABASE_URL must be a SQLAlchemy URL such as sqlite+aiosqlite:///path, got {database_url!r}")
    socket = env.get("WORKER_SOCKET", "").strip()
    log_level = (env.get("LOG_LEVEL", "").strip() or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    d = Settings  # every default is written once, on the dataclass
    return Settings(
        discord_token=token,
        discord_api_base=_url(env, "DISCORD_API_BASE", d.discord_api_base, ("http", "https")).rstrip("/"),
        discord_gateway_url=_url(env, "DISCORD_GATEWAY_URL", d.discord_gateway_url, ("ws", "wss")),
        dev_guild_id=read_optional_int(env, "DEV_GUILD_ID", minimum=1),
        data_dir=data_dir,
        database_url=database_url,
        zimage_model=env.get("ZIMAGE_MODEL", "").strip() or DEFAULT_MODEL,
        worker_mode=read_choice(env, "WORKER_MODE", d.worker_mode, ("spawn", "external")),
        worker_socket=Path(socket).expanduser().resolve() if socket else None,
        **_worker_endpoint_settings(env),
        max_queued_per_user=read_int(env, "MAX_QUEUED_PER_USER", d.max_queued_per_user, minimum=1),
        rate_limit_count=read_int(env, "RATE_LIMIT_COUNT", d.rate_limit_count, minimum=1),
        rate_limit_period=read_float(env, "RATE_LIMIT_PERIOD", d.rate_limit_period, minimum=0.1),
        max_attempts=read_int(env, "JOB_MAX_ATTEMPTS", d.max_attempts, minimum=1),
        progress_interval=read_float(env, "PROGRESS_INTERVAL", d.progress_interval, minimum=0.0),
        previews=PreviewSettings.from_env(env),
        enhancer=EnhancerSettings.from_env(env),
        log_level=log_level,
        allow_dms=read_choice(env, "ALLOW_DMS", "off", ("on", "off")) == "on",
        content_classifier=read_choice(env, "CONTENT_CLASSIFIER", d.content_classifier, CONTENT_CLASSIFIERS),
        **_training_settings(env),
        **_lora_settings(env),
    )


def _worker_endpoint_settings(env: dict[str, str]) -> dict:
    workers = parse_endpoints(env.get("WORKERS", ""))
    mode = read_choice(env, "WORKER_MODE", Settings.worker_mode, ("spawn", "external"))
    gpus = _worker_gpus(env.get("WORKER_GPUS", ""))
    if gpus is not None and mode != "spawn":
        raise SettingsError("WORKER_GPUS says which GPUs the bot starts workers on: it needs WORKER_MODE=spawn "
                            "(in external mode, list the workers in WORKERS)")
    if workers and mode != "external":
        raise SettingsError("WORKERS lists workers the bot connects to: set WORKER_MODE=external with it "
                            "(in spawn mode the bot starts its worker itself)")
    security = WireSecurity.from_env(env)
    if any(isinstance(endpoint, TcpEndpoint) for endpoint in workers):
        security.require_client_token()
        security.client_context()  # a WORKER_TLS_CA that does not load stops the bot here, with one line
    return {"workers": workers, "worker_security": security, "worker_gpus": gpus}


def _worker_gpus(raw: str) -> tuple[int, ...] | None:
    """WORKER_GPUS: `auto` (or empty) or CUDA device indices such as `0,1`, each given one worker."""
    raw = raw.strip().lower()
    if raw in ("", "auto"):
        return None
    try:
        gpus = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise SettingsError(f"WORKER_GPUS must be auto or GPU indices such as 0,1; got {raw!r}") from None
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise SettingsError(f"WORKER_GPUS must list each GPU index (0 or more) once; got {raw!r}")
    return gpus


def _training_settings(env: dict[str, str]) -> dict:
    d = Settings
    resolution = read_int(env, "TRAIN_RESOLUTION", d.train_resolution, minimum=64)
    if resolution % 16:
        raise SettingsError(f"TRAIN_RESOLUTION must be a multiple of 16, got {resolution}")
    public_url = env.get("PUBLIC_URL", "").strip()
    if public_url:
        _url(env, "PUBLIC_URL", public_url, ("http", "https"))
    return {
        "train_steps": read_int(env, "TRAIN_STEPS", d.train_steps, minimum=1),
        "train_rank": read_int(env, "TRAIN_RANK", d.train_rank, minimum=1),
        "train_learning_rate": read_float(env, "TRAIN_LEARNING_RATE", d.train_learning_rate, minimum=1e-8),
        "train_weight_decay": read_float(env, "TRAIN_WEIGHT_DECAY", d.train_weight_decay),
        "train_resolution": resolution,
        "train_timesteps": read_choice(env, "TRAIN_TIMESTEPS", d.train_timesteps, ("sigmoid", "shift", "uniform")),
        "checkpoint_every": read_int(env, "CHECKPOINT_EVERY", d.checkpoint_every, minimum=1),
        "keep_checkpoints": read_int(env, "KEEP_CHECKPOINTS", d.keep_checkpoints, minimum=1),
        "training_retention_days": read_int(env, "TRAINING_RETENTION_DAYS", d.training_retention_days, minimum=0),
        "training_adapter": _training_adapter(env),
        "train_min_images": read_int(env, "TRAIN_MIN_IMAGES", d.train_min_images, minimum=1),
        "train_max_images": read_int(env, "TRAIN_MAX_IMAGES", d.train_max_images, minimum=1),
        "max_zip_bytes": read_int(env, "MAX_ZIP_MB", d.max_zip_bytes >> 20, minimum=1) << 20,
        "http_host": env.get("HTTP_HOST", "").strip() or d.http_host,
        "http_port": read_int(env, "HTTP_PORT", d.http_port, minimum=0),
        "public_url": public_url,
        "link_ttl": read_float(env, "LINK_TTL_HOURS", d.link_ttl / 3600, minimum=0.01) * 3600,
    }


def _training_adapter(env: dict[str, str]) -> str | None:
    """TRAINING_ADAPTER: default, none, hf:owner/repo/file.safetensors[@revision], or a file. Nothing is downloaded
    here: the worker fetches a hub file at the first /train (gpu/training/adapter.py)."""
    spec = parse_spec(env.get("TRAINING_ADAPTER"))
    if spec is None or spec == DEFAULT_ADAPTER_SPEC or spec.startswith(HUB_PREFIX):
        return spec
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"):
        raise SettingsError(f"TRAINING_ADAPTER={spec!r} is a pickle file, which can run code when loaded: "
                            "use a .safetensors file")
    if read_choice(env, "WORKER_MODE", Settings.worker_mode, ("spawn", "external")) == "external":
        # The worker runs elsewhere and reads the path on its own disk: only an absolute path means one file there.
        if not path.is_absolute():
            raise SettingsError(f"TRAINING_ADAPTER={spec!r}: with WORKER_MODE=external give an absolute path "
                                "on the workers' disk")
        return str(path)
    if not path.exists():  # spawn mode: the worker shares this disk, so a typo stops the bot here
        raise SettingsError(f"TRAINING_ADAPTER points at {spec!r}, which does not exist "
                            "(default, none, hf:owner/repo/file.safetensors or a path)")
    return str(path.resolve())


def _lora_settings(env: dict[str, str]) -> dict:
    d = Settings
    return {
        "lora_max_bytes": read_int(env, "LORA_MAX_MB", d.lora_max_bytes >> 20, minimum=1) << 20,
        "lora_max_header_bytes": read_int(env, "LORA_MAX_HEADER_KB", d.lora_max_header_bytes >> 10, minimum=1) << 10,
        "lora_default_scale": read_float(env, "LORA_DEFAULT_SCALE", d.lora_default_scale, minimum=0.0, maximum=2.0),
        "lora_download_timeout": read_int(env, "LORA_DOWNLOAD_TIMEOUT", d.lora_download_timeout, minimum=1),
        "lora_import_max_count": read_int(env, "LORA_IMPORT_MAX_COUNT", d.lora_import_max_count, minimum=1),
        "lora_import_max_bytes": read_int(env, "LORA_IMPORT_MAX_MB", d.lora_import_max_bytes >> 20, minimum=1) << 20,
        "lora_imports_at_once": read_int(env, "LORA_IMPORTS_AT_ONCE", d.lora_imports_at_once, minimum=1),
        "lora": LoraLimits.from_env(env),
    }
