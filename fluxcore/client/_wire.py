"""What the sync and the asyncio client share: building frames, reading answers, and the state
of a connection that does not depend on how its bytes move (request ids, messages ids)."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from fluxcore._ext import _proto
from fluxcore._ext._log import segment_of
from fluxcore._ext._proto import Message
from fluxcore.protocol import (
    FLAG_RESEND,
    PROTOCOL_VERSION,
    ErrorCode,
    Guarantee,
    MessageType,
    Op,
    ProtocolError,
    decode_control,
    decode_record,
    encode_control,
    encode_metadata,
)

__all__ = [
    "FLAG_RESEND",
    "BatchReply",
    "Codec",
    "ConcurrencyError",
    "Relationship",
    "RequestError",
    "Revisions",
    "Scheduled",
    "WebResponse",
    "parse_address",
    "unix_path_of",
]

logger = logging.getLogger("fluxcore.client")
RESULT_CONSUMER_SUFFIX = "_$request-handler"
FRAME_HEADER_SIZE = 12


class RequestError(Exception):
    """The handler of a request failed; its error message is the text of this exception."""

    def __init__(self, message: str, result: Message) -> None:
        super().__init__(message)
        self.result = result


class ConcurrencyError(ProtocolError):
    """APPEND_EVENTS with an expected sequence found the stream moved on: another writer
    appended first, and nothing of this request was stored."""


class ConnectionLost(ConnectionError):
    """The connection to the server is gone and could not be made again."""


class Backoff:
    """The waits between attempts to connect again: none after a connection that had lasted
    `stable_s`, then 0.05 s doubling up to 2 s. A connection that breaks sooner (a server that
    drops each one after HELLO, say) does not start the series afresh: it goes on from where
    it was, so that a failing server is not hammered."""

    def __init__(self, first: float = 0.05, most: float = 2.0, stable_s: float = 1.0) -> None:
        self.first = first
        self.most = most
        self.stable_s = stable_s
        self._delay = 0.0
        self._connected_at = time.monotonic()

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def lost(self) -> None:
        if time.monotonic() - self._connected_at >= self.stable_s:
            self._delay = 0.0

    def wait(self) -> float:
        """Seconds to wait before the next attempt."""
        delay = self._delay
        self._delay = min(max(2 * delay, self.first), self.most)
        return delay


UNIX_PREFIX = "unix:"


def unix_path_of(address: str) -> str | None:
    """The socket path of a 'unix:/path' address (a Unix domain socket), else None."""
    if not address.startswith(UNIX_PREFIX):
        return None
    path = address[len(UNIX_PREFIX):]
    if not path:
        raise ValueError(f"a unix: address names the socket's path, as unix:/run/fluxcore.sock,"
                         f" not {address!r}")
    return path


def parse_address(address: str) -> tuple[str, int]:
    """'host:port', 'tcp://host:port' or '[::1]:port'."""
    if "://" in address:
        address = address.split("://", 1)[1]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be host:port, not {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class BatchReply:
    """A decoded BATCH: the tracker's segment range, the position to store, the messages."""

    __slots__ = ("caught_up", "last_index", "messages", "segment")

    def __init__(self, body: bytes) -> None:
        start, end, caught_up, last_index, messages = _proto.decode_batch(body, 0, len(body))
        self.segment: tuple[int, int] = (start, end)
        self.caught_up: bool = caught_up
        self.last_index: int = last_index
        self.messages: list[Message] = messages


# A payload revision: one for every message, or one per message.
Revisions = int | Sequence[int]


def revision_args(revision: Revisions, count: int) -> tuple[int, Sequence[int] | None]:
    """(revision for all, revisions per message or None) for the frame encoder; a revision
    is an int from 0 to 2**32 - 1."""
    if isinstance(revision, int) and not isinstance(revision, bool):
        if not 0 <= revision <= 0xFFFFFFFF:
            raise ValueError(f"a revision is 0 to 2**32 - 1, not {revision}")
        return revision, None
    if isinstance(revision, (str, bytes)) or not isinstance(revision, Sequence):
        raise TypeError(f"revision is an int or a sequence of ints (one per message), not "
                        f"{type(revision).__name__}")
    if len(revision) != count:
        raise ValueError(f"got {len(revision)} revisions for {count} messages")
    for each in revision:
        if not isinstance(each, int) or isinstance(each, bool):
            raise TypeError(f"a revision is an int, not {type(each).__name__}")
    return 0, revision


# When a scheduled message is due: a datetime, a delay from now, or epoch seconds.
Deadline = datetime | timedelta | float


def deadline_ms(deadline: Deadline) -> int:
    if isinstance(deadline, timedelta):
        return round((time.time() + deadline.total_seconds()) * 1000)
    if isinstance(deadline, datetime):
        return round(deadline.timestamp() * 1000)
    if isinstance(deadline, (int, float)) and not isinstance(deadline, bool):
        return round(deadline * 1000)
    raise TypeError(f"a deadline is a datetime, a timedelta or epoch seconds, not "
                    f"{type(deadline).__name__}")


@dataclass(frozen=True)
class Scheduled:
    """A schedule: its id, its deadline (epoch ms), the message it delivers, and whether it
    has fired (its message is in the SCHEDULE log) or is still pending."""

    schedule_id: str
    deadline_ms: int
    message: Message
    fired: bool = False


_RECORD_HEADER = struct.Struct("<IIQHHI")


def scheduled_from(answer: dict[str, Any] | None) -> Scheduled | None:
    """The GET_SCHEDULE answer as a Scheduled; its message's index is the one it got in the
    log once fired, until then the deadline's."""
    if answer is None:
        return None
    message = bytes(answer["message"])
    length = _RECORD_HEADER.size + len(message)
    fired = answer.get("index")
    index = int(answer["deadline"]) << 16 if fired is None else int(fired)
    record = _RECORD_HEADER.pack(length, 0, index, int(answer["segment"]), 0, 0) + message
    return Scheduled(str(answer["id"]), int(answer["deadline"]), decode_record(record),
                     fired is not None)


def schedule_request(
    codec: Codec,
    payload: bytes,
    deadline: Deadline,
    schedule_id: str | None,
    *,
    payload_type: str,
    key: str | bytes | None,
    metadata: dict[str, str] | None,
    if_absent: bool,
    revision: int = 0,
) -> tuple[str, Callable[[int], bytes]]:
    """The schedule id (a new one unless given) and the SCHEDULE frame for a request id."""
    sid = uuid.uuid4().hex if schedule_id is None else schedule_id
    entry = (sid, deadline_ms(deadline), if_absent)

    def frame_of(request_id: int) -> bytes:
        return codec.schedule(request_id, [entry], [payload], payload_type=payload_type,
                              keys=None if key is None else [key], metadata=metadata,
                              revision=revision)

    return sid, frame_of


def schedule_answer(schedule_id: str, body: bytes) -> str | None:
    """The id if the schedule was stored, None if `if_absent` found one pending."""
    return schedule_id if decode_control(body)["stored"][0] else None


class Relationship(NamedTuple):
    """An entity belongs to an aggregate (of a type)."""

    aggregate_id: str
    aggregate_type: str
    entity_id: str


def relationships_of(body: bytes) -> list[Relationship]:
    return [Relationship(*item) for item in decode_control(body)["relationships"]]


def relationship_lists(items: Iterable[tuple[str, str, str]]) -> list[list[str]]:
    return [[aggregate_id, aggregate_type, entity_id]
            for aggregate_id, aggregate_type, entity_id in items]


def values_request(values: Mapping[str, bytes], if_absent: bool) -> dict[str, Any]:
    """The body of a STORE_VALUES request."""
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError("values map str keys to bytes")
    return {"values": [{"key": k, "value": bytes(v)} for k, v in values.items()],
            "if_absent": if_absent}


def value_answer(body: bytes) -> bytes | None:
    value = decode_control(body)["value"]
    return None if value is None else bytes(value)


def raise_for(op: int, body: bytes) -> None:
    if op == Op.ERROR:
        err = decode_control(body)
        code = str(err.get("code", ErrorCode.INTERNAL))
        kind = ConcurrencyError if code == ErrorCode.CONFLICT else ProtocolError
        raise kind(code, str(err.get("message", "")))


_ACK_RANGE = np.dtype([("first", "<u8"), ("count", "<u4")])


def ack_indexes(body: bytes) -> npt.NDArray[np.uint64]:
    """The index of each message of an acknowledged APPEND, in the order they were sent. An
    ACK is one or more ranges (u64 first index, u32 count); more than one only for a resent
    batch that the server had stored in part before it died (docs/protocol.md)."""
    if len(body) == 12:
        first, count = struct.unpack("<QI", body)
        return np.arange(first, first + count, dtype=np.uint64)
    if not body or len(body) % 12:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"an ACK of {len(body)} bytes is not a "
                            "whole number of 12-byte ranges")
    return np.concatenate([np.arange(int(first), int(first) + int(count), dtype=np.uint64)
                           for first, count in np.frombuffer(body, dtype=_ACK_RANGE)])


class Codec:
    """Frames of one client. Not thread-safe: the sync client holds its send lock around it."""

    def __init__(self, client_id: str, client_name: str, project: str, token: str) -> None:
        self.client_id = client_id
        self.client_name = client_name
        self.project = project
        self.token = token
        # Message ids are unique per client session: 48 random bits and a counter.
        self.id_prefix = f"{os.urandom(6).hex()}-"
        self.id_counter = 0
        self._request_id = 0
        self._message_request_id = 0

    def next_request_id(self) -> int:
        self._request_id = (self._request_id % 0xFFFFFFFF) + 1
        return self._request_id

    def next_message_request_id(self) -> int:
        self._message_request_id += 1
        return self._message_request_id

    def hello(self, request_id: int) -> bytes:
        return self.control(Op.HELLO, request_id, {
            "client_id": self.client_id, "client_name": self.client_name,
            "project": self.project, "token": self.token, "protocol": PROTOCOL_VERSION,
        })

    @staticmethod
    def control(op: Op, request_id: int, value: dict[str, Any]) -> bytes:
        body = encode_control(value)
        return bytes(_proto.frame_header(op, request_id, len(body))) + body

    def append(
        self,
        request_id: int,
        message_type: MessageType,
        payloads: Sequence[bytes],
        *,
        payload_type: str,
        guarantee: Guarantee,
        keys: Sequence[str | bytes] | None = None,
        segments: npt.ArrayLike | None = None,
        topic: str | None = None,
        metadata: dict[str, str] | None = None,
        message_request_id: int = -1,
        target: str | None = None,
        targets: Sequence[str] | None = None,
        request_ids: Sequence[int] | None = None,
        error: bool = False,
        revision: Revisions = 0,
        payload_format: str | None = None,
        payload_types: Sequence[str] | None = None,
    ) -> bytes:
        """An APPEND frame; `revision`: the payload revision of every message, or a sequence
        of one per message."""
        if message_type is MessageType.NOTIFICATION:
            raise ValueError("publish notifications as events: NOTIFICATION reads the event log")
        shared_revision, revisions = revision_args(revision, len(payloads))
        frame, self.id_counter = _proto.encode_append(
            request_id, int(message_type), int(guarantee), topic, payloads, payload_type, keys,
            self.client_id, self.id_prefix, self.id_counter, encode_metadata(metadata),
            int(time.time() * 1000), message_request_id, target, 1 if error else 0,
            shared_revision, payload_format, segments, targets, request_ids, payload_types,
            revisions,
        )
        return bytes(frame)

    def schedule(
        self,
        request_id: int,
        schedules: Sequence[tuple[str, int, bool]],
        payloads: Sequence[bytes],
        *,
        payload_type: str,
        keys: Sequence[str | bytes] | None = None,
        metadata: dict[str, str] | None = None,
        revision: Revisions = 0,
    ) -> bytes:
        """A SCHEDULE frame: (schedule id, deadline ms, if_absent) per payload."""
        append = self.append(0, MessageType.SCHEDULE, payloads, payload_type=payload_type,
                             guarantee=Guarantee.STORED, keys=keys, metadata=metadata,
                             revision=revision)
        control = encode_control({"schedules": [
            {"id": sid, "deadline": deadline, "if_absent": if_absent}
            for sid, deadline, if_absent in schedules
        ]})
        return _with_control(Op.SCHEDULE, request_id, control, append)

    def append_events(
        self,
        request_id: int,
        aggregate_id: str,
        payloads: Sequence[bytes],
        *,
        types: str | Sequence[str],
        metadata: dict[str, str] | None,
        store_only: bool,
        expected_sequence: int | None = None,
        revision: Revisions = 0,
    ) -> bytes:
        """An APPEND_EVENTS frame: the events of one aggregate, routed by its id; with
        `expected_sequence`, only if the stream's last number is that (-1: empty)."""
        append = self.append(
            0, MessageType.EVENT, payloads, payload_type=types if isinstance(types, str) else "",
            payload_types=None if isinstance(types, str) else types, guarantee=Guarantee.STORED,
            segments=np.full(len(payloads), segment_of(aggregate_id), dtype=np.uint8),
            metadata=metadata, revision=revision)
        batch: dict[str, Any] = {
            "aggregate": aggregate_id, "count": len(payloads), "store_only": store_only}
        if expected_sequence is not None:
            batch["expected_sequence"] = expected_sequence
        control = encode_control({"batches": [batch]})
        return _with_control(Op.APPEND_EVENTS, request_id, control, append)

    def read(
        self,
        message_type: MessageType,
        consumer: str,
        tracker: str,
        *,
        topic: str | None,
        max_size: int,
        max_timeout_ms: int,
        type_filter: str | None = None,
        filter_target: bool = False,
        ignore_segment: bool = False,
        client_index: bool = False,
        last_index: int | None = None,
        purge_timeout_ms: int | None = None,
        store: tuple[tuple[int, int], int] | None = None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "type": int(message_type), "topic": topic, "consumer": consumer, "tracker": tracker,
            "max_size": max_size, "max_timeout_ms": max_timeout_ms, "type_filter": type_filter,
            "filter_target": filter_target, "ignore_segment": ignore_segment,
            "client_index": client_index, "last_index": last_index,
            "purge_timeout_ms": purge_timeout_ms,
        }
        if store is not None:  # the position after the previous batch, stored first
            (start, end), index = store
            request["store_position"] = [start, end, index]
        return request


def _with_control(op: Op, request_id: int, control: bytes, append: bytes) -> bytes:
    """A frame whose body is a u32-length-prefixed control map, then an APPEND frame's body."""
    body = struct.pack("<I", len(control)) + control + append[FRAME_HEADER_SIZE:]
    return bytes(_proto.frame_header(op, request_id, len(body))) + body


def log_request(message_type: MessageType, topic: str | None, **fields: Any) -> dict[str, Any]:
    """The body of a control request about one log (docs/protocol.md)."""
    return {"type": int(message_type), "topic": topic, **fields}


def new_client_id() -> str:
    return uuid.uuid4().hex[:16]


def result_consumer(client_name: str) -> str:
    return client_name + RESULT_CONSUMER_SUFFIX


def results_spec(client_name: str) -> ConsumerSpec:
    """The client's own reader of the results of its requests (reference §5): every segment,
    only results addressed to this client, its index kept by the client, from 2 s back."""
    return ConsumerSpec(result_consumer(client_name), MessageType.RESULT, 1, True, None, None,
                        1024, 1000, start_index(2000), None, results=True)


class Settleable(Protocol):
    """What a waiting request is: a concurrent.futures or an asyncio future."""

    def done(self) -> bool: ...
    def set_result(self, result: Message, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


def settle_results(requests: dict[int, Any], messages: list[Message]) -> None:
    """Hands each result to the future of the request it answers (a failed handler's as a
    RequestError); results nobody waits for any more are dropped."""
    for message in messages:
        future: Settleable | None = requests.pop(message.request_id, None)
        if future is None or future.done():
            continue
        if message.is_error:
            future.set_exception(RequestError(message.data.decode(errors="replace"), message))
        else:
            future.set_result(message)


def fail_requests(requests: dict[int, Any], exc: BaseException) -> None:
    """Every waiting request fails with `exc` (its results can no longer come)."""
    for number in list(requests):
        future: Settleable | None = requests.pop(number, None)
        if future is not None and not future.done():
            future.set_exception(exc)


def start_index(ms_ago: int) -> int:
    """The index `ms_ago` milliseconds back: where a fresh reader of results starts."""
    return (int(time.time() * 1000) - ms_ago) << 16


@dataclass(frozen=True)
class WebResponse:
    """What a handler of WEBREQUEST messages may return: the HTTP response (bytes or str alone
    mean status 200)."""

    body: bytes | str = b""
    status: int = 200
    headers: Mapping[str, str] | None = None

    def message(self, codec: Codec, request: Message) -> bytes:
        """The WEBRESPONSE frame answering `request`."""
        body = self.body.encode() if isinstance(self.body, str) else bytes(self.body)
        metadata = {"status": str(self.status), "headers": json.dumps(dict(self.headers or {}))}
        return codec.append(0, MessageType.WEBRESPONSE, [body], payload_type="webresponse",
                            guarantee=Guarantee.SENT, message_request_id=request.request_id,
                            target=request.source, metadata=metadata)


def result_frames(
    codec: Codec,
    done: list[tuple[Message, bytes | WebResponse | None, BaseException | None]],
    web: bool = False,
    types: Sequence[str] | None = None,
) -> tuple[bytes, bytes]:
    """The RESULT (or WEBRESPONSE) frames answering handled requests, and the ERROR-log frames
    of the failures. Sent with the SENT guarantee: the server appends them when it reads them.
    `types`: the payload type of each result (default "result")."""
    results: list[bytes] = []
    errors: list[bytes] = []
    values: list[bytes] = []
    targets: list[str] = []
    request_ids: list[int] = []
    value_types: list[str] = []
    for i, (request, value, exc) in enumerate(done):
        if request.request_id < 0 or not request.source:
            continue
        if exc is not None:
            text = f"{type(exc).__name__}: {exc}".encode()
            errors.append(codec.append(
                0, MessageType.ERROR, [text], payload_type=type(exc).__name__,
                guarantee=Guarantee.SENT, message_request_id=request.request_id,
                target=request.source, error=True))
            if web:
                results.append(WebResponse(text, 500, {"Content-Type": "text/plain"}).message(
                    codec, request))
            else:
                results.append(codec.append(
                    0, MessageType.RESULT, [text], payload_type=type(exc).__name__,
                    guarantee=Guarantee.SENT, message_request_id=request.request_id,
                    target=request.source, error=True))
        elif isinstance(value, WebResponse):
            results.append(value.message(codec, request))
        else:
            values.append(value if value is not None else b"")
            targets.append(request.source)
            request_ids.append(request.request_id)
            value_types.append(types[i] if types is not None else "result")
    if values:  # every result of the batch in one frame, each to its own requester
        results.append(codec.append(
            0, MessageType.RESULT, values, payload_type="result" if types is None else "",
            guarantee=Guarantee.SENT, targets=targets, request_ids=request_ids,
            payload_types=None if types is None else value_types))
    return b"".join(results), b"".join(errors)


def answer_bytes(value: Any) -> bytes:
    """What a request handler returned, as the payload of its result."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a handler of requests must return bytes or str, not {type(value).__name__}")


UNHANDLED = object()  # what a mapping of handlers returns for a type it has no handler for


def dispatcher(handlers: Mapping[str, Callable[[Message], Any]]) -> tuple[
        Callable[[Message], Any], str]:
    """One handler per payload type: the function that picks it, and the type filter that
    brings the consumer only those types."""
    if not handlers:
        raise ValueError("give at least one payload type and its handler")
    table = dict(handlers)

    def dispatch(message: Message) -> Any:
        handler = table.get(message.type)  # none for an untyped message: every filter passes it
        return UNHANDLED if handler is None else handler(message)

    return dispatch, "|".join(re.escape(name) for name in table)


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """What a consumer reads and how: shared by the trackers of the sync and asyncio clients."""

    name: str
    message_type: MessageType
    trackers: int
    batch: bool
    type_filter: str | None
    topic: str | None
    max_size: int
    max_timeout_ms: int
    from_index: int | None
    purge_timeout_ms: int | None
    results: bool = False  # the client's own reader of the results of its requests

    def __post_init__(self) -> None:
        if self.trackers < 1:
            raise ValueError("trackers must be at least 1")
        if self.type_filter is not None:
            try:  # the server's regular expressions are Python's too
                re.compile(self.type_filter)
            except re.error as exc:
                raise ValueError(f"type_filter {self.type_filter!r} is not a regular "
                                 f"expression: {exc}") from None

    @property
    def read_timeout(self) -> float:
        """How long to wait for the answer to a READ: its long poll plus slack."""
        return self.max_timeout_ms / 1000.0 + 30.0

    def tracker_ids(self, client_id: str) -> list[str]:
        return [f"{client_id}/{self.name}/{i}" for i in range(self.trackers)]


class TrackerCursor:
    """Where one tracker is: what its next READ asks for, and the position it still owes the
    server (stored by that next READ, or explicitly when the tracker stops)."""

    def __init__(self, spec: ConsumerSpec, codec: Codec, tracker_id: str) -> None:
        self.spec = spec
        self.codec = codec
        self.tracker_id = tracker_id
        # Readers of results and of notifications keep their index here, not on the server.
        self.own_index = spec.results or spec.message_type is MessageType.NOTIFICATION
        self.last_index = None if spec.from_index is None else max(spec.from_index - 1, 0)
        self.unstored: tuple[tuple[int, int], int] | None = None

    def request(self) -> dict[str, Any]:
        spec = self.spec
        return self.codec.read(
            spec.message_type, spec.name, self.tracker_id, topic=spec.topic,
            max_size=spec.max_size, max_timeout_ms=spec.max_timeout_ms,
            type_filter=spec.type_filter, filter_target=spec.results,
            ignore_segment=spec.results, client_index=self.own_index,
            last_index=self.last_index, purge_timeout_ms=spec.purge_timeout_ms,
            store=self.unstored)

    def advance(self, reply: BatchReply) -> None:
        """After a batch is handled: the READ that carried `unstored` has stored it."""
        self.unstored = None
        if reply.last_index:
            if self.own_index:
                self.last_index = reply.last_index
            else:
                self.unstored = (reply.segment, reply.last_index)


class Answers:
    """The outcome of handling one batch: the results owed to requesters, and the count of
    failures. A handler's failure never stops its tracker."""

    def __init__(self, spec: ConsumerSpec) -> None:
        self.spec = spec
        self.requests = spec.message_type.is_request
        self.done: list[tuple[Message, bytes | WebResponse | None, BaseException | None]] = []
        self.errors = 0

    def handled(self, message: Message, value: Any) -> None:
        if self.requests and value is not UNHANDLED:
            self.done.append((message, self.answer(value), None))

    def answer(self, value: Any) -> bytes | WebResponse:
        if self.spec.message_type is MessageType.WEBREQUEST:
            return value if isinstance(value, WebResponse) else WebResponse(answer_bytes(value))
        return answer_bytes(value)

    def failed(self, message: Message | None, exc: BaseException) -> None:
        """Called from an `except` block: a request's failure goes back to its sender and to
        the ERROR log; any other is logged here."""
        self.errors += 1
        if self.requests and message is not None:
            self.done.append((message, None, exc))
        else:
            logger.exception("handler of %s failed", self.spec.name)

    def frames(self, codec: Codec) -> bytes:
        if not self.done:
            return b""
        results, errors = result_frames(
            codec, self.done, web=self.spec.message_type is MessageType.WEBREQUEST)
        return results + errors
