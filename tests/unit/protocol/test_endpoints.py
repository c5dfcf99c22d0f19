"""Endpoints and wire-security settings: one parser for the worker's --listen and the bot's WORKERS."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import load_settings
from zimage_protocol.endpoints import TcpEndpoint, UnixEndpoint, parse_endpoint, parse_endpoints
from zimage_protocol.security import WireSecurity
from zimage_protocol.settings import SettingsError


def test_unix_and_tcp_endpoints_parse_into_typed_objects(tmp_path):
    unix, tcp, v6 = parse_endpoints(f"unix:{tmp_path}/w.sock, tcp://gpu-2.lan:7000,tcp://[::1]:7001")
    assert unix == UnixEndpoint(tmp_path / "w.sock") and not unix.remote
    assert tcp == TcpEndpoint("gpu-2.lan", 7000) and tcp.remote and str(tcp) == "tcp://gpu-2.lan:7000"
    assert v6 == TcpEndpoint("::1", 7001) and str(v6) == "tcp://[::1]:7001"
    assert parse_endpoint("tcp://0.0.0.0:0", "--listen", listening=True).port == 0


@pytest.mark.parametrize("raw, problem", [
    ("gpu-2:7000", "not an endpoint"),
    ("http://gpu-2:7000", "not an endpoint"),
    ("tcp://gpu-2", "needs a port"),
    ("tcp://gpu-2:http", "needs a port"),
    ("tcp://gpu-2:0", "between 1 and 65535"),
    ("tcp://gpu-2:70000", "between 1 and 65535"),
    ("tcp://user@gpu-2:7000", "no path, no user"),
    ("tcp://gpu-2:7000/x", "no path"),
    ("tcp://:7000", "tcp://host:port"),
    ("unix:", "names no socket path"),
    ("unix:/" + "x" * 120, "too long"),
    ("tcp://a:1,tcp://a:1", "listed twice"),
])
def test_bad_endpoints_are_refused_with_the_setting_named(raw, problem):
    with pytest.raises(SettingsError, match=problem) as error:
        parse_endpoints(raw)
    assert str(error.value).startswith("WORKERS")


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"DISCORD_TOKEN": "x", "DATA_DIR": str(tmp_path), **values}


def test_without_workers_the_bot_uses_its_one_socket(tmp_path):
    settings = load_settings(env(tmp_path), dotenv_path=None)
    assert settings.worker_endpoints == (UnixEndpoint(tmp_path.resolve() / "worker.sock"),)
    settings = load_settings(env(tmp_path, WORKER_MODE="external", WORKER_SOCKET=str(tmp_path / "w.sock")),
                             dotenv_path=None)
    assert settings.worker_endpoints == (UnixEndpoint(tmp_path.resolve() / "w.sock"),)


def test_workers_need_external_mode_and_tcp_needs_a_token(tmp_path):
    with pytest.raises(SettingsError, match="WORKER_MODE=external"):
        load_settings(env(tmp_path, WORKERS="tcp://gpu-2:7000"), dotenv_path=None)
    with pytest.raises(SettingsError, match="set WORKER_TOKEN"):
        load_settings(env(tmp_path, WORKER_MODE="external", WORKERS="tcp://gpu-2:7000"), dotenv_path=None)
    with pytest.raises(SettingsError, match="at least 16"):
        load_settings(env(tmp_path, WORKER_MODE="external", WORKERS="tcp://gpu-2:7000", WORKER_TOKEN="short"),
                      dotenv_path=None)
    with pytest.raises(SettingsError, match="WORKER_TLS_CA points at"):
        load_settings(env(tmp_path, WORKER_MODE="external", WORKERS="tcp://gpu-2:7000", WORKER_TOKEN="t" * 32,
                          WORKER_TLS_CA=str(tmp_path / "missing.pem")), dotenv_path=None)
    settings = load_settings(env(tmp_path, WORKER_MODE="external", WORKERS=f"unix:{tmp_path}/a.sock,tcp://gpu-2:7000",
                                 WORKER_TOKEN="t" * 32, WORKER_HEARTBEAT_TIMEOUT="4"), dotenv_path=None)
    assert settings.worker_endpoints == (UnixEndpoint(tmp_path / "a.sock"), TcpEndpoint("gpu-2", 7000))
    assert settings.worker_security.heartbeat_timeout == 4 and settings.worker_security.heartbeat_interval == 1
    assert "t" * 32 not in repr(settings)  # the token stays out of logs


def test_a_worker_refuses_tcp_without_a_certificate_its_key_and_a_token(tmp_path):
    with pytest.raises(SettingsError, match="WORKER_TLS_CERT, WORKER_TLS_KEY, WORKER_TOKEN"):
        WireSecurity.from_env({}).require_server_tls()
    cert = tmp_path / "c.pem"
    cert.write_text("not a certificate")
    security = WireSecurity.from_env({"WORKER_TLS_CERT": str(cert), "WORKER_TLS_KEY": str(cert),
                                      "WORKER_TOKEN": "t" * 32})
    security.require_server_tls()
    with pytest.raises(SettingsError, match="cannot use WORKER_TLS_CERT"):
        security.server_context()


def test_the_token_is_compared_whole():
    security = WireSecurity(token="t" * 32)
    assert security.token_matches("t" * 32)
    assert not security.token_matches("t" * 31) and not security.token_matches("") and not security.token_matches("T" * 32)
    assert not WireSecurity().token_matches("")  # no token set: nobody gets in
