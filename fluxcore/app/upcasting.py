"""Upcasters: functions that bring an old payload (as JSON-like values) to the next revision.

An upcaster is registered for a (type, revision). It returns the payload of the next revision
(same type, revision + 1), an `Upcast` (another type and/or revision: a rename), or None to drop
the message. Chains run until no upcaster matches; a loop is an error, not a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

__all__ = ["Upcast", "Upcasters", "upcaster"]

UpcasterFunction = Callable[[Any], Any]
F = TypeVar("F", bound=UpcasterFunction)
MAX_CHAIN = 1000


class Upcast(NamedTuple):
    """What an upcaster returns to rename a payload's type (or set its revision)."""

    type: str
    revision: int
    data: Any


def upcaster(type: str, revision: int) -> Callable[[F], F]:
    """Marks a function as the upcaster of payloads of `type` at `revision`; register it with
    `app.register(fn)` (or pass it to a TestFixture)."""

    def mark(fn: F) -> F:
        fn.__fluxcore_upcaster__ = (type, revision)  # type: ignore[attr-defined]
        return fn

    return mark


def upcaster_key(fn: Any) -> tuple[str, int] | None:
    key = getattr(fn, "__fluxcore_upcaster__", None)
    return key if isinstance(key, tuple) else None


class Upcasters:
    """The upcasters of one app, by (type, revision)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, int], UpcasterFunction] = {}
        self.types: set[str] = set()  # the payload types some upcaster applies to

    def register(self, type: str, revision: int, fn: UpcasterFunction) -> None:
        if (type, revision) in self._by_key:
            raise ValueError(f"an upcaster of {type!r} revision {revision} is registered already")
        self._by_key[(type, revision)] = fn
        self.types.add(type)

    def applies(self, type: str, revision: int) -> bool:
        return type in self.types and (type, revision) in self._by_key

    def upcast(self, type: str, revision: int, value: Any) -> tuple[str, int, Any] | None:
        """Runs the chain from (type, revision); None if an upcaster dropped the payload."""
        for _ in range(MAX_CHAIN):
            fn = self._by_key.get((type, revision))
            if fn is None:
                return type, revision, value
            out = fn(value)
            if out is None:
                return None
            if isinstance(out, Upcast):
                type, revision, value = out.type, out.revision, out.data
            else:
                revision, value = revision + 1, out
        raise ValueError(f"upcasters of {type!r} loop: more than {MAX_CHAIN} steps")
