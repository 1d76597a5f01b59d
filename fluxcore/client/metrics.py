"""Everything connected to a project, from one place: a summary of its METRICS log (written
by the server, docs/protocol.md): who is connected, what each client sent and got, how far
each consumer is behind, and which trackers left."""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgspec
import numpy as np

from fluxcore._ext._proto import Message
from fluxcore.protocol import MessageType

__all__ = ["metrics_summary", "summarize", "summarize_handlers"]

_COUNTS = ("requests", "appends", "messages_in", "bytes_in", "reads", "batches_out",
           "messages_out", "bytes_out", "errors")


class _Reader(Protocol):
    def read_from_index(self, message_type: MessageType, min_index: int,
                        max_size: int = ...) -> list[Message]: ...


def metrics_summary(client: _Reader, since_s: float = 300.0) -> dict[str, Any]:
    """Reads the project's METRICS log from `since_s` seconds back and summarizes it."""
    after = max(int((time.time() - since_s) * 1000), 0) << 16
    messages: list[Message] = []
    while True:
        # A page may hold fewer than asked while more follow (an answer ends near 16 MiB):
        # only an empty one is the end of the log.
        page = client.read_from_index(MessageType.METRICS, after, 10_000)
        if not page:
            return summarize(messages)
        messages.extend(page)
        after = page[-1].index + 1


def summarize(messages: list[Message]) -> dict[str, Any]:
    """Per client: name, whether connected, and its traffic totals; per consumer: the latest
    trackers and lag; trackers gone by reason."""
    clients: dict[str, dict[str, Any]] = {}
    consumers: dict[str, dict[str, Any]] = {}
    trackers_gone: dict[str, int] = {}
    handled: list[dict[str, Any]] = []
    for message in messages:
        if message.source != "fluxcore-server":
            if message.type == "HandleMessage":  # written by fluxcore.app's consumers
                handled.append(msgspec.msgpack.decode(message.data))
            continue
        body = msgspec.msgpack.decode(message.data)
        if message.type in ("connect", "disconnect", "client_stats"):
            entry = clients.setdefault(body["client_id"], {
                "client_name": body.get("client_name", ""), "connected": False,
                **dict.fromkeys(_COUNTS, 0)})
            if message.type == "connect":
                entry["connected"] = True
            elif message.type == "disconnect":
                entry["connected"] = False
            else:
                for name in _COUNTS:
                    entry[name] += int(body.get(name, 0))
        elif message.type == "consumer_stats":
            consumers[f"{body['log']}/{body['consumer']}"] = {
                "trackers": body["trackers"], "behind_ms": body["behind_ms"],
                "at_ms": body.get("timestamp")}
        elif message.type == "disconnect_tracker":
            trackers_gone[body["reason"]] = trackers_gone.get(body["reason"], 0) + 1
    return {"clients": clients, "consumers": consumers, "trackers_gone": trackers_gone,
            "handlers": summarize_handlers(handled)}


def summarize_handlers(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per "consumer/handler" of the HandleMessage metrics: how many messages, how many
    failed, and the 50th and 99th percentile of the time taken, in microseconds."""
    durations: dict[str, list[int]] = {}
    errors: dict[str, int] = {}
    for body in entries:
        keys = [f"{body['consumer']}/{name}" for name in body["handlers"]]
        for code, us, failed in zip(body["handler"], body["duration_us"],
                                    body["exceptional"], strict=True):
            key = keys[code]
            durations.setdefault(key, []).append(us)
            if failed:
                errors[key] = errors.get(key, 0) + 1
    out = {}
    for key, values in sorted(durations.items()):
        arr = np.asarray(values, dtype=np.float64)
        out[key] = {"count": len(values), "errors": errors.get(key, 0),
                    "p50_us": float(np.percentile(arr, 50)),
                    "p99_us": float(np.percentile(arr, 99))}
    return out
