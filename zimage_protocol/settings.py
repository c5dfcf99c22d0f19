"""Environment settings both processes read, parsed by one parser.

The bot checks them at its start (a typo stops it with one line instead of a worker that keeps
failing to start); the worker reads the same variables, because an external worker runs without
the bot's settings. The small ``read_*`` helpers are the project's one way to parse a variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .constants import MAX_LORA_RANK, MAX_LORA_STACK

Env = Mapping[str, str]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and says what is expected."""


def read_int(env: Env, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    value = read_optional_int(env, name, minimum, maximum)
    return default if value is None else value


def read_optional_int(env: Env, name: str, minimum: int = 0, maximum: int | None = None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, got {value}")
    return value


def read_float(env: Env, name: str, default: float, minimum: float = 0.0, maximum: float | None = None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if maximum is not None and not minimum <= value <= maximum:  # also refuses nan
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    if not value >= minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def read_choice(env: Env, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
    return value


@dataclass(frozen=True)
class LoraLimits:
    """``LORA_MAX_STACK``, ``LORA_MAX_RANK``, ``LORA_CACHE_MB``, ``LORA_HOTSWAP`` and ``TRAIN_RANK``.

    The compiled worker's adapter slots have ``slot_rank``: imports stop at LORA_MAX_RANK, LoRAs
    trained here have TRAIN_RANK, and both must fit."""

    max_stack: int = 3
    max_rank: int = 64
    train_rank: int = 64
    cache_mb: int | None = None  # None: 2048, or 256 with ZIMAGE_VRAM=16gb
    hotswap: str = "auto"  # auto | on | off

    @property
    def slot_rank(self) -> int:
        return max(self.max_rank, self.train_rank)

    def cache_bytes(self, low_vram: bool) -> int:
        return (self.cache_mb or (256 if low_vram else 2048)) << 20

    def hotswap_enabled(self, compiled: bool) -> bool:
        """``auto``: hot-swap slots exactly when the transformer is compiled (a switch must not recompile)."""
        return self.hotswap == "on" or (self.hotswap == "auto" and compiled)

    @classmethod
    def from_env(cls, env: Env) -> LoraLimits:
        stack = read_int(env, "LORA_MAX_STACK", cls.max_stack, minimum=1)
        if stack > MAX_LORA_STACK:
            raise SettingsError(f"LORA_MAX_STACK must be at most {MAX_LORA_STACK} (the worker keeps at most "
                                f"{MAX_LORA_STACK} adapters loaded), got {stack}")
        return cls(max_stack=stack,
                   max_rank=read_int(env, "LORA_MAX_RANK", cls.max_rank, minimum=1, maximum=MAX_LORA_RANK),
                   train_rank=read_int(env, "TRAIN_RANK", cls.train_rank, minimum=1),
                   cache_mb=read_optional_int(env, "LORA_CACHE_MB", minimum=1),
                   hotswap=read_choice(env, "LORA_HOTSWAP", cls.hotswap, ("auto", "on", "off")))


@dataclass(frozen=True)
class PreviewSettings:
    """``PREVIEWS`` (on|off, default on) and ``PREVIEW_EVERY`` (steps, default 2): while an image renders, the
    worker sends a small preview of it every PREVIEW_EVERY steps (gpu/previews.py), and the bot shows the latest
    on the job's progress message. The worker reads them; the bot checks them and, with PREVIEWS=off, also
    ignores previews a worker sends."""

    enabled: bool = True
    every: int = 2

    @classmethod
    def from_env(cls, env: Env) -> PreviewSettings:
        return cls(enabled=read_choice(env, "PREVIEWS", "on", ("on", "off")) == "on",
                   every=read_int(env, "PREVIEW_EVERY", cls.every, minimum=1))


@dataclass(frozen=True)
class EnhancerSettings:
    """``PROMPT_ENHANCER`` (on|off, default on): ``/imagine enhance:True`` has the worker rewrite the prompt in
    detail with its text encoder (gpu/enhancer.py). Off: the bot refuses the option, and so does a worker."""

    enabled: bool = True

    @classmethod
    def from_env(cls, env: Env) -> EnhancerSettings:
        return cls(enabled=read_choice(env, "PROMPT_ENHANCER", "on", ("on", "off")) == "on")
