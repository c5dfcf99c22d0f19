"""Shared fixtures: the tiny model (built once per session, shared read-only), a fake Discord, and the bot.

tests/support is on sys.path through pytest's `pythonpath` setting (pyproject.toml), so its helpers import by name."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

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
    """A fresh fake Discord per test (see tests/support/fake_discord)."""
    from fake_discord import FakeDiscord

    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def ws(tmp_path):
    """The intake tests' workspace (tests/support/intake_helpers.py): afterwards, nothing written outside job_dir."""
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


@pytest.fixture
async def bot_process(fake, data_dir):
    """A factory of real bots (`python -m bot` subprocesses) on this test's fake Discord and DATA_DIR:
    `bot_process(**env)` makes one (start it with `await bot.start()`; `discord=` points it at another fake,
    `data=` at another DATA_DIR);
    all are stopped afterwards and the end of each one's log is printed, so a failing test shows what the bot said."""
    from bot_process import BotProcess

    made: list[BotProcess] = []

    def make(discord=None, data=None, **env: str) -> BotProcess:  # another FakeDiscord, another DATA_DIR than the test's
        process = BotProcess(discord or fake, data or data_dir, **env)
        made.append(process)
        return process

    yield make
    for process in made:
        await process.stop()
        print(process.log()[-4000:])


@pytest.fixture
async def bot(request, bot_process):
    """The bot most e2e tests need, started and ready; a test module sets its environment with BOT_ENV."""
    process = bot_process(**getattr(request.module, "BOT_ENV", {}))
    await process.start()
    return process
