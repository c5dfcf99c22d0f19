from pathlib import Path

import pytest
from paths import ROOT

from bot.settings import SettingsError, load_settings


def test_defaults(tmp_path):
    settings = load_settings({"DISCORD_TOKEN": "t", "DATA_DIR": str(tmp_path)}, dotenv_path=None)
    assert settings.discord_api_base == "https://discord.com/api/v10"
    assert settings.discord_gateway_url == "wss://gateway.discord.gg/"
    assert settings.zimage_model == "Tongyi-MAI/Z-Image-Turbo"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'zimage.db'}"
    assert settings.sync_database_url == f"sqlite:///{tmp_path / 'zimage.db'}"
    assert settings.socket_path == tmp_path / "worker.sock"
    assert settings.dev_guild_id is None
    assert settings.max_queued_per_user == 3


@pytest.mark.parametrize("env, fragment", [
    ({}, "DISCORD_TOKEN is not set"),
    ({"DISCORD_TOKEN": "  "}, "DISCORD_TOKEN is not set"),
    ({"DISCORD_TOKEN": "t", "DEV_GUILD_ID": "abc"}, "DEV_GUILD_ID must be a whole number"),
    ({"DISCORD_TOKEN": "t", "DISCORD_API_BASE": "ftp://x"}, "DISCORD_API_BASE must be"),
    ({"DISCORD_TOKEN": "t", "DISCORD_GATEWAY_URL": "http://x/"}, "DISCORD_GATEWAY_URL must be"),
    ({"DISCORD_TOKEN": "t", "MAX_QUEUED_PER_USER": "0"}, "MAX_QUEUED_PER_USER must be at least 1"),
    ({"DISCORD_TOKEN": "t", "RATE_LIMIT_PERIOD": "soon"}, "RATE_LIMIT_PERIOD must be a number"),
    ({"DISCORD_TOKEN": "t", "WORKER_MODE": "cloud"}, "WORKER_MODE must be"),
    ({"DISCORD_TOKEN": "t", "DATABASE_URL": "zimage.db"}, "DATABASE_URL must be"),
    ({"DISCORD_TOKEN": "t", "LORA_MAX_MB": "0"}, "LORA_MAX_MB must be at least 1"),
    ({"DISCORD_TOKEN": "t", "LORA_MAX_MB": "1G"}, "LORA_MAX_MB must be a whole number"),
    ({"DISCORD_TOKEN": "t", "LORA_MAX_HEADER_KB": "-5"}, "LORA_MAX_HEADER_KB must be at least 1"),
    ({"DISCORD_TOKEN": "t", "LORA_MAX_STACK": "0"}, "LORA_MAX_STACK must be at least 1"),
    ({"DISCORD_TOKEN": "t", "LORA_MAX_STACK": "9"}, r"LORA_MAX_STACK must be at most 8 \(the worker keeps"),
    ({"DISCORD_TOKEN": "t", "LORA_DEFAULT_SCALE": "2.5"}, "LORA_DEFAULT_SCALE must be between 0.0 and 2.0, got 2.5"),
    ({"DISCORD_TOKEN": "t", "LORA_DEFAULT_SCALE": "-0.1"}, "LORA_DEFAULT_SCALE must be"),
    ({"DISCORD_TOKEN": "t", "LORA_DEFAULT_SCALE": "nan"}, "LORA_DEFAULT_SCALE must be between"),
    ({"DISCORD_TOKEN": "t", "LORA_DEFAULT_SCALE": "strong"}, "LORA_DEFAULT_SCALE must be a number"),
    ({"DISCORD_TOKEN": "t", "LORA_DOWNLOAD_TIMEOUT": "0"}, "LORA_DOWNLOAD_TIMEOUT must be at least 1"),
    ({"DISCORD_TOKEN": "t", "LORA_MAX_RANK": "0"}, "LORA_MAX_RANK must be at least 1"),
    ({"DISCORD_TOKEN": "t", "LORA_MAX_RANK": "128.5"}, "LORA_MAX_RANK must be a whole number"),
    ({"DISCORD_TOKEN": "t", "LORA_MAX_RANK": "2048"}, "LORA_MAX_RANK must be at most 1024"),
    ({"DISCORD_TOKEN": "t", "LORA_HOTSWAP": "maybe"}, "LORA_HOTSWAP must be auto, on or off"),
    ({"DISCORD_TOKEN": "t", "LORA_CACHE_MB": "0"}, "LORA_CACHE_MB must be at least 1"),
    ({"DISCORD_TOKEN": "t", "LORA_CACHE_MB": "lots"}, "LORA_CACHE_MB must be a whole number"),
])
def test_bad_values_name_the_setting(env, fragment):
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env, dotenv_path=None)


def test_lora_library_defaults_and_values(tmp_path):
    base = {"DISCORD_TOKEN": "t", "DATA_DIR": str(tmp_path)}
    settings = load_settings(base, dotenv_path=None)
    assert (settings.lora_max_bytes, settings.lora_max_header_bytes) == (1024 << 20, 1024 << 10)
    assert (settings.lora.max_stack, settings.lora_default_scale) == (3, 0.8)
    assert (settings.lora_download_timeout, settings.lora.max_rank) == (300, 64)
    settings = load_settings({**base, "LORA_MAX_MB": "2", "LORA_MAX_HEADER_KB": "3", "LORA_MAX_STACK": "8",
                              "LORA_DEFAULT_SCALE": "2", "LORA_DOWNLOAD_TIMEOUT": "30", "LORA_MAX_RANK": "256"}, dotenv_path=None)
    assert (settings.lora_max_bytes, settings.lora_max_header_bytes) == (2 << 20, 3 << 10)
    assert (settings.lora.max_stack, settings.lora_default_scale) == (8, 2.0)
    assert (settings.lora_download_timeout, settings.lora.max_rank) == (30, 256)


def test_dotenv_file_is_read_and_environment_wins(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("DISCORD_TOKEN=from-file\nZIMAGE_MODEL=tiny\n")
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("ZIMAGE_MODEL", "/models/zimage")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    settings = load_settings(dotenv_path=str(env_file))
    assert settings.discord_token == "from-file"
    assert settings.zimage_model == "/models/zimage"
    assert settings.data_dir == Path(tmp_path)


def test_bot_exits_with_one_line_on_bad_settings(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: DISCORD_TOKEN is not set: put your bot token in the environment or in .env"]
