"""What the connections' buffers may take, all connections together (`server_buffer`).

Receive side: every connection reads into a buffer of `SMALL_BUFFER` bytes. A frame larger than
that is granted room for its announced size from `ReceiveBudget` before the buffer grows, and
the buffer then grows with what has arrived (doubling, never beyond the grant), so a header that
announces 64 MiB costs nothing until 64 MiB come. Grants together stay within the budget; a
connection whose frame does not fit waits, its socket unread, until earlier grants are given
back (first come, first served). A grant covers one whole frame, so a waiting connection never
holds memory another one needs to finish: there is no deadlock, only a queue.

Send side: `UnsentBytes` sums the write buffers of the connections that have unsent bytes, and
only theirs: an idle connection costs nothing in that sum.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

__all__ = ["MAX_HELLO_FRAME", "SMALL_BUFFER", "ReceiveBudget", "UnsentBytes"]

SMALL_BUFFER = 4096  # every connection's receive buffer to begin with
MAX_HELLO_FRAME = SMALL_BUFFER  # before HELLO a frame fits in the small buffer, or is refused


class Grantee(Protocol):
    def granted(self) -> None: ...


class ReceiveBudget:
    """Bytes of receive buffer beyond the first `SMALL_BUFFER` of each connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.granted = 0  # to every connection together
        self.peak = 0
        self._held: dict[Grantee, int] = {}
        self._waiting: OrderedDict[Grantee, int] = OrderedDict()

    def held(self, owner: Grantee) -> int:
        return self._held.get(owner, 0)

    def request(self, owner: Grantee, size: int) -> bool:
        """`owner` needs `size` bytes beyond its small buffer. True if it has them now; else
        it waits and `owner.granted()` is called once it has them."""
        held = self._held.get(owner, 0)
        if size <= held:
            return True
        self._waiting.pop(owner, None)
        if not self._waiting and self._fits(held, size):
            self._set(owner, size)
            return True
        self._waiting[owner] = size
        return False

    def release(self, owner: Grantee, keep: int = 0) -> None:
        """`owner` needs only `keep` bytes (0: none, it is gone) from now on."""
        self._waiting.pop(owner, None)
        if self._held.get(owner, 0) > keep:
            self._set(owner, keep)
            self._grant_waiting()

    def waiting(self) -> int:
        return len(self._waiting)

    def _fits(self, held: int, size: int) -> bool:
        # A frame larger than the whole budget still goes through alone.
        others = self.granted - held
        return others + size <= self.limit or others == 0

    def _set(self, owner: Grantee, size: int) -> None:
        self.granted += size - self._held.get(owner, 0)
        self.peak = max(self.peak, self.granted)
        if size:
            self._held[owner] = size
        else:
            self._held.pop(owner, None)

    def _grant_waiting(self) -> None:
        while self._waiting:
            owner, size = next(iter(self._waiting.items()))
            if not self._fits(self._held.get(owner, 0), size):
                return
            del self._waiting[owner]
            self._set(owner, size)
            owner.granted()


class Transport(Protocol):
    def get_write_buffer_size(self) -> int: ...


class UnsentBytes:
    """Bytes written to transports and not yet sent, for all connections together; summed over
    the transports that had some when last written to, at most every `every_s`."""

    def __init__(self, every_s: float = 0.005) -> None:
        self._backlogged: set[Transport] = set()
        self._every_s = every_s
        self._summed_at = 0.0
        self._total = 0

    def wrote(self, transport: Transport) -> None:
        if transport.get_write_buffer_size():
            self._backlogged.add(transport)

    def forget(self, transport: Transport) -> None:
        self._backlogged.discard(transport)

    def total(self) -> int:
        now = time.monotonic()
        if now - self._summed_at > self._every_s:
            self._summed_at = now
            total = 0
            for transport in list(self._backlogged):
                size = transport.get_write_buffer_size()
                if size:
                    total += size
                else:
                    self._backlogged.discard(transport)
            self._total = total
        return self._total
