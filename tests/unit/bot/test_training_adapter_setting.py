"""TRAINING_ADAPTER: default (the published de-distillation adapter), none, a file, hf:owner/repo/file[@rev]."""

from __future__ import annotations

import pytest

from bot.settings import SettingsError, load_settings
from bot.training.service import TrainService
from zimage_protocol.training_adapter import DEFAULT_HUB, parse_spec


def settings(tmp_path, **env):
    return load_settings({"DISCORD_TOKEN": "t", "DATA_DIR": str(tmp_path), **env}, dotenv_path=None)


def test_unset_and_default_mean_the_published_adapter(tmp_path):
    assert settings(tmp_path).training_adapter == "default"
    assert settings(tmp_path, TRAINING_ADAPTER=" Default ").training_adapter == "default"
    assert DEFAULT_HUB.repo == "ostris/zimage_turbo_training_adapter"
    assert DEFAULT_HUB.filename == "zimage_turbo_training_adapter_v2.safetensors"


@pytest.mark.parametrize("raw", ["none", "NONE", " none "])
def test_none_turns_it_off(tmp_path, raw):
    assert settings(tmp_path, TRAINING_ADAPTER=raw).training_adapter is None


def test_a_file_is_resolved_to_its_absolute_path(tmp_path, monkeypatch):
    adapter = tmp_path / "dedistill.safetensors"
    adapter.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert settings(tmp_path, TRAINING_ADAPTER="dedistill.safetensors").training_adapter == str(adapter)
    # In external mode the path is the workers' (another disk): not checked here, but it must be absolute.
    external = settings(tmp_path, TRAINING_ADAPTER="/srv/adapters/a.safetensors", WORKER_MODE="external")
    assert external.training_adapter == "/srv/adapters/a.safetensors"


@pytest.mark.parametrize("raw, spec", [
    ("hf:someone/adapters/a.safetensors", "hf:someone/adapters/a.safetensors@main"),
    ("hf:someone/adapters/sub/dir/a.safetensors@v2", "hf:someone/adapters/sub/dir/a.safetensors@v2"),
    ("hf:ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors@0123abcd",
     "hf:ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors@0123abcd"),
])
def test_a_hub_file_with_an_optional_revision(tmp_path, raw, spec):
    assert settings(tmp_path, TRAINING_ADAPTER=raw).training_adapter == spec
    assert parse_spec(raw) == spec


@pytest.mark.parametrize("env, fragment", [
    ({"TRAINING_ADAPTER": "/nowhere/adapter.safetensors"}, "which does not exist"),
    ({"TRAINING_ADAPTER": "adapter.pt"}, "pickle"),
    ({"TRAINING_ADAPTER": "hf:someone/adapters"}, "expected hf:owner/repo/file.safetensors"),
    ({"TRAINING_ADAPTER": "hf:someone/adapters/a.bin"}, "must be a .safetensors file"),
    ({"TRAINING_ADAPTER": "hf:someone/adapters/../../etc/a.safetensors"}, "bad file name"),
    ({"TRAINING_ADAPTER": "hf:some one/adapters/a.safetensors"}, "expected hf:owner/repo"),
    ({"TRAINING_ADAPTER": "hf:someone/adapters/a.safetensors@"}, "bad revision"),
    ({"TRAINING_ADAPTER": "relative.safetensors", "WORKER_MODE": "external"}, "absolute path"),
])
def test_bad_values_stop_the_bot_naming_the_setting(tmp_path, env, fragment):
    with pytest.raises(SettingsError, match="TRAINING_ADAPTER") as caught:
        settings(tmp_path, **env)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("raw, sent", [("", "default"), ("none", None), ("hf:a/b/c.safetensors@r", "hf:a/b/c.safetensors@r")])
def test_the_spec_travels_in_the_training_config_unresolved(tmp_path, raw, sent):
    """The bot downloads nothing: the worker resolves the spec at the training (gpu/training/adapter.py)."""
    service = TrainService.__new__(TrainService)
    service.settings = settings(tmp_path, TRAINING_ADAPTER=raw)
    assert service.config("ada", None, 10)["training_adapter"] == sent
