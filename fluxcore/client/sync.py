"""The blocking client: one connection, a reader thread that routes answers to waiting callers,
one thread per tracker, reconnection with backoff (the reader reconnects; a short-lived thread
resends what was not answered while the reader goes on reading)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fluxcore._ext import _proto
from fluxcore._ext._proto import Message
from fluxcore.protocol import (
    DEFAULT_MAX_FRAME,
    ErrorCode,
    FrameError,
    Guarantee,
    MessageType,
    Op,
    ProtocolError,
)

from ._api_sync import ConsumerBase, Operations, Pending, ResultReaderBase
from ._futures import ReplyFuture
from ._wire import (
    ConnectionLost,
    ConsumerSpec,
    RequestError,
    TrackerCursor,
    WebResponse,
    raise_for,
    result_frames,
    settle_results,
)

__all__ = ["Client", "Consumer", "current_batch"]

logger = logging.getLogger("fluxcore.client")

Reply = tuple[int, bytes]
Handler = Callable[[Message], Any]
BatchHandler = Callable[[list[Message]], Any]
T = TypeVar("T")


_current_batch = threading.local()


def current_batch() -> tuple[str, tuple[int, int]] | None:
    """In a handler called by a tracker: (tracker id, its segment range [start, end))."""
    value: tuple[str, tuple[int, int]] | None = getattr(_current_batch, "value", None)
    return value


class Client(Operations):
    """A connection to a fluxcore server. Thread-safe; also a context manager."""

    def __init__(
        self,
        address: str,
        *,
        token: str,
        name: str = "fluxcore-client",
        project: str = "public",
        client_id: str | None = None,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._init_state(address, token, name, project, client_id, reconnect, tls,
                         connect_timeout)
        self._send_lock = threading.Lock()
        self._resender: threading.Thread | None = None  # resends after a reconnect
        self._connected = threading.Event()
        self._sock: socket.socket | None = None
        self._requests: dict[int, concurrent.futures.Future[Message] | ReplyFuture[Message]] = {}
        self._results_lock = threading.Lock()
        self._open_connection()
        self._reader = threading.Thread(target=self._read_loop, name="fluxcore-client-reader",
                                        daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, address: str, **options: Any) -> Client:
        return cls(address, **options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection --------------------------------------------------------------------------

    def _open_connection(self) -> None:
        self._sock = self._handshake()
        self._connected.set()

    def _handshake(self) -> socket.socket:
        """A new connection that said HELLO and got WELCOME."""
        sock = self._connect()
        try:
            if self.unix_path is None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            sock.sendall(self._codec.hello(0))
            op, body = self._read_one(sock)
            raise_for(op, body)
            if op != Op.WELCOME:
                raise ProtocolError("bad_frame", f"expected WELCOME, got op {op}")
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def _connect(self) -> socket.socket:
        if self.unix_path is None:
            return socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._connect_timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _read_one(sock: socket.socket) -> Reply:
        header = _recv_exactly(sock, 12)
        length = int.from_bytes(header[:4], "little")
        if length < 8 or length > DEFAULT_MAX_FRAME:
            raise FrameError(f"bad frame length {length}")
        return header[4], _recv_exactly(sock, length - 8)

    def _read_loop(self) -> None:
        try:
            self._read_frames()
        except Exception as exc:
            # A bug of ours, not a lost connection: nobody would answer the callers any more,
            # so they get the error now and every later call fails at once.
            logger.exception("the reader of %s failed", self.address)
            self._give_up(ConnectionLost(f"the client's reader failed: {exc!r}"))

    def _read_frames(self) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)  # made with buf: receives and frame bodies are sliced from it
        start = end = 0
        while not self._closed:
            sock = self._sock
            try:
                if sock is None:
                    raise ConnectionResetError("not connected")
                if end == len(buf):
                    if start:
                        buf[: end - start] = buf[start:end]
                        start, end = 0, end - start
                    else:
                        buf = buf + bytearray(len(buf))
                        view = memoryview(buf)
                received = sock.recv_into(view[end:])
                if not received:
                    raise ConnectionResetError("the server closed the connection")
                end += received
                frames, start, needed = _proto.frame_scan(buf, start, end, DEFAULT_MAX_FRAME)
                for op, _flags, request_id, body_start, body_end in frames:
                    # One copy per body (buf is reused); a bytearray slice would be a second.
                    self._deliver(op, request_id, bytes(view[body_start:body_end]))
                if start == end:
                    start = end = 0
                elif needed > len(buf) - start:
                    fresh = bytearray(max(needed, 2 * len(buf)))
                    fresh[: end - start] = buf[start:end]
                    buf, view, start, end = fresh, memoryview(fresh), 0, end - start
            except (OSError, FrameError) as exc:
                if self._closed:
                    return
                start = end = 0
                if not self._recover(exc):
                    return

    def _answer_ping(self, request_id: int) -> None:
        # The reader thread never waits for the send lock, nor on a full socket: a sender
        # holding the lock may wait for the server, which may wait for us to read. Whoever
        # holds the lock is sending, and that tells the server we are there just as well.
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            sock = self._sock
            if sock is None:
                return
            writable = select.poll()  # not select(): it fails for descriptors past 1023
            writable.register(sock, select.POLLOUT)
            if writable.poll(0):
                sock.sendall(_proto.frame_header(Op.PONG, request_id, 0))
        finally:
            self._send_lock.release()

    def _recover(self, exc: BaseException) -> bool:
        """Reconnects with backoff and resends what was not answered, however often the new
        connections fail (to connect, during HELLO, during the resend); False if the client
        closed, or gave up (no `reconnect`, or the server refused the token)."""
        self._connected.clear()
        self._drop_socket()
        if not self._reconnect:
            self._give_up(ConnectionLost(str(exc)))
            return False
        logger.warning("connection to %s lost (%s); reconnecting", self.address, exc)
        self._backoff.lost()
        while not self._closed:
            time.sleep(self._backoff.wait())
            if self._closed:
                return False
            try:
                sock = self._handshake()
            except ProtocolError as retry_exc:
                if retry_exc.code == ErrorCode.AUTH:
                    self._give_up(retry_exc)
                    return False
                logger.warning("reconnecting to %s: %s", self.address, retry_exc)
            except (OSError, FrameError) as retry_exc:
                logger.info("reconnecting to %s: %s", self.address, retry_exc)
            else:
                self._backoff.connected()
                return self._start_resend(sock)
        return False

    def _start_resend(self, sock: socket.socket) -> bool:
        """Makes `sock` the client's connection and resends on it every request still waiting
        for its answer (appends marked RESEND), from a thread of its own while this one reads
        the answers: a server may answer (pending READs, say) before it reads on, and would
        wait for us as we waited for it. The send lock stays taken until the resend is done
        (the resending thread releases it), so that new requests follow the resent ones."""
        self._send_lock.acquire()
        try:
            if self._closed:
                sock.close()
                return False
            frames = [p.resend_frame() for p in self._pending.values()]
            self._sock = sock
            self._resender = threading.Thread(
                target=self._resend, args=(sock, frames), name="fluxcore-client-resend",
                daemon=True)
            self._resender.start()
        except BaseException:
            self._send_lock.release()
            raise
        self._connected.set()
        return True

    def _resend(self, sock: socket.socket, frames: list[bytes]) -> None:
        try:
            for frame in frames:
                sock.sendall(frame)
        except OSError as exc:
            # The reader sees this connection fail too, and connects again.
            logger.info("resending to %s failed: %s", self.address, exc)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        finally:
            self._send_lock.release()

    def _drop_socket(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # ends a send blocked on it, which holds the lock
        with self._send_lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _give_up(self, exc: BaseException) -> None:
        """No more connections: what waits gets `exc`, and so does every later request."""
        self._gone = exc
        self._fail_pending(exc)

    def _send(self, frame_of: Callable[[int], bytes], *, answer: bool, append: bool = False,
              prefix: bytes = b"") -> ReplyFuture[Reply] | None:
        """Sends the frame built for a fresh request id; returns the future of its answer.
        `prefix` (ready-made frames, say a handler's results) goes out in the same write,
        first, and is not resent after a reconnect."""
        if self._closed or self._gone is not None:
            raise ConnectionLost("the client is closed" if self._closed else str(self._gone))
        with self._send_lock:
            pending = self._write(frame_of, answer, append, prefix)
        if self._owed is not None:
            self._send_owed()
        return pending.future if pending is not None else None

    def _write(self, frame_of: Callable[[int], bytes], answer: bool, append: bool,
               prefix: bytes) -> Pending | None:
        """With the send lock held: one write of `prefix`, the new request's frame, and the
        owed READ of results if there is one."""
        request_id = self._codec.next_request_id()
        # The frame first: one that cannot be built (bad input) sends nothing and leaves the
        # owed READ of results owed, not registered and never written.
        frame = frame_of(request_id)
        owed = self._owed_read() if self._owed is not None else b""  # goes last
        pending = None
        if answer:
            pending = self._pending[request_id] = Pending(frame, append)
        try:
            if self._sock is None:
                raise ConnectionResetError("not connected")
            self._sock.sendall(prefix + frame + owed if prefix or owed else frame)
        except OSError:
            if not self._reconnect:
                raise
            # The reader thread reconnects and resends everything pending.
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
        return pending

    def _send_owed(self) -> None:
        """Sends the owed READ of results now, unless the send lock is taken. The reader
        thread calls this and must never wait for the lock: a sender holding it may be blocked
        until this thread reads what the server has for us. Whoever sets _owed calls this
        after setting it, and every sender looks at _owed after releasing the lock, so one of
        them sends it."""
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            if self._owed is not None and not self._closed:
                self._write(lambda _rid: b"", False, False, b"")
        finally:
            self._send_lock.release()

    def _wait(self, future: ReplyFuture[T] | concurrent.futures.Future[T],
              timeout: float | None) -> T:
        """The future's result, or TimeoutError after `timeout` seconds."""
        return future.result(timeout)

    def _start_consumer(self, spec: ConsumerSpec, handler: Handler | BatchHandler) -> Consumer:
        consumer = Consumer(self, spec, handler)
        self._consumers.append(consumer)
        consumer.start()
        return consumer

    def flush(self, timeout: float | None = 30.0) -> None:
        """Waits until every request sent so far is answered (STORED publishes acknowledged)."""
        with self._send_lock:
            futures = [p.future for p in self._pending.values() if p.resend]
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in futures:
            if not future.wait(None if deadline is None else deadline - time.monotonic()):
                return

    # -- requests ----------------------------------------------------------------------------

    def request_async(
        self,
        message_type: MessageType,
        payload: bytes,
        *,
        type: str = "",
        key: str | bytes | None = None,
        metadata: dict[str, str] | None = None,
        topic: str | None = None,
        revision: int = 0,
    ) -> concurrent.futures.Future[Message]:
        """Sends a command or query (of payload `type` at `revision`); the future gets the
        handler's result (a Message) or a RequestError."""
        future: concurrent.futures.Future[Message] = concurrent.futures.Future()
        number = self._request(future, message_type, payload, type, key, metadata, topic,
                               revision)
        # However it ends (result, timeout, cancel), the request stops being waited for.
        future.add_done_callback(lambda _f: self._requests.pop(number, None))
        return future

    def request(
        self,
        message_type: MessageType,
        payload: bytes,
        *,
        type: str = "",
        key: str | bytes | None = None,
        metadata: dict[str, str] | None = None,
        topic: str | None = None,
        timeout: float | None = 30.0,
        revision: int = 0,
    ) -> Message:
        """Sends a command or query (of payload `type` at `revision`) and waits for its
        result; RequestError if the handler failed, TimeoutError if no result came in time."""
        waiter: ReplyFuture[Message] = ReplyFuture()
        number = self._request(waiter, message_type, payload, type, key, metadata, topic,
                               revision)
        try:
            return waiter.result(timeout)
        finally:
            if not waiter.done():
                self._requests.pop(number, None)

    def _request(self, future: concurrent.futures.Future[Message] | ReplyFuture[Message],
                 message_type: MessageType, payload: bytes, payload_type: str,
                 key: str | bytes | None, metadata: dict[str, str] | None, topic: str | None,
                 revision: int) -> int:
        if self._results is None:
            self._start_results()
        codec, requests = self._codec, self._requests
        number = 0

        def frame_of(request_id: int) -> bytes:
            nonlocal number
            # Under the send lock: numbered and waited for before the request can be answered.
            number = codec.next_message_request_id()
            requests[number] = future
            return codec.append(
                request_id, message_type, [payload], payload_type=payload_type,
                guarantee=Guarantee.SENT, keys=None if key is None else [key], topic=topic,
                metadata=metadata, message_request_id=number, revision=revision)

        try:
            self._send(frame_of, answer=False)
        except BaseException:
            requests.pop(number, None)
            raise
        return number

    def _start_results(self) -> None:
        with self._results_lock:
            if self._results is None:
                # Its first READ goes out in front of the request.
                self._owed = self._results = ResultReader(self)

    def answer(
        self,
        done: Sequence[tuple[Message, bytes | WebResponse | None, BaseException | None]],
        types: Sequence[str] | None = None,
        *,
        web: bool = False,
    ) -> None:
        """Answers requests handled outside `consume`'s per-message handlers (a batch
        handler): per request its result (bytes, or a WebResponse if `web`) or the exception
        that failed it (also written to the ERROR log); `types`: each result's payload type."""
        results, errors = result_frames(self._codec, list(done), web, types)
        self.send_frames(results + errors)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the consumers, then closes the connection."""
        if self._closed:
            return
        for consumer in list(self._consumers):
            consumer.stop()
        if self._results is not None:
            self._results.stop()
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.flush(timeout=5)
        self._closed = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._reader.join(timeout=5)
        if self._resender is not None:
            self._resender.join(timeout=5)
        self._fail_pending(ConnectionLost("the client is closed"))
        for number in list(self._requests):
            future = self._requests.pop(number, None)
            if future is not None:
                future.cancel()


class ResultReader(ResultReaderBase):
    """Reads the results of this client's requests. The reader thread handles each batch as
    it comes: it wakes the callers waiting for those results itself, and the next READ goes
    out at once if requests still wait, else with the next request."""

    def delivered(self, op: int, body: bytes) -> None:
        """A batch (in the reader thread): results to their callers, then the next READ."""
        reply = self._batch(op, body)
        if reply is None:
            return
        client = self.client
        # The next READ: now if other requests wait, else in front of the next request (one
        # write for both). Owed before the callers wake, so that their next request takes it;
        # a request sent meanwhile is in `requests` by the time this looks (_send_owed).
        if not self.stopped and not client.closed:
            client._owed = self
        requests = client._requests
        settle_results(requests, reply.messages)
        if requests and client._owed is self:
            client._send_owed()


class Consumer(ConsumerBase):
    """The trackers of one consumer in this client: a thread each."""

    def __init__(self, client: Client, spec: ConsumerSpec, handler: Handler | BatchHandler
                 ) -> None:
        super().__init__(client, spec, handler)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # orders stop() against a tracker starting on a batch
        self._threads: list[threading.Thread] = []

    def _call_handler(self, value: Any) -> Any:
        return self.handler(value)

    def start(self) -> None:
        for tracker_id in self.tracker_ids:
            thread = threading.Thread(target=self._run, args=(tracker_id,), daemon=True,
                                      name=f"fluxcore-tracker:{tracker_id}")
            thread.start()
            self._threads.append(thread)

    def _run(self, tracker_id: str) -> None:
        client, spec = self.client, self.spec
        cursor = TrackerCursor(spec, client._codec, tracker_id)
        answers = b""  # the results of the last batch: they go out with the next READ
        while not self._stop.is_set():
            try:
                sending, answers = answers, b""
                reply = client.read(cursor.request(), spec.read_timeout, answers=sending)
            except (ConnectionLost, concurrent.futures.CancelledError):
                return
            except (ProtocolError, concurrent.futures.TimeoutError, OSError) as exc:
                if self._stop.is_set() or client.closed:
                    return
                logger.error("tracker %s: read failed: %s", tracker_id, exc)
                self._stop.wait(0.5)
                continue
            with self._lock:
                if self._stop.is_set():
                    # A batch that came after stop() stays unhandled and its position unstored:
                    # whoever reads these segments next gets it.
                    break
                self._handling.add(tracker_id)
            try:
                if reply.messages:
                    _current_batch.value = (tracker_id, reply.segment)
                    answers = self._handle(reply.messages)
                cursor.advance(reply)
            finally:
                with self._lock:
                    self._handling.discard(tracker_id)
        # Stopping: store what was handled, then leave, in this order, so that the tracker
        # that gets these segments next starts after the messages handled here.
        try:
            client.send_frames(answers)
            if cursor.unstored is not None:
                client.store_position(spec.name, spec.message_type, *cursor.unstored,
                                      spec.topic)
            client.disconnect_tracker(spec.name, spec.message_type, tracker_id, spec.topic)
        except (ProtocolError, ConnectionLost, OSError, concurrent.futures.TimeoutError) as exc:
            logger.error("tracker %s: storing its position or leaving failed: %s",
                         tracker_id, exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the trackers: each leaves its cluster, so its segments go to the others."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            handling = set(self._handling)
        # A tracker waiting for a batch has stored its last position with that READ: leaving
        # ends the wait. One handling a batch stores its position and leaves by itself.
        for tracker_id in self.tracker_ids:
            if tracker_id in handling:
                continue
            with contextlib.suppress(ProtocolError, ConnectionLost, OSError,
                                     concurrent.futures.TimeoutError):
                self.client.disconnect_tracker(self.name, self.message_type, tracker_id,
                                               self.spec.topic)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        chunks += chunk
    return bytes(chunks)


__all__ += ["ConnectionLost", "RequestError"]
