"""One client connection: frames in, answers out (docs/protocol.md).

Frames are found many per call by the compiled parser over a receive buffer that asyncio fills
in place (BufferedProtocol). An APPEND goes from that buffer into the log in one call, with no
copy in Python; a READ is answered at once or parked until messages come (reads.py), and its
batch leaves as the log's own record bytes. Backpressure: past `connection_buffer` unsent bytes
the session stops reading its socket and leaves the requests it has not answered yet in its
buffer; reads also wait while the whole server is past `server_buffer`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import sqlite3
import struct
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fluxcore._ext import _proto
from fluxcore.errors import CorruptLogError, LogFullError, RecordTooLargeError
from fluxcore.protocol import (
    FLAG_RESEND,
    PROTOCOL_VERSION,
    ErrorCode,
    FrameError,
    Guarantee,
    MessageType,
    Op,
    ProtocolError,
    check_name,
    decode_control,
    encode_control,
    log_name,
)

from .buffers import MAX_HELLO_FRAME, SMALL_BUFFER
from .event_ops import EVENT_BODY_HANDLERS, EVENT_HANDLERS
from .index_read_ops import INDEX_READ_HANDLERS
from .metrics import SessionStats
from .reads import Deadlines, PendingRead, ReadParams, TypeFilter
from .requests import MAX_INDEX, BodyHandler, ControlHandler, log_for
from .requests import field as _field
from .requests import message_type as _message_type
from .retention_ops import RETENTION_HANDLERS
from .schedule_ops import SCHEDULE_BODY_HANDLERS, SCHEDULE_HANDLERS
from .search import SEARCH_HANDLERS
from .tracking_ops import TRACKING_HANDLERS, store_position
from .value_ops import VALUE_HANDLERS
from .web import HTTP_METHODS, MAX_HEAD, HttpError, http_response, parse_http

if TYPE_CHECKING:
    from .app import Server
    from .project import Project
    from .tracking import Cluster

__all__ = ["Session"]

logger = logging.getLogger("fluxcore.server")

_FRAME_HEADER = 12
_REQUEST_ID = struct.Struct("<I")  # at offset 8 of a frame
_SHRINK_AFTER_S = 1.0  # a grown receive buffer unused this long goes back to the small size
_REFUSED_TIMEOUT_S = 1.0  # a connection refused for want of descriptors: closed this soon
_TEXT = [("Content-Type", "text/plain")]


class _ReadRequest:
    """A tracker's READ as last checked: its fields (but store_position and last_index), the
    types of their values, and what they mean."""

    __slots__ = ("kinds", "params", "purge_timeout", "request", "single_tracker", "type_filter")

    def __init__(self, request: dict[str, Any], kinds: list[type], params: ReadParams,
                 single_tracker: bool, purge_timeout: float | None,
                 type_filter: TypeFilter | None) -> None:
        self.request = request
        self.kinds = kinds
        self.params = params
        self.single_tracker = single_tracker
        self.purge_timeout = purge_timeout
        self.type_filter = type_filter


_READS_SEEN = 64  # trackers per connection whose last READ is remembered


class Session(asyncio.BufferedProtocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        self.session_id = uuid.uuid4().hex
        self.transport: asyncio.Transport | None = None
        self.project: Project | None = None
        self.client_id = ""
        self.client_name = ""
        self.closed = False
        self._buf = bytearray(SMALL_BUFFER)  # grows for a large frame (server/buffers.py)
        self._start = 0
        self._end = 0
        self._awaiting_memory = False  # reading paused until the receive budget has room
        self._large_used_at = 0.0
        self._shrink_timer: asyncio.TimerHandle | None = None
        self._writable = True  # false while the client is not reading its answers
        self.pending_acks: set[asyncio.Task[None]] = set()  # acks waiting for a sync
        self._type_filters: dict[str, TypeFilter] = {}
        self._reads_seen: dict[str, _ReadRequest] = {}  # by tracker id
        self.reads: set[PendingRead] = set()  # parked READs of this connection
        self.deadlines = Deadlines(self.reads)  # when each of them gets its empty batch
        # The clusters this connection's trackers joined: what its end has to leave, and only
        # that (no scan of every cluster of the project per closed connection).
        self.clusters: dict[tuple[str, str], Cluster] = {}
        self.stats = SessionStats()
        self.reported_at = time.monotonic()  # when `stats` was last written to METRICS
        self._http = False  # this connection speaks HTTP (a health check, a web request)
        self._web_id: str | None = None  # the source of its WEBREQUEST, once sent
        self._web_project: Project | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._blocked_reads: set[PendingRead] = set()  # ready to answer once writable
        self._refused = False  # accepted into the descriptor reserve: only /health is served
        # The idle check (check_idle): bytes received so far, and what it saw last time.
        self.heard = 0
        self._heard_seen = 0
        self._heard_at = time.monotonic()
        self._unsent_seen = 0
        self._socket_fd = -1  # a plain TCP socket's: shared frames are written to it directly

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport = self.transport
        transport.set_write_buffer_limits(high=self.config.connection_buffer)
        self.server.sessions.add(self)
        # A connection must say who it is (or finish its HTTP request) in time: one that
        # never does would hold its socket and buffer for good.
        timeout = self.config.hello_timeout_s
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._socket_fd = sock.fileno()
        descriptors = self.server.descriptors
        if sock is not None and not descriptors.connection_allowed(sock.fileno()):
            # In the reserve: a health check is answered, anything else refused, soon.
            if not descriptors.hold_refused():
                self.closed = True
                transport.close()  # too many waiting for their answer: the reserve comes first
                return
            self._refused = True
            timeout = min(timeout, _REFUSED_TIMEOUT_S)
        self._hello_timer = asyncio.get_running_loop().call_later(timeout, self._no_hello)

    def _no_hello(self) -> None:
        if self.closed or self.project is not None or self._web_id is not None:
            return
        if self._http:
            self._http_answer(http_response(408, _TEXT, b"the request did not come in time"))
        elif self._refused:
            self._refuse(0)
        else:
            self._fail(0, ErrorCode.AUTH,
                       f"no HELLO within {self.config.hello_timeout_s:g} s of connecting")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._refused:
            self.server.descriptors.release_refused()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._shrink_timer is not None:
            self._shrink_timer.cancel()
        self.server.receive_budget.release(self)
        if self.transport is not None:
            self.server.unsent.forget(self.transport)
        if self._web_id is not None and self._web_project is not None:
            self._web_project.web.forget(self._web_id)
        self._writable = True
        for read in list(self.reads):
            read.cancel()
        self.deadlines.close()
        self.server.session_closed(self)

    def pause_writing(self) -> None:
        # The client does not keep up: stop reading its requests until the buffer drains.
        self._writable = False
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable = True
        blocked, self._blocked_reads = self._blocked_reads, set()
        for read in blocked:
            read.wake()
        if self.closed or self.server.stopping:
            return
        if self._start < self._end:
            self._process()  # the requests held back while the client was not reading
        if self.transport is not None and self._writable and not self._awaiting_memory:
            self.transport.resume_reading()

    # -- the receive buffer: small, grown for what has arrived of a large frame ---------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._end == len(self._buf):
            if self._start > 0:
                # Move the partial frame to the front. Slice assignment of equal length does not
                # resize, which a bytearray with a live view (asyncio's) would refuse.
                pending = self._end - self._start
                self._buf[:pending] = self._buf[self._start : self._end]
                self._start, self._end = 0, pending
            else:  # not reached: _fit leaves room or pauses reading; never hand out nothing
                self._replace(len(self._buf) + SMALL_BUFFER)
        return memoryview(self._buf)[self._end :]

    def _fit(self, wanted: int) -> None:
        """After the complete frames are answered: room for the incomplete one, `wanted`
        bytes of buffer from its start, granted by the server's receive budget first. Without
        a grant the socket is not read until there is one (granted())."""
        if wanted <= SMALL_BUFFER:
            if len(self._buf) > SMALL_BUFFER and self._shrink_timer is None:
                self._shrink_timer = asyncio.get_running_loop().call_later(
                    _SHRINK_AFTER_S, self._shrink)
            return
        self._large_used_at = time.monotonic()
        if not self.server.receive_budget.request(self, wanted - SMALL_BUFFER):
            self._awaiting_memory = True
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._make_room(wanted)

    def _make_room(self, wanted: int) -> None:
        if self._end < len(self._buf) or wanted <= len(self._buf):
            return  # room left, or get_buffer makes some by moving the frame to the front
        # Double with what arrives, never past the grant: a length announced is not memory.
        self._replace(min(2 * len(self._buf), wanted))

    def _replace(self, size: int) -> None:
        # A new buffer, never a resize: asyncio may still hold a view of the old one.
        fresh = bytearray(size)
        pending = self._end - self._start
        fresh[:pending] = self._buf[self._start : self._end]
        self._buf, self._start, self._end = fresh, 0, pending

    def granted(self) -> None:
        """The receive budget has room for the frame this connection waits to read."""
        self._awaiting_memory = False
        if self.closed:
            self.server.receive_budget.release(self)
            return
        self._make_room(SMALL_BUFFER + self.server.receive_budget.held(self))
        if self.transport is not None and self._writable and not self.server.stopping:
            self.transport.resume_reading()

    def _shrink(self) -> None:
        self._shrink_timer = None
        if self.closed or len(self._buf) <= SMALL_BUFFER:
            return
        idle = time.monotonic() - self._large_used_at
        if idle < _SHRINK_AFTER_S or self._end - self._start > SMALL_BUFFER:
            self._shrink_timer = asyncio.get_running_loop().call_later(
                max(_SHRINK_AFTER_S - idle, 0.05), self._shrink)
            return
        self._replace(SMALL_BUFFER)
        self.server.receive_budget.release(self)

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self.heard += nbytes
        if self.project is None and (
                self._http or bytes(self._buf[self._start : self._start + 4]) in HTTP_METHODS):
            self._on_http()
            return
        self._process()

    def _process(self) -> None:
        """Answers the complete frames received, until the client stops taking answers."""
        limit, end, length = self.config.max_frame, self._end, 0
        before_hello = self.project is None
        if before_hello:
            # Only the first frame is looked at, and it must fit the small buffer: nobody
            # unknown makes it grow. Frames sent right behind a HELLO are read after it.
            limit = MAX_HELLO_FRAME - 4
            if end - self._start >= 4:
                (length,) = struct.unpack_from("<I", self._buf, self._start)
                end = min(end, self._start + 4 + length)
        try:
            frames, consumed, needed = _proto.frame_scan(self._buf, self._start, end, limit)
        except FrameError as exc:
            message = str(exc)
            if before_hello and length > limit:
                message = f"frame length {length} is over {limit}, the limit before HELLO"
            self._fail(0, ErrorCode.BAD_FRAME, message)
            return
        for op, flags, request_id, body_start, body_end in frames:
            if not self._writable:
                # The client does not read its answers: leave the rest of its requests where
                # they are (reading from its socket is paused too) until it catches up.
                self._start = body_start - _FRAME_HEADER
                return
            self._dispatch(op, flags, request_id, body_start, body_end)
            if self.closed:
                return
        self._start = consumed
        if self._start == self._end:
            self._start = self._end = 0
        elif before_hello and self.project is not None:
            self._process()  # what came behind the HELLO, under the limits of a known client
            return
        self._fit(max(needed, self._end - self._start))

    # -- sending -----------------------------------------------------------------------------

    def send(self, frame: bytes | bytearray) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(frame)
            self.server.unsent.wrote(self.transport)

    def send_control(self, op: Op, request_id: int, value: Any) -> None:
        body = encode_control(value)
        self.send(_proto.frame_header(op, request_id, len(body)) + body)

    def send_error(self, request_id: int, code: str, message: str) -> None:
        self.stats.errors += 1
        self.send_control(Op.ERROR, request_id, {"code": str(code), "message": message})

    def delivered(self, frame: bytes | bytearray, count: int) -> None:
        """A READ's batch of `count` messages goes out."""
        stats = self.stats
        stats.batches_out += 1
        stats.messages_out += count
        stats.bytes_out += len(frame)
        self.send(frame)

    @property
    def socket_fd(self) -> int:
        """The descriptor of a plain TCP connection (a frame shared by parked reads is written
        to it directly: _proto.frame_send_each), -1 for TLS."""
        return self._socket_fd

    def send_rest(self, frame: bytes | bytearray, request_id: int, written: int) -> None:
        """What the socket did not take of a frame written to it directly (`written` bytes of
        it), with `request_id` in place of the frame's own, through the transport."""
        rest = bytearray(frame)
        _REQUEST_ID.pack_into(rest, 8, request_id)
        self.send(rest[written:])

    def _fail(self, request_id: int, code: str, message: str) -> None:
        """An error after which the stream cannot be trusted: answer, then close."""
        logger.info("closing session %s (%s): %s: %s", self.session_id, self.client_name,
                    code, message)
        self.send_error(request_id, code, message)
        self.close()

    def check_idle(self, now: float, timeout: float, stalled: bool = False) -> None:
        """Closes a connection that said HELLO and was not heard from for `timeout` seconds
        (a half-open connection, a hung client); pings it after a third of that. A client
        that takes answers waiting for it (its write buffer shrinks) is there too: while the
        server does not read its socket (backpressure) nothing else can come from it.
        `stalled`: the server itself could not run for a while; count the client as heard."""
        if self.closed or self.project is None or self.transport is None:
            return
        unsent = self.transport.get_write_buffer_size()
        if stalled or self.heard != self._heard_seen or unsent < self._unsent_seen:
            self._heard_seen = self.heard
            self._heard_at = now
        self._unsent_seen = unsent
        silent = now - self._heard_at
        if silent >= timeout:
            self._fail(0, ErrorCode.IDLE, f"nothing heard from this connection for "
                       f"{silent:.1f} s (idle_timeout_s {timeout:g}); PING is answered by PONG")
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # close() would wait for a peer that takes nothing
        elif silent >= timeout / 3:
            self.send(_proto.frame_header(Op.PING, 0, 0))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    # -- HTTP: the health check and web requests (server/web.py) ---------------------------

    def _on_http(self) -> None:
        """An HTTP connection: one request, answered, then closed."""
        self._http = True
        if self._web_id is not None or self.closed:
            return  # answered or waiting: the rest of the stream is ignored
        try:
            parsed = parse_http(memoryview(self._buf)[self._start : self._end],
                                self.config.max_frame)
        except HttpError as exc:
            self._http_answer(http_response(exc.status, _TEXT, str(exc).encode()))
            return
        if parsed is None:  # more to come
            if self._end == len(self._buf):
                self._fit(min(2 * len(self._buf), self.config.max_frame + MAX_HEAD))
            return
        request, _length = parsed
        head = request.method == "HEAD"
        if request.path == "/health":
            status, body = (503, b"Unavailable") if self.server.stopping else (200, b"Healthy")
            self._http_answer(http_response(status, _TEXT, body, head))
        elif self.server.stopping:
            self._http_answer(http_response(503, _TEXT, b"the server is stopping", head))
        elif self._refused:
            message = str(self.server.descriptors.refuse("HTTP request refused"))
            self._http_answer(http_response(503, _TEXT, message.encode(), head))
        elif self.config.web_project is None:
            self._http_answer(http_response(
                404, _TEXT, b"no web proxy here (the server has no web_project)", head))
        else:
            self._web_id = f"fluxcore-web-{self.session_id}"
            if self.transport is not None:
                self.transport.pause_reading()
            self._web_project = self.server.project(self.config.web_project)
            self._web_project.web.request(self._web_id, request, self._http_answer)

    def _http_answer(self, response: bytes) -> None:
        self.send(response)
        self.close()

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, op: int, flags: int, request_id: int, start: int, end: int) -> None:
        self.stats.requests += 1
        try:
            if self.project is None:
                if op != Op.HELLO:
                    self._fail(request_id, ErrorCode.AUTH, "the first frame must be HELLO")
                    return
                self._on_hello(request_id, self._control(start, end))
                return
            if op == Op.APPEND:
                self._on_append(request_id, flags, start, end)
            elif op == Op.READ:
                self._on_read(request_id, self._control(start, end))
            elif op == Op.PING:
                self.send(_proto.frame_header(Op.PONG, request_id, 0))
            elif op == Op.PONG:
                pass  # the answer to our PING: that it came is all check_idle needs
            elif op in _BODY:
                _BODY[op](self, request_id, start, end)
            elif op in _CONTROL:
                answer = _CONTROL[op](self, request_id, self._control(start, end))
                if isinstance(answer, bytes):
                    self.send(answer)
                elif answer is None:
                    pass  # the request asked for no answer
                else:
                    self.send_control(Op.RESULT, request_id, answer)
            elif op == Op.HELLO:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "HELLO was already sent")
            else:
                self.send_error(request_id, ErrorCode.UNKNOWN_OP, f"unknown operation {op}")
        except ProtocolError as exc:
            self.send_error(request_id, exc.code, exc.message)
        except FrameError as exc:
            self.send_error(request_id, ErrorCode.BAD_FRAME, str(exc))
        except RecordTooLargeError as exc:
            self.send_error(request_id, ErrorCode.TOO_LARGE, str(exc))
        except LogFullError as exc:
            logger.error("disk full: %s", exc)
            self.send_error(request_id, ErrorCode.UNAVAILABLE, str(exc))
        except CorruptLogError as exc:  # a damaged record is never sent
            logger.error("%s", exc)
            self.send_error(request_id, ErrorCode.UNAVAILABLE, str(exc))
        except sqlite3.OperationalError as exc:  # a full disk or an I/O error: nothing stored
            logger.error("a store of %s failed: %s", self.project.name if self.project else "?",
                         exc)
            self.send_error(request_id, ErrorCode.UNAVAILABLE, f"the store failed ({exc}); "
                            "nothing of the request was stored")
        except (ValueError, TypeError, UnicodeDecodeError, OverflowError) as exc:
            self.send_error(request_id, ErrorCode.BAD_REQUEST, str(exc))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # refused (descriptors.py) or hit
                logger.error("out of open files in session %s: %s", self.session_id, exc)
                self.send_error(request_id, ErrorCode.UNAVAILABLE, str(exc))
            else:
                logger.exception("internal error in session %s", self.session_id)
                self.send_error(request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug of ours: tell the client, keep serving the others
            logger.exception("internal error in session %s", self.session_id)
            self.send_error(request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    def _control(self, start: int, end: int) -> dict[str, Any]:
        return decode_control(bytes(self._buf[start:end]))

    @property
    def buffer(self) -> bytearray:
        """The receive buffer: the bodies of the frames being answered are slices of it."""
        return self._buf

    def _spawn_ack(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.pending_acks.add(task)
        task.add_done_callback(self._ack_done)

    def send_when_durable(self, log: Any, index: int, request_id: int, answer: bytes) -> None:
        """Sends `answer` once `log` is synced up to `index` (an error instead if the sync
        fails): what an fsync "always" server promises for a STORED request."""
        self._spawn_ack(self._ack_when_durable(log, index, request_id, answer))

    def _ack_done(self, task: asyncio.Task[None]) -> None:
        self.pending_acks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("acknowledging an append failed", exc_info=task.exception())

    # -- operations --------------------------------------------------------------------------

    def _refuse(self, request_id: int) -> None:
        self._fail(request_id, ErrorCode.UNAVAILABLE,
                   str(self.server.descriptors.refuse("connection refused")))

    def _on_hello(self, request_id: int, req: dict[str, Any]) -> None:
        if self._refused:
            self._refuse(request_id)
            return
        client_id = _field(req, "client_id", str)
        client_name = _field(req, "client_name", str)
        project = req.get("project", "public")
        if _field(req, "protocol", int, PROTOCOL_VERSION) != PROTOCOL_VERSION:
            self._fail(request_id, ErrorCode.BAD_REQUEST, "unsupported protocol version")
            return
        if not client_id or len(client_id) > 200 or len(client_name) > 200:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "client_id must be 1-200 characters")
        check_name("project", project)
        if not self.config.tokens.check(project, req.get("token")):
            self._fail(request_id, ErrorCode.AUTH, f"wrong or missing token for project "
                       f"{project!r}")
            return
        self.client_id, self.client_name = client_id, client_name
        self.project = self.server.project(project)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self.send_control(Op.WELCOME, request_id, {
            "server": "fluxcore", "version": self.server.version, "protocol": PROTOCOL_VERSION,
            "session": self.session_id,
        })
        self.server.record_metric(self.project, "connect", self.metric_body())

    def metric_body(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "client_name": self.client_name,
                "session": self.session_id, "timestamp": int(time.time() * 1000)}

    def _log_for(self, req: dict[str, Any]) -> tuple[MessageType, str]:
        return log_for(req)

    def _on_append(self, request_id: int, flags: int, start: int, end: int) -> None:
        assert self.project is not None
        type_code, guarantee, topic, offsets, segments, first_id = _proto.append_parse(
            self._buf, start, end)
        message_type = _message_type(type_code)
        if message_type is MessageType.NOTIFICATION:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "notifications are read from the "
                                "event log; append events instead")
        if message_type is MessageType.SCHEDULE:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "schedule messages with SCHEDULE (op "
                                f"{int(Op.SCHEDULE)}): the server appends them at their deadline")
        if guarantee > Guarantee.STORED:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown guarantee {guarantee}")
        name = log_name(message_type, topic)
        log = self.project.log(name)
        if flags & FLAG_RESEND and first_id is not None:
            self._on_resend(request_id, guarantee, log, name, first_id, offsets, segments)
            return
        indexes = log.append_buffer(self._buf, offsets, segments=segments)
        self.project.appended(name)
        stats = self.stats
        stats.appends += 1
        stats.messages_in += len(indexes)
        stats.bytes_in += end - start
        if not len(indexes):
            if guarantee == Guarantee.STORED:
                self.send(self._ack(request_id, 0, 0))
            return
        if first_id is not None:
            self.server.recent_appends(self.client_id)[first_id] = (
                (int(indexes[0]), len(indexes)),)
        if guarantee != Guarantee.STORED:
            return
        ack = self._ack(request_id, int(indexes[0]), len(indexes))
        if self.config.fsync == "always":
            self._spawn_ack(self._ack_when_durable(log, int(indexes[-1]), request_id, ack))
        else:
            self.send(ack)

    def _on_resend(self, request_id: int, guarantee: int, log: Any, name: str,
                   first_id: bytes, offsets: Any, segments: Any) -> None:
        """An APPEND sent before on a connection that was lost before its ACK came. We may
        have stored all of it, none of it, or, if the server died in the middle of the append,
        its first messages: the log does not make a batch all-or-nothing. So the log (or our
        memory of this client's last appends) says which messages are stored, and only the
        missing ones are appended, in order: every message ends up stored exactly once, and
        the ACK names the index of each (one range per run of consecutive indexes).

        Chosen over making an append all-or-nothing across a crash: that needs a mark on each
        record, readers (in other processes too) that hold a batch back until its last record
        is written, and a recovery that cuts a batch spread over several segment files. The
        publisher, which alone knows where its batch ends, can settle it exactly at no cost
        to appends that are not resent."""
        assert self.project is not None
        recent = self.server.recent_appends(self.client_id)
        ranges = recent.get(first_id)
        if ranges is None:  # not in memory (we restarted, or it is old): look in the log
            sent_ms = struct.unpack_from("<q", self._buf, int(offsets[0]) + 24)[0]
            found, stored = _stored_runs(log, self._buf, offsets, sent_ms)
            if stored < len(offsets) - 1:
                indexes = log.append_buffer(self._buf, offsets[stored:],
                                            segments=segments[stored:])
                self.project.appended(name)
                self.stats.appends += 1
                self.stats.messages_in += len(indexes)
                self.stats.bytes_in += int(offsets[-1] - offsets[stored])
                found.append((int(indexes[0]), len(indexes)))
            ranges = recent[first_id] = tuple(found)
        if guarantee != Guarantee.STORED:
            return
        body = b"".join(struct.pack("<QI", first, count) for first, count in ranges)
        ack = _proto.frame_header(Op.ACK, request_id, len(body)) + body
        if self.config.fsync == "always":  # also what this process stored before the loss
            last = max(first + count - 1 for first, count in ranges)
            self._spawn_ack(self._ack_when_durable(log, last, request_id, ack))
        else:
            self.send(ack)

    @staticmethod
    def _ack(request_id: int, first_index: int, count: int) -> bytes:
        return _proto.frame_header(Op.ACK, request_id, 12) + struct.pack("<QI", first_index, count)

    async def _ack_when_durable(self, log: Any, index: int, request_id: int, ack: bytes) -> None:
        # Group commit: whichever sync runs covers every append waiting for it.
        try:
            await self.server.sync_log(log, index)
        except OSError as exc:  # in the log, but not known to be on disk: no ack
            logger.error("sync of %s failed: %s", log.path, exc)
            self.send_error(request_id, ErrorCode.UNAVAILABLE, f"stored but not synced: {exc}")
            return
        self.send(ack)

    def _on_read(self, request_id: int, req: dict[str, Any]) -> None:
        assert self.project is not None
        self.stats.reads += 1
        project = self.project
        # What changes from one READ of a tracker to its next: the position it stores and,
        # for a reader that keeps its own index, that index. The rest is checked once per
        # tracker and reused while it comes back the same (same keys, values and their types).
        store = req.pop("store_position", None)
        last_index = req.pop("last_index", None)
        if last_index is not None and type(last_index) is not int:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'last_index' has the wrong type "
                                f"({type(last_index).__name__})")
        if last_index is not None and not 0 <= last_index < MAX_INDEX:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"last_index must be an int from 0 to {MAX_INDEX - 1}")
        if store is not None and type(store) is not list:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'store_position' has the wrong "
                                f"type ({type(store).__name__})")
        tracker_id = req.get("tracker")
        kinds = list(map(type, req.values()))
        seen = self._reads_seen.get(tracker_id) if type(tracker_id) is str else None
        if seen is not None and seen.kinds == kinds and seen.request == req:
            read = seen
        else:
            read = self._read_request(req, kinds)
            if len(self._reads_seen) >= _READS_SEEN:
                self._reads_seen.clear()
            self._reads_seen[read.params.tracker_id] = read
        params = read.params
        if store is not None:  # the position after the tracker's previous batch
            store_position(project, params.log_name, params.consumer, store[:2],
                           store[2] if len(store) == 3 else -1)
        project.log(params.log_name)  # created now: refused (max_logs, descriptors) before parking
        cluster = project.cluster(params.log_name, params.consumer, read.single_tracker)
        self.clusters[(params.log_name, params.consumer)] = cluster
        tracker = cluster.enter(params.tracker_id, self.session_id, read.purge_timeout)
        PendingRead(self, request_id, params, last_index, project, cluster, tracker,
                    read.type_filter).start()

    def _read_request(self, req: dict[str, Any], kinds: list[type]) -> _ReadRequest:
        """A READ's fields (but its store_position and last_index), checked."""
        message_type, name = self._log_for(req)
        consumer = _field(req, "consumer", str)
        tracker_id = _field(req, "tracker", str)
        max_size = _field(req, "max_size", int, 1024)
        if not 0 < max_size <= self.config.max_read_size:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"max_size must be 1..{self.config.max_read_size}")
        ignore_segment = bool(_field(req, "ignore_segment", bool, False))
        client_index = bool(_field(req, "client_index", bool, False))
        if message_type is MessageType.NOTIFICATION:
            ignore_segment = client_index = True
        params = ReadParams(
            log_name=name, consumer=consumer, tracker_id=tracker_id, max_size=max_size,
            timeout=max(0, _field(req, "max_timeout_ms", int, 10_000)) / 1000.0,
            type_filter=_field(req, "type_filter", str, None),
            filter_target=bool(_field(req, "filter_target", bool, False)),
            ignore_segment=ignore_segment, client_index=client_index)
        single = bool(_field(req, "single_tracker", bool, False))
        purge_ms = _field(req, "purge_timeout_ms", int, None)
        type_filter = self._type_filter(params.type_filter) if params.type_filter else None
        return _ReadRequest(req, kinds, params, single,
                            None if purge_ms is None else purge_ms / 1000.0, type_filter)

    def _type_filter(self, pattern: str) -> TypeFilter:
        found = self._type_filters.get(pattern)
        if found is None:
            if len(self._type_filters) > 100:
                self._type_filters.clear()
            try:
                found = self._type_filters[pattern] = TypeFilter(pattern)
            except re.error as exc:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad type_filter: {exc}") from None
        return found

    @property
    def writable(self) -> bool:
        """False while the client does not read its answers (the socket's buffer is full)."""
        return self._writable

    def can_send(self) -> bool:
        """False while this connection or the whole server has too much unsent."""
        return self._writable and not self.server.over_buffer()

    def when_writable(self, read: PendingRead) -> None:
        if not self._writable:
            self._blocked_reads.add(read)
        else:  # the server as a whole is over its bound: look again shortly
            asyncio.get_running_loop().call_later(0.005, read.wake)


RESEND_SEARCH_MS = 10_000  # clock skew between client and server tolerated by the search


def _stored_runs(log: Any, buf: bytearray, offsets: Any, sent_ms: int
                 ) -> tuple[list[tuple[int, int]], int]:
    """Which messages of a resent APPEND (message i is buf[offsets[i]:offsets[i + 1]]) the
    log has, found by message id from shortly before the time the client says it sent them.
    An append stores a prefix of its messages and a resend appends what is missing after the
    stored ones, so the stored ones are messages 0 to `stored` - 1, in log order, in one or
    more runs. Returns ([(first index, count), ...] of those runs, stored)."""
    total = len(offsets) - 1
    runs: list[tuple[int, int]] = []
    stored = 0
    after = max(((sent_ms - RESEND_SEARCH_MS) << 16) - 1, 0)
    while stored < total:
        batch = log.read(after, max_count=65536)
        position = 0
        while stored < total:
            position, count = _proto.find_stored_run(batch, position, buf, offsets, stored)
            if position < 0:
                break
            indexes = batch.indexes[position : position + count]
            # Records next to each other in the log, yet stored by two appends (before and
            # after a restart), do not have consecutive indexes: one range each.
            for part in np.split(indexes, np.flatnonzero(np.diff(indexes) != 1) + 1):
                first = int(part[0])
                if runs and sum(runs[-1]) == first:  # a run that went on into this batch
                    runs[-1] = (runs[-1][0], runs[-1][1] + len(part))
                else:
                    runs.append((first, len(part)))
            stored += count
            position += count
        if not len(batch) and batch.next_after == after:
            break  # the end of the log
        after = batch.next_after
    return runs, stored


_CONTROL: dict[int, ControlHandler] = {
    **TRACKING_HANDLERS,
    **INDEX_READ_HANDLERS,
    **EVENT_HANDLERS,
    **RETENTION_HANDLERS,
    **SCHEDULE_HANDLERS,
    **VALUE_HANDLERS,
    **SEARCH_HANDLERS,
}

# The ops whose body is binary, not a control map.
_BODY: dict[int, BodyHandler] = {
    **EVENT_BODY_HANDLERS,
    **SCHEDULE_BODY_HANDLERS,
}
