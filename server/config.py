"""Server configuration: command-line options, a TOML file and FLUXCORE_* environment variables."""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from fluxcore.log import DEFAULT_PAGE_CACHE_BYTES
from fluxcore.protocol import DEFAULT_MAX_FRAME, DEFAULT_PORT

__all__ = ["ServerConfig", "Tokens"]


@dataclass(frozen=True)
class Tokens:
    """The token of each project; `default` serves projects not listed (None: refuse them)."""

    by_project: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def check(self, project: str, token: object) -> bool:
        expected = self.by_project.get(project, self.default)
        if expected is None or not isinstance(token, str):
            return False
        return hmac.compare_digest(expected.encode(), token.encode())

    @staticmethod
    def parse(listed: str) -> dict[str, str]:
        """`project=token,project=token` (FLUXCORE_TOKENS)."""
        tokens: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in listed.split(","))):
            project, sep, token = item.partition("=")
            if not sep or not project or not token:
                raise ValueError(f"FLUXCORE_TOKENS: expected project=token, got {item!r}")
            tokens[project] = token
        return tokens

    @classmethod
    def load(cls, path: str) -> Tokens:
        """A JSON file {"project": "token", ..., "*": "token for every other project"}."""
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise ValueError(f"{path}: tokens must be a JSON object of project -> token")
        default = raw.pop("*", None)
        return cls(by_project=raw, default=default)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tokens: Tokens = field(default_factory=Tokens)
    fsync: str = "interval"
    fsync_interval_ms: int = 100
    segment_file_size: int = 64 * 1024 * 1024
    retention_ms: int | None = None
    page_cache_bytes: int | None = DEFAULT_PAGE_CACHE_BYTES  # per log; see fluxcore.Log
    tls_cert: str | None = None
    tls_key: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    # Backpressure: bytes waiting to be written, per connection and for the whole server;
    # server_buffer also bounds the large frames all connections are receiving (buffers.py).
    connection_buffer: int = 8 * 1024 * 1024
    server_buffer: int = 256 * 1024 * 1024
    max_read_size: int = 10_000
    max_logs: int = 1000  # custom topics and document collections per project
    # Logs open at a time, all projects together; the least recently used are closed and
    # reopened on use. 0: automatic, from the open-file limit (server/open_logs.py).
    max_open_logs: int = 0
    purge_interval_s: float = 1.0
    hello_timeout_s: float = 10.0  # a connection that says nothing in time is closed
    # A connection that said HELLO and was not heard from for this long is closed; after a
    # third of it the server pings it (clients answer PING with PONG). 0: never.
    idle_timeout_s: float = 30.0
    metrics_interval_s: float = 10.0  # traffic and consumer reports to METRICS; 0: none
    web_project: str | None = None  # HTTP requests become WEBREQUESTs of this project
    web_timeout_s: float = 30.0  # then a web request without a response gets a 504

    @classmethod
    def from_sources(cls, file: str | None = None, **options: Any) -> ServerConfig:
        """Defaults < the TOML file < FLUXCORE_* environment variables < options given here."""
        values: dict[str, Any] = {}
        if file is not None:
            with open(file, "rb") as f:
                values.update(tomllib.load(f))
        names = {f.name: f for f in dataclasses.fields(cls)}
        for name, spec in names.items():
            env = os.environ.get(f"FLUXCORE_{name.upper()}")
            if env is not None and name != "tokens":
                values[name] = _convert(env, spec.type)
        values.update({k: v for k, v in options.items() if v is not None})
        unknown = set(values) - set(names) - {"token", "tokens_file"}
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        token = values.pop("token", None) or os.environ.get("FLUXCORE_TOKEN")
        tokens_file = values.pop("tokens_file", None) or os.environ.get("FLUXCORE_TOKENS_FILE")
        if "tokens" not in values:
            tokens = Tokens.load(tokens_file) if tokens_file else Tokens()
            listed = os.environ.get("FLUXCORE_TOKENS")
            if listed:
                tokens = Tokens(by_project={**tokens.by_project, **Tokens.parse(listed)},
                                default=tokens.default)
            if token is not None:
                tokens = Tokens(by_project=tokens.by_project, default=token)
            values["tokens"] = tokens
        if not values.get("data_dir"):
            raise ValueError("a data directory is required: --data DIR or FLUXCORE_DATA_DIR")
        if float(values.get("idle_timeout_s", 0)) < 0:
            raise ValueError("idle_timeout_s must be 0 (off) or positive")
        if int(values.get("max_open_logs", 0)) < 0:
            raise ValueError("max_open_logs must be 0 (automatic) or positive")
        if values.get("fsync", "interval") not in ("never", "interval", "always"):
            raise ValueError("fsync must be never, interval or always")
        return cls(**values)


def _convert(raw: str, kind: object) -> Any:
    text = str(kind)
    if "int" in text and "None" not in text:
        return int(raw)
    if "float" in text:
        return float(raw)
    if "int" in text:
        return None if raw == "" else int(raw)
    return raw
