"""gpu/profiles.py: the worker's profile picked from the card (memory and compute capability given, no GPU)."""

from __future__ import annotations

import pytest

from gpu import accel, profiles

GIB = 1 << 30


@pytest.mark.parametrize("card, total_gib, capability, expected, trains", [
    ("H100 80GB", 79.1, (9, 0), "bf16", True),
    ("H200 141GB", 139.8, (9, 0), "bf16", True),
    ("A100 40GB", 39.4, (8, 0), "bf16", True),
    ("RTX 5090 32GB", 31.4, (12, 0), "fp8", True),
    ("V100 32GB", 31.7, (7, 0), "int8", True),
    ("RTX 4090 24GB", 23.6, (8, 9), "fp8", True),
    ("RTX 3090 24GB", 23.6, (8, 6), "int8", True),  # fp8 needs sm89: int8 base
    ("RTX 5060 Ti 16GB", 15.5, (12, 0), "16gb", True),
    ("RTX 4080 16GB", 15.7, (8, 9), "16gb", True),
    ("T4 16GB", 14.6, (7, 5), "12gb", False),
    ("RTX 3060 12GB", 11.8, (8, 6), "12gb", False),  # generation only
    ("RTX 3080 10GB", 9.8, (8, 6), None, False),
    ("a 24 GB card as the benchmark caps it", 22.0, (9, 0), "fp8", True),
    ("a 16 GB card as the benchmark caps it", 15.0, (9, 0), "16gb", True),
])
def test_the_pick_for_each_card(card, total_gib, capability, expected, trains):
    total = int(total_gib * GIB)
    if expected is None:
        with pytest.raises(profiles.ProfileError, match="the smallest, ZIMAGE_VRAM=12gb, needs about 11 GiB"):
            profiles.resolve({}, total, capability)
        return
    pick = profiles.resolve({}, total, capability)
    assert (pick.profile.name, pick.auto, pick.profile.trains) == (expected, True, trains), card
    assert profiles.fits(pick.profile, total, capability) is None
    env = pick.worker_env({"LOG_LEVEL": "INFO"})
    # The settings the worker then runs with are ones gpu/accel.py accepts on a GPU, and select that profile.
    settings = accel.AccelSettings.from_env("cuda", "/tmp", env)
    assert (settings.quant, settings.vram) == (pick.profile.quant, pick.profile.vram)
    assert profiles.configured_profile(env) is pick.profile and env["LOG_LEVEL"] == "INFO"


@pytest.mark.parametrize("env, expected", [
    ({"ZIMAGE_VRAM": "16gb"}, "16gb"),
    ({"ZIMAGE_VRAM": "12gb"}, "12gb"),
    ({"ZIMAGE_VRAM": "full"}, "bf16"),
    ({"ZIMAGE_QUANT": "int8"}, "int8"),
    ({"ZIMAGE_VRAM": "auto", "ZIMAGE_QUANT": "fp8"}, "fp8"),
])
def test_settings_override_the_card(env, expected):
    pick = profiles.resolve(env, int(79.1 * GIB), (9, 0))
    assert pick.profile.name == expected and not pick.auto
    assert pick.worker_env(env) == env  # explicit settings pass unchanged
    assert "set by the settings" in profiles.describe_pick(pick)


@pytest.mark.parametrize("env", [{}, {"ZIMAGE_VRAM": "auto"}, {"ZIMAGE_VRAM": " AUTO ", "ZIMAGE_QUANT": ""}])
def test_auto_is_unset_or_auto(env):
    assert profiles.is_auto(env)
    assert profiles.resolve(env, int(23.6 * GIB), (8, 9)).profile is profiles.FP8


def test_the_log_line_has_the_figures_and_the_reason():
    line = profiles.describe_pick(profiles.resolve({}, int(23.6 * GIB), (8, 6)), "NVIDIA GeForce RTX 3090")
    assert line.startswith("profile int8 (ZIMAGE_QUANT=int8) picked from the card: NVIDIA GeForce RTX 3090, "
                           "23.6 GiB, compute capability 8.6")
    assert "< 8.9: int8 instead of fp8" in line and "LoRA training beside generation" in line
    small = profiles.describe_pick(profiles.resolve({}, int(11.8 * GIB), (8, 6)))
    assert "generation only (no /train)" in small


def test_a_per_process_cap_counts_as_the_card_size():
    total = int(139.8 * GIB)
    assert profiles.usable_memory(total, None) == total
    assert profiles.usable_memory(total, 1.0) == total
    capped = profiles.usable_memory(total, 22 / 139.8)
    assert profiles.choose_profile(capped, (9, 0)) is profiles.FP8
    assert profiles.choose_profile(profiles.usable_memory(total, 15 / 139.8), (9, 0)) is profiles.LOW_VRAM


def test_auto_on_the_cpu_means_the_full_model():
    settings = accel.AccelSettings.from_env("cpu", "/tmp", {"ZIMAGE_VRAM": "auto"})
    assert (settings.quant, settings.vram) == ("none", "full")
    with pytest.raises(accel.AccelConfigError, match="ZIMAGE_VRAM=12gb needs a CUDA GPU"):
        accel.AccelSettings.from_env("cpu", "/tmp", {"ZIMAGE_VRAM": "12gb"})
    with pytest.raises(accel.AccelConfigError, match="auto|full|16gb|12gb"):
        accel.AccelSettings.from_env("cuda", "/tmp", {"ZIMAGE_VRAM": "8gb"})
