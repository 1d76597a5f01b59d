# Type stubs of the microclient's compiled dispatch loop and handler metrics (_app.pyx).
from collections.abc import Callable
from typing import Any

DISPATCH_DONE: int
DISPATCH_GENERAL: int
DISPATCH_COMMIT: int

class Handling:
    message: Any
    aggregates: list[Any] | None
    def __init__(self, message: Any) -> None: ...
    def loaded(self, root: Any) -> None: ...

class HandlerTimings:
    def __init__(self, capacity: int = 1024) -> None: ...
    def add(self, code: int, index: int, failed: bool) -> None: ...
    def __len__(self) -> int: ...
    def elapsed_us(self) -> int: ...
    def columns(self) -> tuple[list[int], list[int], list[int], list[bool]]: ...
    def encode(self, consumer: str, client: str, message_type: str, timestamp: int,
               handlers: list[str], payload_types: list[str]) -> bytes: ...

def dispatch_plain(
    messages: list[Any],
    position: int,
    entry: int,
    plain: dict[str, tuple[tuple[int, Callable[[Any], Any], Callable[[bytes], Any], Any], ...]],
    upcast_types: set[str],
    handling: Handling,
    timings: HandlerTimings | None,
    handler_failed: Callable[[Any, Any, BaseException], None],
) -> tuple[int, int, int]: ...
