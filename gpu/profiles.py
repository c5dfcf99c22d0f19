"""Which speed profile fits a GPU: a pure function of its memory and compute capability (no torch here).

The thresholds come from the worker's measured peaks (README, "Speed"): bf16 allocates up to
22.8 GiB at 1024x1024 with the LoRA slots and LoRA training adds its own share, fp8 peaks at
20.9 GiB, and ZIMAGE_VRAM=16gb stays under 14.2 GiB reserved. A card reports a little less than its
label (a "40 GB" A100 39.4 GiB, a "24 GB" card 23.6 GiB, a "16 GB" card 15.6-15.9 GiB), so the
limits sit just under the labels. fp8 needs compute capability 8.9 (Ada, Hopper, Blackwell);
below it the same memory class uses int8 weights.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
BF16_MIN_GIB = 38.0  # "40 GB" and up: the bf16 model, compile headroom, and LoRA training beside it
QUANT_MIN_GIB = 22.0  # "24 GB" and up: 8-bit transformer weights (fp8 peaks at 20.9 GiB)
LOW_VRAM_MIN_GIB = 15.0  # "16 GB": ZIMAGE_VRAM=16gb (14.2 GiB reserved at most)
FP8_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class Profile:
    name: str  # bf16 | fp8 | int8 | 16gb
    env: dict[str, str]  # the worker settings that select it
    min_gib: float
    trains: bool  # quantized workers refuse /train (training needs the bf16 weights)

    @property
    def settings(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.env.items())


BF16 = Profile("bf16", {"ZIMAGE_QUANT": "none", "ZIMAGE_VRAM": "full"}, BF16_MIN_GIB, trains=True)
FP8 = Profile("fp8", {"ZIMAGE_QUANT": "fp8"}, QUANT_MIN_GIB, trains=False)
INT8 = Profile("int8", {"ZIMAGE_QUANT": "int8"}, QUANT_MIN_GIB, trains=False)
LOW_VRAM = Profile("16gb", {"ZIMAGE_VRAM": "16gb"}, LOW_VRAM_MIN_GIB, trains=False)


def choose_profile(total_memory: int, capability: tuple[int, int]) -> Profile | None:
    """The fastest profile that fits `total_memory` bytes of GPU memory; None when none does."""
    gib = total_memory / GIB
    if gib >= BF16_MIN_GIB:
        return BF16
    if gib >= QUANT_MIN_GIB:
        return FP8 if tuple(capability) >= FP8_CAPABILITY else INT8
    if gib >= LOW_VRAM_MIN_GIB:
        return LOW_VRAM
    return None


def configured_profile(env: dict[str, str]) -> Profile:
    """The profile the worker's ZIMAGE_QUANT / ZIMAGE_VRAM select (gpu/accel.py validates the values)."""
    if env.get("ZIMAGE_VRAM", "").strip().lower() == "16gb":
        return LOW_VRAM
    quant = env.get("ZIMAGE_QUANT", "").strip().lower()
    return {"fp8": FP8, "int8": INT8}.get(quant, BF16)


def fits(profile: Profile, total_memory: int, capability: tuple[int, int]) -> str | None:
    """Why `profile` does not fit this GPU, or None when it does."""
    gib = total_memory / GIB
    if gib < profile.min_gib:
        return f"{profile.settings} needs about {profile.min_gib:.0f} GiB of GPU memory, this GPU has {gib:.1f} GiB"
    if profile is FP8 and tuple(capability) < FP8_CAPABILITY:
        return "ZIMAGE_QUANT=fp8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell): use ZIMAGE_QUANT=int8"
    return None
