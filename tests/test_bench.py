"""`python -m gpu.bench --tiny` keeps working: the same code as the GPU benchmark, on the CPU."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d+(?:\.\d+)?"


def test_tiny_bench_prints_the_table_with_numbers(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_")}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "gpu.bench", "--tiny", "--json", str(out), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = completed.stdout
    assert "| metric | stock diffusers (eager) | ours (worker path) |" in table
    for label in ("s/image 256x256 (median of 5)", "s/image 320x192 (median of 5)",
                  "images/min, queue of 3 mixed-aspect requests"):
        assert re.search(rf"\| {re.escape(label)} \| {NUMBER} \| {NUMBER}( \({NUMBER}x\))? \|", table), (label, table)
    assert re.search(rf"Cold start with a warm compile cache .*first image after {NUMBER} s", table), table

    results = json.loads(out.read_text())
    assert results["info"]["device"] == "cpu"
    for column in ("stock", "ours"):
        per_size = results["columns"][column]["per_size"]
        assert set(per_size) == {"256x256", "320x192"}
        assert all(len(size["runs_s"]) == 5 and size["median_s"] > 0 for size in per_size.values())
        assert results["columns"][column]["queue"]["requests"] == 3
    assert results["columns"]["ours"]["accel"]["compiled"] is False  # CPU: no compile by default
    assert results["warm_start"]["process_marks"]["first_image_s"] > 0


def test_warm_up_sizes_cover_every_aspect_bucket_of_the_bot():
    from bot.sizes import ASPECT_SIZES
    from gpu.accel import WARM_UP_SIZES

    assert sorted(WARM_UP_SIZES) == sorted(ASPECT_SIZES.values())
    width, height = WARM_UP_SIZES[0]
    assert width != height  # a square first size would cost the VAE a second graph (duck sizing)


def test_accel_settings_from_env(tmp_path):
    import pytest

    from gpu.accel import AccelConfigError, AccelSettings

    cpu = AccelSettings.from_env("cpu", tmp_path, {})
    assert (cpu.compile, cpu.compile_vae, cpu.attention, cpu.quant) == (False, False, None, "none")
    assert cpu.cache_dir == tmp_path / "compile-cache"
    cuda = AccelSettings.from_env("cuda", tmp_path, {"ZIMAGE_ATTENTION": "_native_cudnn", "ZIMAGE_QUANT": "FP8"})
    assert (cuda.compile, cuda.attention, cuda.quant) == (True, "_native_cudnn", "fp8")
    assert AccelSettings.from_env("cuda", tmp_path, {"ZIMAGE_COMPILE": "off"}).compile is False
    assert AccelSettings.from_env("cpu", tmp_path, {"ZIMAGE_COMPILE": "on"}).compile is True
    assert AccelSettings.from_env("cpu", tmp_path, {"ZIMAGE_COMPILE_CACHE": "/x"}).cache_dir == Path("/x")
    for bad in ({"ZIMAGE_COMPILE": "yes"}, {"ZIMAGE_QUANT": "int4"}, {"ZIMAGE_COMPILE_VAE": "auto"}):
        with pytest.raises(AccelConfigError):
            AccelSettings.from_env("cuda", tmp_path, bad)


def test_unknown_attention_backend_keeps_the_default(caplog):
    from gpu.accel import set_attention
    from gpu.tiny import build_tiny_pipeline

    transformer = build_tiny_pipeline().transformer
    assert set_attention(transformer, "no-such-backend") is None
    assert "keeping the default" in caplog.text
    assert set_attention(transformer, "native") == "native"


def test_fp8_without_torchao_fails_with_one_clear_message(monkeypatch):
    import builtins

    import pytest

    from gpu.accel import AccelConfigError, quantize_fp8

    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError("No module named 'torchao'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(AccelConfigError, match="ZIMAGE_QUANT=fp8 needs the torchao package"):
        quantize_fp8(object())
