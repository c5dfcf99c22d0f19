"""Settings from the environment (and a `.env` file): parsed once, validated at start-up.

A bad value stops the bot with one clear line (`SettingsError`), never a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"
MAX_LORA_STACK = 8  # the worker keeps at most 8 adapters loaded
MAX_LORA_RANK = 1024


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it and says what is expected."""


@dataclass(frozen=True)
class Settings:
    discord_token: str
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    dev_guild_id: int | None = None
    data_dir: Path = Path("data")
    database_url: str = ""
    zimage_model: str = DEFAULT_MODEL
    worker_mode: str = "spawn"  # spawn: the bot runs `python -m gpu`; external: connect only
    worker_socket: Path | None = None
    max_queued_per_user: int = 3
    rate_limit_count: int = 5
    rate_limit_period: float = 60.0
    max_attempts: int = 2
    progress_interval: float = 1.0
    log_level: str = "INFO"
    # LoRA training (/train); defaults follow the Z-Image character-LoRA guide.
    train_steps: int = 4000
    train_rank: int = 64
    train_learning_rate: float = 2e-4
    train_weight_decay: float = 1e-4
    train_resolution: int = 512
    train_timesteps: str = "sigmoid"
    checkpoint_every: int = 250
    keep_checkpoints: int = 7
    training_adapter: Path | None = None
    train_min_images: int = 10
    train_max_images: int = 500
    max_zip_bytes: int = 512 << 20
    # The LoRA library (/lora import, /lora use, /imagine lora:).
    lora_max_bytes: int = 1024 << 20
    lora_max_header_bytes: int = 1024 << 10
    lora_max_stack: int = 3
    lora_default_scale: float = 0.8
    lora_download_timeout: int = 300
    lora_max_rank: int = 64  # the worker pads adapters to this rank to hot-swap them under torch.compile
    lora_cache_mb: int | None = None  # worker: memory for loaded LoRAs (None: its default, 2048; 256 with ZIMAGE_VRAM=16gb)
    lora_hotswap: str = "auto"  # worker: auto | on | off
    # The bot's small HTTP endpoint for files too big for Discord (signed, expiring links).
    http_host: str = "127.0.0.1"
    http_port: int = 8765
    public_url: str = ""
    link_ttl: float = 7 * 86400.0

    @property
    def socket_path(self) -> Path:
        return self.worker_socket or self.data_dir / "worker.sock"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def training_dir(self) -> Path:
        return self.data_dir / "training"

    @property
    def lora_slot_rank(self) -> int:
        """The rank of the compiled worker's LoRA slots: imports stop at LORA_MAX_RANK, trained LoRAs have
        TRAIN_RANK (gpu/adapters.py LoraSettings takes the same maximum)."""
        return max(self.lora_max_rank, self.train_rank)

    @property
    def link_base(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @property
    def sync_database_url(self) -> str:
        """The same database through a synchronous driver (Alembic runs synchronously)."""
        return self.database_url.replace("+aiosqlite", "")


def _int(env: dict[str, str], name: str, default: int | None, minimum: int = 0) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


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
    worker_mode = env.get("WORKER_MODE", "").strip() or "spawn"
    if worker_mode not in ("spawn", "external"):
        raise SettingsError(f"WORKER_MODE must be 'spawn' or 'external', got {worker_mode!r}")
    socket = env.get("WORKER_SOCKET", "").strip()
    log_level = (env.get("LOG_LEVEL", "").strip() or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    return Settings(
        discord_token=token,
        discord_api_base=_url(env, "DISCORD_API_BASE", Settings.discord_api_base, ("http", "https")).rstrip("/"),
        discord_gateway_url=_url(env, "DISCORD_GATEWAY_URL", Settings.discord_gateway_url, ("ws", "wss")),
        dev_guild_id=_int(env, "DEV_GUILD_ID", None, minimum=1),
        data_dir=data_dir,
        database_url=database_url,
        zimage_model=env.get("ZIMAGE_MODEL", "").strip() or DEFAULT_MODEL,
        worker_mode=worker_mode,
        worker_socket=Path(socket).expanduser().resolve() if socket else None,
        max_queued_per_user=_int(env, "MAX_QUEUED_PER_USER", 3, minimum=1),
        rate_limit_count=_int(env, "RATE_LIMIT_COUNT", 5, minimum=1),
        rate_limit_period=_float(env, "RATE_LIMIT_PERIOD", 60.0, minimum=0.1),
        max_attempts=_int(env, "JOB_MAX_ATTEMPTS", 2, minimum=1),
        progress_interval=_float(env, "PROGRESS_INTERVAL", 1.0, minimum=0.0),
        log_level=log_level,
        **_training_settings(env),
        **_lora_settings(env),
    )


def _training_settings(env: dict[str, str]) -> dict:
    timesteps = env.get("TRAIN_TIMESTEPS", "").strip() or "sigmoid"
    if timesteps not in ("sigmoid", "shift", "uniform"):
        raise SettingsError(f"TRAIN_TIMESTEPS must be sigmoid, shift or uniform, got {timesteps!r}")
    adapter = env.get("TRAINING_ADAPTER", "").strip()
    if adapter and not Path(adapter).expanduser().exists():
        raise SettingsError(f"TRAINING_ADAPTER points at {adapter!r}, which does not exist")
    resolution = _int(env, "TRAIN_RESOLUTION", 512, minimum=64)
    if resolution % 16:
        raise SettingsError(f"TRAIN_RESOLUTION must be a multiple of 16, got {resolution}")
    public_url = env.get("PUBLIC_URL", "").strip()
    if public_url:
        _url(env, "PUBLIC_URL", public_url, ("http", "https"))
    return {
        "train_steps": _int(env, "TRAIN_STEPS", 4000, minimum=1),
        "train_rank": _int(env, "TRAIN_RANK", 64, minimum=1),
        "train_learning_rate": _float(env, "TRAIN_LEARNING_RATE", 2e-4, minimum=1e-8),
        "train_weight_decay": _float(env, "TRAIN_WEIGHT_DECAY", 1e-4),
        "train_resolution": resolution,
        "train_timesteps": timesteps,
        "checkpoint_every": _int(env, "CHECKPOINT_EVERY", 250, minimum=1),
        "keep_checkpoints": _int(env, "KEEP_CHECKPOINTS", 7, minimum=1),
        "training_adapter": Path(adapter).expanduser().resolve() if adapter else None,
        "train_min_images": _int(env, "TRAIN_MIN_IMAGES", 10, minimum=1),
        "train_max_images": _int(env, "TRAIN_MAX_IMAGES", 500, minimum=1),
        "max_zip_bytes": _int(env, "MAX_ZIP_MB", 512, minimum=1) << 20,
        "http_host": env.get("HTTP_HOST", "").strip() or "127.0.0.1",
        "http_port": _int(env, "HTTP_PORT", 8765, minimum=0),
        "public_url": public_url,
        "link_ttl": _float(env, "LINK_TTL_HOURS", 168.0, minimum=0.01) * 3600,
    }


def _lora_settings(env: dict[str, str]) -> dict:
    stack = _int(env, "LORA_MAX_STACK", 3, minimum=1)
    if stack > MAX_LORA_STACK:
        raise SettingsError(f"LORA_MAX_STACK must be at most {MAX_LORA_STACK} (the worker keeps at most "
                            f"{MAX_LORA_STACK} adapters loaded), got {stack}")
    rank = _int(env, "LORA_MAX_RANK", 64, minimum=1)
    if rank > MAX_LORA_RANK:
        raise SettingsError(f"LORA_MAX_RANK must be at most {MAX_LORA_RANK}, got {rank}")
    hotswap = env.get("LORA_HOTSWAP", "").strip().lower() or "auto"
    if hotswap not in ("auto", "on", "off"):
        raise SettingsError(f"LORA_HOTSWAP must be auto, on or off, got {hotswap!r}")
    scale = _float(env, "LORA_DEFAULT_SCALE", 0.8)
    if not 0.0 <= scale <= 2.0:
        raise SettingsError(f"LORA_DEFAULT_SCALE must be between 0.0 and 2.0, got {scale}")
    return {
        "lora_max_bytes": _int(env, "LORA_MAX_MB", 1024, minimum=1) << 20,
        "lora_max_header_bytes": _int(env, "LORA_MAX_HEADER_KB", 1024, minimum=1) << 10,
        "lora_max_stack": stack,
        "lora_default_scale": scale,
        "lora_download_timeout": _int(env, "LORA_DOWNLOAD_TIMEOUT", 300, minimum=1),
        "lora_max_rank": rank,
        # Read by the worker (gpu/adapters.py LoraSettings, same variables); checked here too, so a typo
        # stops the bot at start with one line instead of a worker that keeps failing to start.
        "lora_cache_mb": _int(env, "LORA_CACHE_MB", None, minimum=1),
        "lora_hotswap": hotswap,
    }
