"""README "The service": `fluxcore serve` configured from a TOML file (`--config`, the same keys),
`FLUXCORE_<KEY>` variables and the command line; its tokens; bad settings refused at start;
SIGINT. Real server processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fluxcore.client import Client, ProtocolError

from .service_harness import ServerProcess


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`fluxcore serve` that is expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "fluxcore", "serve", *args], text=True,
                          capture_output=True, timeout=30, env=dict(os.environ, **(env or {})))


def refused(client_address: str, project: str, token: str) -> bool:
    try:
        Client.connect(client_address, token=token, project=project, reconnect=False).close()
    except ProtocolError as exc:
        assert exc.code == "auth"
        return True
    return False


def test_toml_file_with_a_table_of_tokens_and_the_web_keys(tmp_path: Path) -> None:
    config = tmp_path / "fluxcore.toml"
    config.write_text(
        'web_project = "shop"\n'
        "web_timeout_s = 0.5\n"
        'fsync = "always"\n'
        "[tokens]\n"
        'shop = "shop-secret"\n'
        '"*" = "anyone"\n')
    server = ServerProcess(tmp_path / "data", "--config", str(config), token=None).start()
    try:
        assert not refused(server.address, "shop", "shop-secret")
        assert refused(server.address, "shop", "anyone")  # a listed project has its own
        assert not refused(server.address, "billing", "anyone")  # "*": every other project
        assert refused(server.address, "billing", "wrong")
        # web_project and web_timeout_s from the file: no handler answers, so 504 in 0.5 s
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://{server.address}/orders/1", timeout=30)
        assert answer.value.code == 504
    finally:
        assert server.stop() == 0


def test_toml_tokens_as_the_path_of_a_tokens_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"shop": "s1"}))
    config = tmp_path / "fluxcore.toml"
    config.write_text(f'tokens = "{tokens}"\n')
    server = ServerProcess(tmp_path / "data", "--config", str(config), token=None).start()
    try:
        assert not refused(server.address, "shop", "s1")
        assert refused(server.address, "other", "s1")  # no "*": other projects are refused
    finally:
        server.stop()


def test_no_token_means_every_project_accepts_dev_with_a_warning(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", token=None).start()
    try:
        assert not refused(server.address, "anything", "dev")
        assert refused(server.address, "anything", "not-dev")
    finally:
        server.stop()
    assert any("accepts the token 'dev'" in line for line in server.output)


@pytest.mark.parametrize(("setting", "env", "named"), [
    ('metrics_interval_s = "often"', {}, "metrics_interval_s"),
    ("segment_file_size = 1000", {}, "segment_file_size"),
    ("max_frame = -5", {}, "max_frame"),
    ("port = 70000", {}, "port"),
    ("tokens = 5", {}, "tokens"),
    ("", {"FLUXCORE_PORT": "not-a-number"}, "FLUXCORE_PORT"),
    ("", {"FLUXCORE_IDLE_TIMEOUT_S": "-1"}, "idle_timeout_s"),
    ("", {"FLUXCORE_SERVER_BUFFER": "0"}, "server_buffer"),
    ('tls_cert = "/nonexistent/cert.pem"', {}, "/nonexistent/cert.pem"),
    ('tls_key = "/nonexistent/key.pem"', {}, "tls_cert"),
])
def test_a_bad_setting_stops_the_server_at_start_naming_it(
        tmp_path: Path, setting: str, env: dict[str, str], named: str) -> None:
    config = tmp_path / "fluxcore.toml"
    port = "" if setting.startswith("port") else "port = 0\n"  # should it start after all
    config.write_text(f'data_dir = "{tmp_path / "data"}"\ntoken = "t"\n{port}{setting}\n')
    out = serve("--config", str(config), env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("fluxcore: ") and named in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_command_line_beats_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    config = tmp_path / "fluxcore.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-file"}"\ntoken = "from-file"\n')
    env = {"FLUXCORE_DATA_DIR": str(tmp_path / "from-env"), "FLUXCORE_TOKEN": "from-env"}
    server = ServerProcess(tmp_path / "from-cli", "--config", str(config), token=None,
                           env=env).start()
    try:
        assert not refused(server.address, "public", "from-env")
        assert refused(server.address, "public", "from-file")
    finally:
        server.stop()
    assert (tmp_path / "from-cli").is_dir()  # --data
    assert not (tmp_path / "from-env").exists() and not (tmp_path / "from-file").exists()


def test_sigint_stops_the_server_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    with Client.connect(server.address, token=server.token) as client:
        client.store_value("kept", b"yes")
    assert server.proc is not None
    os.killpg(server.pid, signal.SIGINT)
    assert server.proc.wait(30) == 0
    restarted = ServerProcess(tmp_path / "data").start()
    try:
        with Client.connect(restarted.address, token=restarted.token) as client:
            assert client.get_value("kept") == b"yes"
    finally:
        restarted.stop()
