"""Parked reads grouped by what their answer depends on, so that an append wakes each group
with one read of the log, one frame and one compiled call that writes it to every socket of
the group (reads.py, wake_all).

A read parks under its key (alone, or in the group of the reads with that key) and moves when
its key changes: its tracker's segment range (the cluster wakes its reads then), its consumer's
stored positions (the project regroups that consumer's reads on every store); it leaves when it
is answered or cancelled. Each group keeps, beside its reads, the arrays the compiled send takes
(sockets, request ids, transports), so a wake does no work per read before the last socket has
its frame.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .reads import PendingRead

__all__ = ["ShareGroup", "ShareGroups"]


class ShareGroup:
    """Parked reads of one log that would read the same messages into the same frame (but for
    the request id). Entry i of `fds`, `request_ids` and `transports` is `reads[i]`'s."""

    __slots__ = ("detached", "fds", "key", "log", "reads", "request_ids", "transports")

    def __init__(self, log: str, key: Hashable) -> None:
        self.log = log
        self.key = key
        self.reads: list[PendingRead] = []
        self.fds = array("i")
        self.request_ids = array("I")
        self.transports: list[Any] = []
        # Taken out of its project's groups by a wake that answers it: its arrays stay as
        # they were for that wake, and nothing joins or leaves it any more.
        self.detached = False

    def __len__(self) -> int:
        return len(self.reads)

    def _add(self, read: PendingRead) -> None:
        read.group, read.slot = self, len(self.reads)
        self.reads.append(read)
        self.fds.append(read.session.socket_fd)
        self.request_ids.append(read.request_id)
        self.transports.append(read.session.transport)

    def _remove(self, read: PendingRead) -> None:
        read.group = None
        read.parked_key = None
        if self.detached:
            return
        # The last entry takes the place of the one that leaves: O(1), order does not matter
        # (a connection's reads in one group get the same frame).
        slot, last = read.slot, len(self.reads) - 1
        if slot != last:
            moved = self.reads[slot] = self.reads[last]
            moved.slot = slot
            self.fds[slot] = self.fds[last]
            self.request_ids[slot] = self.request_ids[last]
            self.transports[slot] = self.transports[last]
        self.reads.pop()
        self.fds.pop()
        self.request_ids.pop()
        self.transports.pop()


class ShareGroups:
    """The parked reads of a project, by log and key: a read alone with its key is kept as it
    is (most often a handler waiting for its request: no group to build and take apart); a
    second read with the same key makes the two a ShareGroup. A read with a `parked_key` and
    no group is the entry of its key; `take` and `leave` clear its `parked_key`."""

    def __init__(self) -> None:
        self._by_log: dict[str, dict[Hashable, PendingRead | ShareGroup]] = {}

    def of(self, log: str) -> list[PendingRead | ShareGroup]:
        entries = self._by_log.get(log)
        return list(entries.values()) if entries else []

    def join(self, read: PendingRead, log: str, key: Hashable) -> None:
        """`read` parks under `key` (leaving where it was)."""
        if read.parked_key is not None:
            if read.parked_key == key and (read.group is None or not read.group.detached):
                return
            self.leave(read, log)
        entries = self._by_log.setdefault(log, {})
        found = entries.get(key)
        if found is None:
            entries[key] = read
        elif type(found) is ShareGroup:
            found._add(read)
        else:  # a second read with this key: the two make a group
            group = entries[key] = ShareGroup(log, key)
            group._add(found)  # type: ignore[arg-type]
            group._add(read)
        read.parked_key = key

    def leave(self, read: PendingRead, log: str) -> None:
        key = read.parked_key
        if key is None:
            return
        read.parked_key = None
        group = read.group
        if group is not None:
            group._remove(read)
            if not group.reads and not group.detached:
                self._drop(log, key)
        else:
            entries = self._by_log.get(log)
            if entries is not None and entries.get(key) is read:
                self._drop(log, key)

    def take(self, log: str, entry: PendingRead | ShareGroup) -> None:
        """A wake answers `entry`: it leaves the project's reads as it is."""
        if type(entry) is ShareGroup:
            entry.detached = True
            self._drop(log, entry.key)
        else:
            self._drop(log, entry.parked_key)  # type: ignore[union-attr]
            entry.parked_key = None  # type: ignore[union-attr]

    def _drop(self, log: str, key: Hashable) -> None:
        entries = self._by_log[log]
        del entries[key]
        if not entries:
            del self._by_log[log]
