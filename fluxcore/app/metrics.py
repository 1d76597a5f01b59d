"""Handler metrics: how long each handler took for each message, and each batch a tracker
processed, written to the project's METRICS log where `fluxcore metrics` sums them up.

Per batch, one `HandleMessage` message holds one entry per handled message, as columns (so a
batch of 1,000 costs one METRICS message, not 1,000), and one `ProcessBatch` message describes
the batch. Their data is a msgpack map (docs/protocol.md, "Handler metrics")."""

from __future__ import annotations

import time

import msgspec

__all__ = ["HANDLE_MESSAGE", "PROCESS_BATCH", "BatchMetrics"]

HANDLE_MESSAGE = "HandleMessage"
PROCESS_BATCH = "ProcessBatch"
_encode = msgspec.msgpack.Encoder().encode


class BatchMetrics:
    """The measurements of one batch, gathered while its messages are handled."""

    __slots__ = ("consumer", "entries", "message_type", "started_ns")

    def __init__(self, consumer: str, message_type: str) -> None:
        self.consumer = consumer
        self.message_type = message_type
        # (handler, payload type, index, duration in ns, failed) per handled message
        self.entries: list[tuple[str, str, int, int, bool]] = []
        self.started_ns = time.perf_counter_ns()

    def add(self, handler: str, payload_type: str, index: int, duration_ns: int,
            failed: bool) -> None:
        self.entries.append((handler, payload_type, index, duration_ns, failed))

    def payloads(self, client: str, tracker: str, segment: tuple[int, int],
                 batch_size: int) -> list[tuple[str, bytes]]:
        """(payload type, data) of the METRICS messages of this batch."""
        now = int(time.time() * 1000)
        out = []
        if self.entries:
            handlers, payload_types, indexes, durations, errors = zip(*self.entries,
                                                                      strict=True)
            out.append((HANDLE_MESSAGE, _encode({
                "consumer": self.consumer, "client": client, "message_type": self.message_type,
                "timestamp": now, "handler": handlers, "payload_type": payload_types,
                "index": indexes, "duration_us": [ns // 1000 for ns in durations],
                "exceptional": errors})))
        out.append((PROCESS_BATCH, _encode({
            "consumer": self.consumer, "client": client, "message_type": self.message_type,
            "tracker": tracker, "segment": list(segment), "batch_size": batch_size,
            "duration_us": (time.perf_counter_ns() - self.started_ns) // 1000,
            "timestamp": now})))
        return out
