"""Which speed profile fits a GPU: a pure function of its memory and compute capability, and the worker's pick.

The worker picks its profile from the card when neither ``ZIMAGE_VRAM`` (other than ``auto``) nor
``ZIMAGE_QUANT`` is set: :func:`resolve` gives the profile and the settings that select it, and
:func:`describe_pick` the one log line that says why. ``python -m bot check`` shows the same pick.

Each profile must hold generation and LoRA training side by side (training offloads the text encoder
to the CPU and trains the LoRA on top of the frozen, possibly quantized, base: gpu/training/quantized.py):

* ``bf16`` (38 GiB and up): the lossless path; 22.9 GiB allocated for a 1024x1024 image, training 21.9
  GiB reserved.
* ``fp8`` / ``int8`` (22 GiB and up, "24 GB" and "32 GB" cards): the transformer blocks' linears in 8
  bits (fp8 peaks at 20.9 GiB while generating); fp8 needs compute capability 8.9 (Ada, Hopper,
  Blackwell), below it the same memory class uses int8 weights.
* ``16gb`` (15 GiB and up): 8-bit transformer and int8 text encoder, placed block by block (14.2 GiB
  reserved at most while generating).
* ``12gb`` (11 GiB and up): the 16gb transformer, the text encoder kept on the CPU; generation only.

A card reports a little less than its label (a "40 GB" A100 39.4 GiB, a "24 GB" card 23.6 GiB, a "16 GB"
card 15.6-15.9 GiB, a "12 GB" card 11.6-11.8 GiB), so the limits sit just under the labels.
No torch at import time: bot/check.py imports this module on machines without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GIB = 1 << 30
BF16_MIN_GIB = 38.0  # "40 GB" and up: the bf16 model, compile headroom, and LoRA training beside it
QUANT_MIN_GIB = 22.0  # "24 GB" and up: 8-bit transformer weights (fp8 peaks at 20.9 GiB)
LOW_VRAM_MIN_GIB = 15.0  # "16 GB": ZIMAGE_VRAM=16gb (14.2 GiB reserved at most)
VRAM_12_MIN_GIB = 11.0  # "12 GB": ZIMAGE_VRAM=12gb (the text encoder on the CPU; no training)
FP8_CAPABILITY = (8, 9)
AUTO = "auto"


class ProfileError(ValueError):
    """No profile fits this GPU; the message says what it has and what the smallest profile needs."""


@dataclass(frozen=True)
class Profile:
    name: str  # bf16 | fp8 | int8 | 16gb | 12gb
    env: dict[str, str]  # the settings an admin writes to select it
    min_gib: float
    trains: bool  # /train works (a quantized base trains a LoRA on top of it: gpu/training/quantized.py)
    quant: str = "none"  # the worker's ZIMAGE_QUANT for this profile
    vram: str = "full"  # the worker's ZIMAGE_VRAM for this profile

    @property
    def settings(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.env.items())

    @property
    def needs_fp8(self) -> bool:
        return self.quant == "fp8"


BF16 = Profile("bf16", {"ZIMAGE_QUANT": "none", "ZIMAGE_VRAM": "full"}, BF16_MIN_GIB, trains=True)
FP8 = Profile("fp8", {"ZIMAGE_QUANT": "fp8"}, QUANT_MIN_GIB, trains=True, quant="fp8")
INT8 = Profile("int8", {"ZIMAGE_QUANT": "int8"}, QUANT_MIN_GIB, trains=True, quant="int8")
LOW_VRAM = Profile("16gb", {"ZIMAGE_VRAM": "16gb"}, LOW_VRAM_MIN_GIB, trains=True, vram="16gb")
VRAM_12 = Profile("12gb", {"ZIMAGE_VRAM": "12gb"}, VRAM_12_MIN_GIB, trains=False, vram="12gb")
SMALLEST = VRAM_12


def choose_profile(total_memory: int, capability: tuple[int, int]) -> Profile | None:
    """The fastest profile that fits `total_memory` bytes of GPU memory; None when none does."""
    gib = total_memory / GIB
    if gib >= BF16_MIN_GIB:
        return BF16
    if gib >= QUANT_MIN_GIB:
        return FP8 if tuple(capability) >= FP8_CAPABILITY else INT8
    if gib >= LOW_VRAM_MIN_GIB:
        return LOW_VRAM
    if gib >= VRAM_12_MIN_GIB:
        return VRAM_12
    return None


def is_auto(env: Mapping[str, str]) -> bool:
    """True when the profile is left to the card: ZIMAGE_VRAM unset or ``auto``, and ZIMAGE_QUANT unset."""
    vram = env.get("ZIMAGE_VRAM", "").strip().lower()
    quant = env.get("ZIMAGE_QUANT", "").strip().lower()
    return vram in ("", AUTO) and not quant


def configured_profile(env: Mapping[str, str]) -> Profile:
    """The profile the worker's ZIMAGE_QUANT / ZIMAGE_VRAM select (gpu/accel.py validates the values)."""
    vram = env.get("ZIMAGE_VRAM", "").strip().lower()
    if vram == "16gb":
        return LOW_VRAM
    if vram == "12gb":
        return VRAM_12
    quant = env.get("ZIMAGE_QUANT", "").strip().lower()
    return {"fp8": FP8, "int8": INT8}.get(quant, BF16)


def fits(profile: Profile, total_memory: int, capability: tuple[int, int]) -> str | None:
    """Why `profile` does not fit this GPU, or None when it does."""
    gib = total_memory / GIB
    if gib < profile.min_gib:
        return f"{profile.settings} needs about {profile.min_gib:.0f} GiB of GPU memory, this GPU has {gib:.1f} GiB"
    if profile.needs_fp8 and tuple(capability) < FP8_CAPABILITY:
        return "ZIMAGE_QUANT=fp8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell): use ZIMAGE_QUANT=int8"
    return None


@dataclass(frozen=True)
class Pick:
    """The profile the worker runs and how it came to it."""

    profile: Profile
    auto: bool  # chosen from the card (else set by ZIMAGE_VRAM / ZIMAGE_QUANT)
    total_memory: int
    capability: tuple[int, int]

    def worker_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` with ZIMAGE_QUANT / ZIMAGE_VRAM set to the picked profile's (explicit settings pass unchanged)."""
        if not self.auto:
            return dict(env)
        return {**env, "ZIMAGE_QUANT": self.profile.quant, "ZIMAGE_VRAM": self.profile.vram}


def resolve(env: Mapping[str, str], total_memory: int, capability: tuple[int, int]) -> Pick:
    """The worker's profile on a GPU of `total_memory` bytes: the settings' if set, else the card's best.

    Raises ProfileError when the profile is left to the card and none fits it."""
    if not is_auto(env):
        return Pick(configured_profile(env), False, total_memory, (capability[0], capability[1]))
    best = choose_profile(total_memory, capability)
    if best is None:
        raise ProfileError(f"no speed profile fits {total_memory / GIB:.1f} GiB of GPU memory: the smallest, "
                           f"{SMALLEST.settings}, needs about {SMALLEST.min_gib:.0f} GiB")
    return Pick(best, True, total_memory, (capability[0], capability[1]))


def describe_pick(pick: Pick, gpu_name: str = "GPU") -> str:
    """One line with the figures: which profile, from which card, and why."""
    gib = pick.total_memory / GIB
    major, minor = pick.capability
    card = f"{gpu_name}, {gib:.1f} GiB, compute capability {major}.{minor}"
    training = "LoRA training beside generation" if pick.profile.trains else "generation only (no /train)"
    if not pick.auto:
        return f"profile {pick.profile.name} ({pick.profile.settings}, set by the settings) on {card}; {training}"
    reason = f"{gib:.1f} GiB >= {pick.profile.min_gib:.0f} GiB"
    if pick.profile in (FP8, INT8):
        reason += (", compute capability >= 8.9 runs fp8" if pick.profile is FP8
                   else ", compute capability < 8.9: int8 instead of fp8")
    return (f"profile {pick.profile.name} ({pick.profile.settings}) picked from the card: {card}; {reason}; "
            f"{training}; ZIMAGE_VRAM / ZIMAGE_QUANT override")


def usable_memory(total_memory: int, fraction: float | None) -> int:
    """What the worker may allocate: the card's memory, or less under a per-process cap
    (``torch.cuda.set_per_process_memory_fraction``, as the benchmark's card columns set)."""
    if fraction is None or not 0 < fraction < 1:
        return total_memory
    mib = 1 << 20  # to the nearest MiB: a cap of exactly 22 GiB must not read as a byte under it
    return round(total_memory * fraction / mib) * mib


def pick_for_device(env: Mapping[str, str], device: int = 0) -> tuple[Pick, str]:
    """The worker's pick on CUDA `device` and its log line (imports torch: the worker only)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = getter(device) if getter is not None else None
    memory = usable_memory(props.total_memory, fraction)
    pick = resolve(env, memory, (props.major, props.minor))
    name = props.name + (f" capped at {memory / GIB:.1f} GiB" if memory < props.total_memory else "")
    return pick, describe_pick(pick, name)
