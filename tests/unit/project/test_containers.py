"""Dockerfile and docker-compose.yml: consistent with each other, with the lock and with how the bot finds its worker.

`docker compose config -q` validates the compose file where the Compose plugin is installed (skipped
elsewhere: it needs no Docker engine, only the CLI plugin).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from paths import ROOT
from test_lock import read_lock


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text().replace("\\\n", "")  # Docker joins continued lines first


def test_bot_and_worker_meet_on_the_shared_data_volume():
    services = compose()["services"]
    bot, worker = services["bot"], services["worker"]
    assert bot["environment"]["WORKER_MODE"] == "external"
    socket = bot["environment"]["WORKER_SOCKET"]
    command = worker["command"]
    assert command[:3] == ["python", "-m", "gpu"] and command[command.index("--socket") + 1] == socket
    data_dir = command[command.index("--data-dir") + 1]
    # The bot sends the worker paths under DATA_DIR (LoRAs, training data): the same volume at the same path.
    assert bot["environment"]["DATA_DIR"] == worker["environment"]["DATA_DIR"] == data_dir
    assert Path(socket).parent == Path(data_dir)
    assert f"data:{data_dir}" in bot["volumes"] and f"data:{data_dir}" in worker["volumes"]
    assert bot["environment"]["HF_HOME"] == worker["environment"]["HF_HOME"] == "/models"
    assert "models:/models" in worker["volumes"]


def test_only_the_workers_get_a_gpu_each_and_postgres_is_optional():
    services = compose()["services"]
    for name, gpu in (("worker", "0"), ("worker-2", "1")):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}]
    assert "deploy" not in services["bot"]
    # The second worker is optional, and the bot's WORKERS example names both workers' sockets.
    second = services["worker-2"]
    assert second["profiles"] == ["second-gpu"] and services["bot"]["depends_on"]["worker-2"]["required"] is False
    sockets = [command[command.index("--socket") + 1] for command in (services["worker"]["command"], second["command"])]
    example = re.search(r"WORKERS=(\S+)", (ROOT / "docker-compose.yml").read_text()).group(1)
    assert example == ",".join(f"unix:{socket}" for socket in sockets)
    assert services["postgres"]["profiles"] == ["postgres"] and "profiles" not in services["bot"]
    assert services["bot"]["depends_on"]["postgres"]["required"] is False
    env = services["postgres"]["environment"]
    example = re.search(r"DATABASE_URL=(postgresql\+asyncpg://\S+)", (ROOT / "docker-compose.yml").read_text()).group(1)
    assert example == f"postgresql+asyncpg://{env['POSTGRES_USER']}:zimage@postgres/{env['POSTGRES_DB']}"


def test_the_image_installs_the_locked_versions_as_a_user():
    text = dockerfile()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c requirements.lock" in line for line in installs)
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert 'VOLUME ["/data", "/models"]' in text and "DATA_DIR=/data" in text and "HF_HOME=/models" in text
    # The requirements step of the image, run here (the shell passes its \n to Python as written): all of it is pinned.
    code = re.search(r'RUN python -c "(import tomllib.*?)" >', text).group(1)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    requirements = [Requirement(line) for line in done.stdout.splitlines()]
    pins = read_lock()
    assert {"torch", "torchao", "bitsandbytes", "asyncpg"} <= {canonicalize_name(r.name) for r in requirements}
    assert all(r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True) for r in requirements)


def test_the_image_has_every_package_of_the_project():
    """The code runs from /app, not installed: each package pyproject.toml names must be copied in."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = set(re.findall(r"^COPY (\S+)/ \1/$", dockerfile(), re.MULTILINE))
    assert {*packages, "migrations"} <= copied, copied


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.skipif(compose_cli() is None, reason="the Docker Compose CLI plugin is not installed")
def test_docker_compose_accepts_the_file():
    for profile in ([], ["--profile", "postgres"]):
        done = subprocess.run([*compose_cli(), "-f", str(ROOT / "docker-compose.yml"), *profile, "config", "-q"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
