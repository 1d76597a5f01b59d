"""The fluxcore service (installed as fluxcore.server): one TCP endpoint over the embedded log."""

from .app import Server, run
from .config import ServerConfig, Tokens

__all__ = ["Server", "ServerConfig", "Tokens", "run"]
