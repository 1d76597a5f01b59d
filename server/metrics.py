"""What the server writes to each project's METRICS log, so that everything connected is seen
from one place: connects and disconnects, trackers leaving, and every `metrics_interval_s` the
traffic of each connection and how far each consumer is behind its log.

Counting costs a few integer additions per request, not per message."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .positions import UNSET

if TYPE_CHECKING:
    from .project import Project

__all__ = ["SessionStats", "consumer_stats"]


@dataclass
class SessionStats:
    """One connection's traffic since the last report."""

    requests: int = 0  # frames handled
    appends: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    reads: int = 0
    batches_out: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    errors: int = 0  # ERROR answers

    def take(self) -> dict[str, int] | None:
        """The counts so far (None if nothing happened), and a fresh start."""
        counts = dataclasses.asdict(self)
        if not any(counts.values()):
            return None
        for name in counts:
            setattr(self, name, 0)
        return counts


def consumer_stats(project: Project) -> list[dict[str, Any]]:
    """Per consumer with trackers: its trackers, and how far its slowest segment is behind the
    newest message of its log, in milliseconds of index time (None before it stored any)."""
    out: list[dict[str, Any]] = []
    for (log_name, consumer), cluster in project.cluster_items():
        if not cluster.trackers:
            continue
        newest = project.last_index(log_name)
        positions = project.positions.get(log_name, consumer)
        stored = positions[positions != UNSET]
        behind_ms = None
        if len(stored) and newest:
            behind_ms = max(0, (int(newest) >> 16) - (int(np.min(stored)) >> 16))
        out.append({
            "log": log_name, "consumer": consumer, "trackers": len(cluster.trackers),
            "behind_ms": behind_ms,
        })
    return out
