"""Server configuration: defaults < TOML file < FLUXCORE_* environment < options; tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fluxcore.server import ServerConfig, Tokens


def test_sources_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "fluxcore.toml"
    toml.write_text('data_dir = "/from/file"\nport = 1111\nfsync = "always"\n'
                    'fsync_interval_ms = 7\n')
    monkeypatch.setenv("FLUXCORE_PORT", "2222")
    monkeypatch.setenv("FLUXCORE_RETENTION_MS", "5000")
    monkeypatch.setenv("FLUXCORE_TOKEN", "env-token")
    config = ServerConfig.from_sources(str(toml), host="0.0.0.0")
    assert config.data_dir == "/from/file"
    assert config.port == 2222  # the environment beats the file
    assert config.fsync == "always" and config.fsync_interval_ms == 7
    assert config.retention_ms == 5000
    assert config.host == "0.0.0.0"
    assert config.tokens.check("any-project", "env-token")
    config = ServerConfig.from_sources(str(toml), port=3333, token="cli")
    assert config.port == 3333 and config.tokens.check("p", "cli")
    assert not config.tokens.check("p", "env-token")


def test_page_cache_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerConfig.from_sources(data_dir="d").page_cache_bytes == 1 << 30
    monkeypatch.setenv("FLUXCORE_PAGE_CACHE_BYTES", "")  # empty: no limit
    assert ServerConfig.from_sources(data_dir="d").page_cache_bytes is None
    monkeypatch.setenv("FLUXCORE_PAGE_CACHE_BYTES", "4096")
    assert ServerConfig.from_sources(data_dir="d").page_cache_bytes == 4096


def test_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"shop": "s3cret", "*": "fallback"}))
    tokens = Tokens.load(str(path))
    assert tokens.check("shop", "s3cret")
    assert not tokens.check("shop", "fallback")
    assert tokens.check("other", "fallback")
    assert not tokens.check("other", None)
    assert not Tokens(by_project={"a": "x"}).check("b", "x")  # no default: refused
    path.write_text(json.dumps({"shop": 1}))
    with pytest.raises(ValueError, match="tokens"):
        Tokens.load(str(path))


def test_bad_configuration_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUXCORE_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="data directory"):
        ServerConfig.from_sources()
    with pytest.raises(ValueError, match="fsync"):
        ServerConfig.from_sources(data_dir=str(tmp_path), fsync="sometimes")
    toml = tmp_path / "bad.toml"
    toml.write_text('data_dir = "x"\nunknown_key = 1\n')
    with pytest.raises(ValueError, match="unknown_key"):
        ServerConfig.from_sources(str(toml))


def test_tokens_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXCORE_TOKENS", "shop=s1, billing=b2")
    config = ServerConfig.from_sources(data_dir=str(tmp_path))
    assert config.tokens.check("shop", "s1") and config.tokens.check("billing", "b2")
    assert not config.tokens.check("shop", "b2") and not config.tokens.check("other", "s1")
    monkeypatch.setenv("FLUXCORE_TOKENS", "shop")
    with pytest.raises(ValueError, match="project=token"):
        ServerConfig.from_sources(data_dir=str(tmp_path))


def test_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerConfig.from_sources(data_dir="d").idle_timeout_s == 30.0
    monkeypatch.setenv("FLUXCORE_IDLE_TIMEOUT_S", "0")  # 0: no idle check
    assert ServerConfig.from_sources(data_dir="d").idle_timeout_s == 0.0
    with pytest.raises(ValueError, match="idle_timeout_s"):
        ServerConfig.from_sources(data_dir="d", idle_timeout_s=-1.0)
