"""`python -m bot check` (bot/check.py): the profile choice, the token shape, the model files, and the command itself."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from databases import BACKENDS, migrated_database
from paths import ROOT

from bot import check
from bot.db.migrate import upgrade_to_head
from bot.settings import load_settings
from bot_process import free_port
from gpu import model_files, profiles

GIB = 1 << 30
TOKEN = base64.b64encode(b"123456789012345678").decode().rstrip("=") + ".GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789_-"


@pytest.mark.parametrize("gpu, total_gib, capability, expected", [
    ("H100 80GB", 79.1, (9, 0), "bf16"),
    ("A100 40GB", 39.4, (8, 0), "bf16"),
    ("L40S 48GB", 44.4, (8, 9), "bf16"),
    ("RTX 5090 32GB", 31.4, (12, 0), "fp8"),
    ("RTX 4090 24GB", 23.6, (8, 9), "fp8"),
    ("RTX 3090 24GB", 23.6, (8, 6), "int8"),
    ("V100 32GB", 31.7, (7, 0), "int8"),
    ("RTX 4060 Ti 16GB", 15.6, (8, 9), "16gb"),
    ("RTX 4080 16GB", 15.7, (8, 9), "16gb"),
    ("T4 16GB", 14.6, (7, 5), "12gb"),
    ("RTX 3060 12GB", 11.8, (8, 6), "12gb"),
    ("RTX 3080 10GB", 9.8, (8, 6), None),
])
def test_the_profile_that_fits_each_card(gpu, total_gib, capability, expected):
    profile = profiles.choose_profile(int(total_gib * GIB), capability)
    assert (profile.name if profile else None) == expected, gpu
    if profile:
        assert profiles.fits(profile, int(total_gib * GIB), capability) is None


@pytest.mark.parametrize("env, total_gib, capability, ok, fragment", [
    ({}, 79.1, (9, 0), True, "profile bf16 (ZIMAGE_QUANT=none ZIMAGE_VRAM=full) picked from the card: GPU, 79.1 GiB"),
    ({}, 23.6, (8, 9), True, "profile fp8 (ZIMAGE_QUANT=fp8) picked from the card: GPU, 23.6 GiB, compute capability "
                             "8.9; 23.6 GiB >= 22 GiB, compute capability >= 8.9 runs fp8; LoRA training beside"),
    ({"ZIMAGE_VRAM": "auto"}, 23.6, (8, 6), True, "profile int8 (ZIMAGE_QUANT=int8) picked from the card"),
    ({}, 11.8, (8, 6), True, "profile 12gb (ZIMAGE_VRAM=12gb) picked from the card: GPU, 11.8 GiB, compute capability "
                             "8.6; 11.8 GiB >= 11 GiB; generation only (no /train)"),
    ({}, 9.8, (8, 6), False, "no speed profile fits 9.8 GiB of GPU memory: the smallest, ZIMAGE_VRAM=12gb"),
    ({"ZIMAGE_QUANT": "none"}, 23.6, (8, 9), False, "needs about 38 GiB of GPU memory, this GPU has 23.6 GiB; "
                                                    "set ZIMAGE_QUANT=fp8"),
    ({"ZIMAGE_QUANT": "fp8"}, 23.6, (8, 9), True, "fp8 (ZIMAGE_QUANT=fp8) fits"),
    ({"ZIMAGE_QUANT": "fp8"}, 23.6, (8, 6), False, "fp8 needs compute capability 8.9 or newer"),
    ({"ZIMAGE_VRAM": "16gb"}, 79.1, (9, 0), True, "bf16 (ZIMAGE_QUANT=none ZIMAGE_VRAM=full) fits too and is faster"),
    ({"ZIMAGE_VRAM": "12gb"}, 15.6, (8, 9), True, "16gb (ZIMAGE_VRAM=16gb) fits too and is faster; generation only"),
    ({"ZIMAGE_VRAM": "16gb"}, 11.8, (8, 6), False, "needs about 15 GiB of GPU memory, this GPU has 11.8 GiB; "
                                                   "set ZIMAGE_VRAM=12gb"),
])
def test_the_configured_profile_against_the_card(env, total_gib, capability, ok, fragment):
    result = check.profile_check(int(total_gib * GIB), capability, env)
    assert result.ok is ok and fragment in result.detail, result.line()


@pytest.mark.parametrize("token, fragment", [
    (TOKEN, None),
    ("Bot " + TOKEN, "starts with 'Bot '"),
    ("123456789012345678", "an application id?"),
    ("a" * 32, "the OAuth2 client secret?"),
    ("abc.def", "has 2 dot-separated part(s)"),
    (TOKEN[:-3] + '"x"', "characters a bot token never contains"),
    ("bm90IGFuIGlk.GhIjKl.abc", "not a base64 user id"),
])
def test_token_shapes(token, fragment):
    problem = check.token_problem(token)
    assert problem == fragment if fragment is None else fragment in problem
    assert token not in check.check_token(token).line()


def test_a_complete_and_an_incomplete_pipeline_folder(tiny_models_dir, tmp_path):
    complete = model_files.pipeline_status(tiny_models_dir / "tiny-v1")
    assert complete.problem is None and complete.size > 0
    broken = tmp_path / "model"
    shutil.copytree(tiny_models_dir / "tiny-v1", broken)
    transformer = broken / "transformer"
    shards = ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
    (transformer / "diffusion_pytorch_model.safetensors").rename(transformer / shards[0])
    (transformer / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    shutil.rmtree(broken / "vae")
    problem = model_files.pipeline_status(broken).problem
    assert problem == ("transformer/ lacks 1 of 2 weight files (diffusion_pytorch_model-00002-of-00002.safetensors, ...); "
                       "vae/ is missing")
    assert model_files.pipeline_status(tmp_path).problem.startswith("no model_index.json")


def test_a_database_not_created_yet(tmp_path):
    settings = load_settings({"DISCORD_TOKEN": TOKEN, "DATA_DIR": str(tmp_path)}, dotenv_path=None)
    result = check.check_database(settings)
    assert result.ok and "does not exist yet" in result.detail and not (tmp_path / "zimage.db").exists()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_database_at_head_and_at_an_unknown_revision(backend, tmp_path):
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async with migrated_database(backend, tmp_path) as url:
        settings = load_settings({"DISCORD_TOKEN": TOKEN, "DATA_DIR": str(tmp_path), "DATABASE_URL": url}, dotenv_path=None)
        result = await asyncio.to_thread(check.check_database, settings)
        assert result.ok and "reachable, migrated to head" in result.detail, result.line()
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
        await engine.dispose()
        result = await asyncio.to_thread(check.check_database, settings)
        assert not result.ok and "at revision f00d, which this version does not know" in result.detail


def test_an_unreachable_database(tmp_path):
    url = f"postgresql+asyncpg://zimage:secret@127.0.0.1:{free_port()}/zimage"
    settings = load_settings({"DISCORD_TOKEN": TOKEN, "DATA_DIR": str(tmp_path), "DATABASE_URL": url}, dotenv_path=None)
    result = check.check_database(settings)
    assert not result.ok and result.detail.startswith(f"cannot connect to {url.replace('secret', '***')}: ")
    assert "secret" not in result.line() and "\n" not in result.line()


def test_too_little_disk(tmp_path):
    assert check.check_disk(tmp_path, min_free_gib=0).ok
    result = check.check_disk(tmp_path / "not" / "yet", min_free_gib=1e9)
    assert not result.ok and "need at least 1000000000 GiB" in result.detail


def run_check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    return subprocess.run([sys.executable, "-m", "bot", "check", *args], cwd=tmp_path, env={**base, **env},
                          capture_output=True, text=True, timeout=300)


def test_check_passes_on_a_tiny_model_data_dir(data_dir, tmp_path):
    upgrade_to_head(f"sqlite:///{data_dir / 'zimage.db'}")
    done = run_check(tmp_path, DISCORD_TOKEN=TOKEN, DATA_DIR=str(data_dir), ZIMAGE_MODEL="tiny")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(":")[0] for line in lines] == [
        "✓ settings", "✓ DISCORD_TOKEN", "✓ database", "✓ disk", "✓ GPU", "✓ model", "✓ worker"], done.stdout
    assert "migrated to head" in lines[2] and "tiny, in" in lines[5] and TOKEN not in done.stdout
    assert done.stderr == ""


def test_check_fails_with_one_line_per_problem(data_dir, tmp_path):
    """A bad token, and the real model's id with an incomplete download in the Hugging Face cache."""
    snapshot = tmp_path / "hf-cache" / "models--Tongyi-MAI--Z-Image-Turbo" / "snapshots" / ("0" * 40)
    shutil.copytree(data_dir / "models" / "tiny-v1", snapshot)
    (snapshot / "text_encoder" / "model.safetensors").unlink()
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    done = run_check(tmp_path, DISCORD_TOKEN="not-a-token", DATA_DIR=str(data_dir))
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("✗")]
    assert failed[0] == ("✗ DISCORD_TOKEN: has 1 dot-separated part(s), a bot token has 3 "
                         "(Discord developer portal: Bot → Reset Token)")
    assert f"✗ model: Tongyi-MAI/Z-Image-Turbo in {snapshot} is incomplete: text_encoder/ has no weights" in failed
    # without a GPU (CI) the GPU line fails too; with one, it names the card
    assert len(failed) == 2 + (failed[1].startswith("✗ GPU: no CUDA GPU")), done.stdout

    settings_error = run_check(tmp_path, DATA_DIR=str(data_dir))
    assert settings_error.returncode == 1 and settings_error.stdout.startswith("✗ settings: DISCORD_TOKEN is not set")
