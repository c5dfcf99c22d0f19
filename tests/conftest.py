"""Shared fixtures: the tiny model is built once per test session and shared read-only."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """DATA_DIR/models with the tiny pipeline built by the project's own `ensure_tiny_model`."""
    from gpu.tiny import ensure_tiny_model

    models = tmp_path_factory.mktemp("shared") / "models"
    ensure_tiny_model(models)
    return models


@pytest.fixture
def data_dir(tmp_path, tiny_models_dir) -> Path:
    """A fresh DATA_DIR whose models/ points at the session's tiny model (no rebuild per test)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    return data


@pytest.fixture
async def fake():
    """A fresh fake Discord per test (see tests/fake_discord)."""
    from fake_discord import FakeDiscord

    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def ws(tmp_path):
    """The intake tests' workspace (tests/intake_helpers.py): afterwards, nothing written outside job_dir."""
    upload = tmp_path / "upload"
    upload.mkdir()
    job = tmp_path / "job"
    space = SimpleNamespace(zip=upload / "photos.zip", job=job, tmp=tmp_path)
    yield space
    for path in tmp_path.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        assert path == space.zip or job in path.parents, f"written outside job_dir: {path}"
    if job.exists():
        assert not list(job.glob(".intake-*")), "staging folder left behind"
    assert not Path("/abs.png").exists()
