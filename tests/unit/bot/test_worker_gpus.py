"""Which workers spawn mode starts (bot/worker/gpus.py) and WORKER_GPUS's parsing (bot/settings.py): no GPU needed.

`nvidia-smi` is a real executable here too: a tiny script on PATH, or none at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import SettingsError, load_settings
from bot.worker.gpus import LocalWorker, local_workers, parse_visible_devices, plan_workers, visible_gpus

SOCKET = Path("/srv/zimage/data/worker.sock")


def settings(tmp_path: Path, **env: str):
    return load_settings({"DISCORD_TOKEN": "t", "DATA_DIR": str(tmp_path), **env}, dotenv_path=None)


# --- plan_workers: one socket per worker --------------------------------------------------------------------------

def test_no_gpu_is_one_worker_on_the_settings_socket():
    assert plan_workers(SOCKET, []) == [LocalWorker(None, SOCKET)]


def test_one_gpu_keeps_the_one_socket():
    assert plan_workers(SOCKET, [3]) == [LocalWorker(3, SOCKET)]


def test_several_gpus_get_a_socket_each_beside_the_settings_one():
    assert plan_workers(SOCKET, [0, 1]) == [LocalWorker(0, SOCKET.with_name("worker-gpu0.sock")),
                                            LocalWorker(1, SOCKET.with_name("worker-gpu1.sock"))]
    custom = Path("/run/zimage/bot.sock")  # WORKER_SOCKET names the stem and folder the others follow
    assert [w.socket for w in plan_workers(custom, (2, 5))] == [Path("/run/zimage/bot-gpu2.sock"),
                                                               Path("/run/zimage/bot-gpu5.sock")]


def test_sockets_are_distinct_and_labelled():
    workers = plan_workers(SOCKET, list(range(8)))
    assert len({w.socket for w in workers}) == 8
    assert [w.label for w in workers[:2]] == ["GPU 0", "GPU 1"]
    assert LocalWorker(None, SOCKET).label == "the only worker"


# --- cuda_visible_devices: what each worker may see ----------------------------------------------------------------

def test_without_an_inherited_list_the_index_is_the_device():
    assert LocalWorker(1, SOCKET).cuda_visible_devices(None) == "1"
    assert LocalWorker(None, SOCKET).cuda_visible_devices("2,3") is None  # the only worker sees what the bot sees


@pytest.mark.parametrize("inherited, gpu, device", [
    ("2,3", 0, "2"),
    ("2,3", 1, "3"),  # WORKER_GPUS counts among the devices the bot sees, as torch does
    (" 4 , 7 ", 1, "7"),
    ("GPU-8f0c,GPU-1a2b", 1, "GPU-1a2b"),  # UUIDs pass through
    ("5,-1,6", 0, "5"),
])
def test_an_inherited_list_is_indexed(inherited, gpu, device):
    assert LocalWorker(gpu, SOCKET).cuda_visible_devices(inherited) == device


@pytest.mark.parametrize("inherited, gpu, shows", [
    ("2,3", 2, 2),
    ("5,-1,6", 1, 1),  # CUDA stops at the first invalid entry: 6 is not visible
    ("", 0, 0),        # every GPU hidden from the bot: none may be unhidden for a worker
    ("-1", 0, 0),
])
def test_an_index_past_the_inherited_list_is_refused(inherited, gpu, shows):
    with pytest.raises(ValueError, match=f"WORKER_GPUS names GPU {gpu}, but CUDA_VISIBLE_DEVICES=.* shows {shows}"):
        LocalWorker(gpu, SOCKET).cuda_visible_devices(inherited)


@pytest.mark.parametrize("value, visible", [
    ("0", [0]),
    ("3,1", [0, 1]),  # the workers see them renumbered from 0
    (" 2 , 5 ,", [0, 1]),
    ("GPU-8f0c", [0]),
    ("", []),
    ("-1", []),
    ("0,-1,1", [0]),
])
def test_parse_visible_devices(value, visible):
    assert parse_visible_devices(value) == visible


# --- WORKER_GPUS in the settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, gpus", [
    (None, None), ("", None), ("auto", None), (" AUTO ", None),
    ("0", (0,)), ("0,1", (0, 1)), (" 3 , 1 ", (3, 1)),
])
def test_worker_gpus_parses(tmp_path, raw, gpus):
    env = {} if raw is None else {"WORKER_GPUS": raw}
    assert settings(tmp_path, **env).worker_gpus == gpus


@pytest.mark.parametrize("raw, fragment", [
    ("all", "WORKER_GPUS must be auto or GPU indices such as 0,1; got 'all'"),
    ("0,,1", "WORKER_GPUS must be auto or GPU indices"),
    ("0;1", "WORKER_GPUS must be auto or GPU indices"),
    ("-1", "WORKER_GPUS must list each GPU index (0 or more) once"),
    ("1,1", "WORKER_GPUS must list each GPU index (0 or more) once; got '1,1'"),
])
def test_bad_worker_gpus_are_one_clear_line(tmp_path, raw, fragment):
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, WORKER_GPUS=raw)
    assert fragment in str(caught.value)


def test_worker_gpus_needs_spawn_mode(tmp_path):
    with pytest.raises(SettingsError, match="WORKER_GPUS .* needs WORKER_MODE=spawn .*WORKERS"):
        settings(tmp_path, WORKER_GPUS="0,1", WORKER_MODE="external")
    assert settings(tmp_path, WORKER_GPUS="auto", WORKER_MODE="external").worker_gpus is None


# --- local_workers: the plan spawn mode runs -----------------------------------------------------------------------

@pytest.fixture
def no_cuda_env(monkeypatch, tmp_path):
    """No CUDA_VISIBLE_DEVICES, and a PATH with nothing but what a test puts in it."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def fake_nvidia_smi(bin_dir: Path, script: str) -> None:
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(0o755)


async def test_explicit_gpus_on_a_machine_without_any(tmp_path, no_cuda_env):
    """WORKER_GPUS=0,1 is taken at its word (the workers then run on the CPU): two workers, a socket each."""
    plan = await local_workers(settings(tmp_path, WORKER_GPUS="0,1"))
    assert plan == [LocalWorker(0, tmp_path / "worker-gpu0.sock"), LocalWorker(1, tmp_path / "worker-gpu1.sock")]
    assert [worker.cuda_visible_devices(None) for worker in plan] == ["0", "1"]


async def test_explicit_gpus_outside_the_bot_s_cuda_visible_devices_stop_the_bot(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(SettingsError, match=r"WORKER_GPUS names GPU 1, but CUDA_VISIBLE_DEVICES='5' shows 1"):
        await local_workers(settings(tmp_path, WORKER_GPUS="0,1"))


async def test_auto_follows_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    plan = await local_workers(settings(tmp_path))
    assert [(w.gpu, w.socket.name) for w in plan] == [(0, "worker-gpu0.sock"), (1, "worker-gpu1.sock")]
    assert [w.cuda_visible_devices("2,3") for w in plan] == ["2", "3"]


async def test_auto_without_nvidia_smi_is_one_worker(tmp_path, no_cuda_env):
    assert await visible_gpus() == []
    assert await local_workers(settings(tmp_path)) == [LocalWorker(None, tmp_path / "worker.sock")]


async def test_auto_asks_nvidia_smi(tmp_path, no_cuda_env):
    fake_nvidia_smi(no_cuda_env, "printf '0\\n1\\n2\\n'")
    assert await visible_gpus() == [0, 1, 2]
    assert len(await local_workers(settings(tmp_path))) == 3


async def test_a_failing_nvidia_smi_means_no_gpu(tmp_path, no_cuda_env):
    fake_nvidia_smi(no_cuda_env, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert await visible_gpus() == []
