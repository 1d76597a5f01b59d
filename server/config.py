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
    unix_path: str | None = None  # also listen on this Unix domain socket (no TLS there)
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

    def __post_init__(self) -> None:
        # A bad setting stops the server at start with a message naming it, not at the first
        # connection or log that uses it.
        for spec in dataclasses.fields(self):
            if spec.name in _CHECKS:
                _CHECKS[spec.name](spec.name, getattr(self, spec.name), str(spec.type))
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key is the key of tls_cert: give both, or tls_cert alone "
                             "when it holds the key too")
        for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: no such file {path!r}")

    @classmethod
    def from_sources(cls, file: str | None = None, **options: Any) -> ServerConfig:
        """Defaults < the TOML file < FLUXCORE_* environment variables < options given here.

        Tokens: `token` (every project) and `tokens_file` (a JSON file, or in the TOML file
        `tokens`: that path or a table of project = token) take the same order; projects named
        in FLUXCORE_TOKENS are added; a `token` is the token of every project not named."""
        values: dict[str, Any] = {}
        if file is not None:
            with open(file, "rb") as f:
                values.update(tomllib.load(f))
            if "tokens" in values:
                values["tokens_file"] = values.pop("tokens")
        names = {f.name: f for f in dataclasses.fields(cls)}
        kinds = {name: str(spec.type) for name, spec in names.items() if name != "tokens"}
        for name, kind in {**kinds, "token": "str", "tokens_file": "str"}.items():
            variable = f"FLUXCORE_{name.upper()}"
            env = os.environ.get(variable)
            if env is not None:
                try:
                    values[name] = _convert(env, kind)
                except ValueError:
                    raise ValueError(f"{variable} must be {kind}, not {env!r}") from None
        values.update({k: v for k, v in options.items() if v is not None})
        unknown = set(values) - set(names) - {"token", "tokens_file"}
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        token = values.pop("token", None) or None  # empty: not given
        tokens_file = values.pop("tokens_file", None) or None
        if "tokens" not in values:
            tokens = _file_tokens(tokens_file, file) if tokens_file else Tokens()
            listed = os.environ.get("FLUXCORE_TOKENS")
            if listed:
                tokens = Tokens(by_project={**tokens.by_project, **Tokens.parse(listed)},
                                default=tokens.default)
            if token is not None:
                if not isinstance(token, str):
                    raise ValueError(f"token must be a string, not {token!r}")
                tokens = Tokens(by_project=tokens.by_project, default=token)
            values["tokens"] = tokens
        if not values.get("data_dir"):
            raise ValueError("a data directory is required: --data DIR or FLUXCORE_DATA_DIR")
        return cls(**values)


def _file_tokens(raw: object, file: str | None) -> Tokens:
    """A tokens JSON file's path, or (in the TOML file) a table of project = token."""
    if isinstance(raw, str):
        return Tokens.load(raw)
    if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        table = dict(raw)
        default = table.pop("*", None)
        return Tokens(by_project=table, default=default)
    raise ValueError(f"{file}: tokens must be a table of project = token (\"*\" for any other "
                     "project) or the path of a tokens JSON file")


def _check_number(name: str, value: object, kind: str) -> None:
    if value is None and "None" in kind:
        return
    allowed: tuple[type, ...] = (int, float) if "float" in kind else (int,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ValueError(f"configuration {name} must be {kind.replace(' | None', ' or none')}"
                         f", not {value!r}")
    assert isinstance(value, (int, float))
    low, high = _RANGES.get(name, (1, None))
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"configuration {name} must be {bound}, not {value!r}")


def _check_str(name: str, value: object, kind: str) -> None:
    if not (isinstance(value, str) or (value is None and "None" in kind)):
        raise ValueError(f"configuration {name} must be a string, not {value!r}")


def _check_segment_file_size(name: str, value: object, kind: str) -> None:
    _check_number(name, value, kind)
    assert isinstance(value, int)
    if value < 1 << 20 or value % 4096 or value >= 1 << 32:
        raise ValueError(f"configuration {name} must be a multiple of 4096, at least 1 MiB and "
                         f"under 4 GiB, not {value!r}")


def _check_fsync(name: str, value: object, kind: str) -> None:
    if value not in ("never", "interval", "always"):
        raise ValueError("fsync must be never, interval or always")


# Lower (and upper) bounds of the numeric settings; the others are at least 1.
_RANGES: dict[str, tuple[float, float | None]] = {
    "port": (0, 65535),
    "max_frame": (4096, (1 << 32) - 1),  # a frame's length is a u32
    "metrics_interval_s": (0, None),  # 0: none
    "idle_timeout_s": (0, None),  # 0: off
    "max_open_logs": (0, None),  # 0: automatic
    "hello_timeout_s": (0.001, None),
    "web_timeout_s": (0.001, None),
    "purge_interval_s": (0.001, None),
}
_CHECKS = {
    "data_dir": _check_str, "host": _check_str, "tls_cert": _check_str, "tls_key": _check_str,
    "unix_path": _check_str,
    "web_project": _check_str, "fsync": _check_fsync,
    "segment_file_size": _check_segment_file_size,
    **{name: _check_number for name in (
        "port", "fsync_interval_ms", "retention_ms", "page_cache_bytes", "max_frame",
        "connection_buffer", "server_buffer", "max_read_size", "max_logs", "max_open_logs",
        "purge_interval_s",
        "hello_timeout_s", "idle_timeout_s", "metrics_interval_s", "web_timeout_s")},
}


def _convert(raw: str, kind: object) -> Any:
    text = str(kind)
    if "int" in text and "None" not in text:
        return int(raw)
    if "float" in text:
        return float(raw)
    if "int" in text:
        return None if raw == "" else int(raw)
    return raw
