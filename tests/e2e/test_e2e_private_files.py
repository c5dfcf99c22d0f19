"""DATA_DIR is private (issue #18): the real bot and worker leave nothing in it that other local users can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from e2e_helpers import queued_job, wait_result

pytestmark = pytest.mark.e2e


def readable_by_others(root: Path) -> list[str]:
    """Files and folders under root (symlinks, such as the shared models/, not followed) with group/other bits."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append(f"{path.relative_to(root)} {stat.filemode(mode)}")
    return found


async def test_data_dir_and_everything_written_in_it_are_owner_only(fake, data_dir, bot_process):
    data_dir.chmod(0o755)  # as a DATA_DIR made by hand, or by an older version, would be
    bot = bot_process()
    await bot.start()
    try:
        ix = await fake.slash_command("imagine", {"prompt": "a private fox", "seed": 1, "steps": 1}, user=fake.alice)
        await wait_result(fake, await queued_job(ix))
    finally:
        await bot.stop()
    print(bot.log()[-3000:])
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    written = {path.name for path in data_dir.iterdir()}
    assert {"zimage.db", "link-secret", "outputs"} <= written, written
    assert readable_by_others(data_dir) == []
