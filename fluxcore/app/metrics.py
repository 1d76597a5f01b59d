"""Handler metrics: how long each handler took for each message, and each batch a tracker
processed, written to the project's METRICS log where `fluxcore metrics` sums them up.

Per batch, one `HandleMessage` message holds one entry per handled message, as columns (so a
batch of 1,000 costs one METRICS message, not 1,000), and one `ProcessBatch` message describes
the batch. Their data is a msgpack map (docs/protocol.md, "Handler metrics")."""

from __future__ import annotations

import threading
import time

import msgspec

from fluxcore._ext._app import HandlerTimings

__all__ = ["HANDLE_MESSAGE", "PROCESS_BATCH", "BatchMetrics", "HandlerCodes", "Outbox"]

HANDLE_MESSAGE = "HandleMessage"
PROCESS_BATCH = "ProcessBatch"
_encode = msgspec.msgpack.Encoder().encode


class HandlerCodes:
    """(handler, payload type) pairs numbered as a consumer meets them; a HandleMessage
    names each handled message's pair by its number."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self._codes: dict[tuple[str, str], int] = {}

    def code(self, handler: str, payload_type: str) -> int:
        key = (handler, payload_type)
        found = self._codes.get(key)
        if found is None:
            found = self._codes[key] = len(self.pairs)
            self.pairs.append(key)
        return found


class BatchMetrics:
    """The measurements of one batch, gathered while its messages are handled, in compiled
    arrays (fluxcore._ext._app.HandlerTimings): per handled message its pair's code, its
    index and its duration, the time since the previous one was done (or since the batch
    began): one clock reading per message."""

    __slots__ = ("consumer", "handlers", "message_type", "timings")

    def __init__(self, consumer: str, message_type: str, handlers: HandlerCodes,
                 expected: int = 1024) -> None:
        self.consumer = consumer
        self.message_type = message_type
        self.handlers = handlers
        self.timings = HandlerTimings(expected)

    def add(self, handler: str, payload_type: str, index: int, failed: bool) -> None:
        self.timings.add(self.handlers.code(handler, payload_type), index, failed)

    def __len__(self) -> int:
        return len(self.timings)

    def payloads(self, client: str, tracker: str, segment: tuple[int, int],
                 batch_size: int) -> list[tuple[str, bytes]]:
        """(payload type, data) of the METRICS messages of this batch."""
        now = int(time.time() * 1000)
        out = []
        timings = self.timings
        if len(timings):
            pairs = self.handlers.pairs
            out.append((HANDLE_MESSAGE, timings.encode(
                self.consumer, client, self.message_type, now, [h for h, _ in pairs],
                [t for _, t in pairs])))
        out.append((PROCESS_BATCH, _encode({
            "consumer": self.consumer, "client": client, "message_type": self.message_type,
            "tracker": tracker, "segment": list(segment), "batch_size": batch_size,
            "duration_us": timings.elapsed_us(),
            "timestamp": now})))
        return out


class Outbox:
    """Metrics waiting to be sent, so that they go a few batches at a time in one frame
    rather than two small messages after every batch (each send wakes the server, which on a
    busy machine costs the consumer more than measuring did)."""

    def __init__(self, max_entries: int = 20_000, max_age_s: float = 1.0) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._payloads: list[tuple[str, bytes]] = []
        self._entries = 0
        self._since = time.monotonic()

    def add(self, payloads: list[tuple[str, bytes]], entries: int) -> bool:
        """Keeps them; True if it is time to send (enough entries, or old enough)."""
        with self._lock:
            if not self._payloads:
                self._since = time.monotonic()
            self._payloads.extend(payloads)
            self._entries += entries
            return self._entries >= self.max_entries or \
                time.monotonic() - self._since >= self.max_age_s

    def due(self) -> bool:
        with self._lock:
            return bool(self._payloads) and time.monotonic() - self._since >= self.max_age_s

    def take(self) -> list[tuple[str, bytes]]:
        with self._lock:
            out, self._payloads, self._entries = self._payloads, [], 0
            return out
