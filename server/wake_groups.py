"""Parked reads grouped by what their answer depends on, so that an append wakes each group
with one read of the log, one frame and one compiled call that writes it to every socket of
the group (reads.py, wake_all).

A read joins the group of its key when it parks and moves when its key changes: its tracker's
segment range (the cluster wakes its reads then), its consumer's stored positions (the project
regroups that consumer's reads on every store), or when it is answered or cancelled. Each group
keeps, beside its reads, the arrays the compiled send takes (sockets, request ids, transports),
so a wake does no work per read before the last socket has its frame.
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
    """The groups of a project's parked reads, by log and key."""

    def __init__(self) -> None:
        self._by_log: dict[str, dict[Hashable, ShareGroup]] = {}

    def of(self, log: str) -> list[ShareGroup]:
        groups = self._by_log.get(log)
        return list(groups.values()) if groups else []

    def join(self, read: PendingRead, log: str, key: Hashable) -> None:
        """`read` parks in the group of `key` (leaving the one it was in)."""
        group = read.group
        if group is not None:
            if group.key == key and not group.detached:
                return
            self.leave(read)
        groups = self._by_log.setdefault(log, {})
        group = groups.get(key)
        if group is None:
            group = groups[key] = ShareGroup(log, key)
        group._add(read)

    def leave(self, read: PendingRead) -> None:
        group = read.group
        if group is None:
            return
        group._remove(read)
        if not group.reads and not group.detached:
            self._drop(group)

    def detach(self, group: ShareGroup) -> None:
        """A wake answers `group`: it leaves the project's groups as it is."""
        if not group.detached:
            group.detached = True
            self._drop(group)

    def _drop(self, group: ShareGroup) -> None:
        groups = self._by_log[group.log]
        del groups[group.key]
        if not groups:
            del self._by_log[group.log]
