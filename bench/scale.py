"""The scale suite: what one fluxcore server costs per connection, per log and per waiting
consumer (issue "one machine, many").

Every row starts its own `fluxcore serve` on loopback in a fresh directory and talks to it over
raw sockets (the wire protocol of docs/protocol.md, built here with struct and msgspec), so the
client's own costs stay out of the server's figures. Server CPU and memory come from /proc.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bench.common import Results, Row, progress, scratch_dir
from bench.servers import HOST, Server, fluxcore_argv, fluxcore_ready, free_port, running_server

TOKEN = "bench"
HEADER = struct.Struct("<IBBHI")  # length, op, flags, reserved, request_id
MESSAGE = struct.Struct("<BBHHHHHIIIqq")  # the fixed 40 bytes of a message
BATCH_HEAD = struct.Struct("<HHB3xQI4x")
HELLO, APPEND, READ, READ_FROM_INDEX = 1, 2, 3, 8
WELCOME, ACK, BATCH, ERROR = 129, 130, 131, 143
EVENT, CUSTOM = 2, 12
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
pack = msgspec.msgpack.encode


@dataclass(frozen=True)
class ScaleSizes:
    connections: int  # idle connections held open (idle_connection_kib, hello_us_at_10k)
    hello_batch: int  # connections timed per HELLO-cost point
    idle_logs: int  # topics that sit idle (log_idle_cpu_pct_1k)
    idle_seconds: float
    waiters: int  # consumers waiting for one message (wake_500_p50_us)
    wake_rounds: int
    fanout_readers: int
    fanout_events: int
    restart_events: int  # stored events before the restart (restart_30m_s)


SCALE_QUICK = ScaleSizes(connections=10_000, hello_batch=2_000, idle_logs=1_000,
                         idle_seconds=5.0, waiters=500, wake_rounds=10, fanout_readers=16,
                         fanout_events=200_000, restart_events=3_000_000)
SCALE_FULL = ScaleSizes(connections=10_000, hello_batch=4_000, idle_logs=1_000,
                        idle_seconds=20.0, waiters=500, wake_rounds=40, fanout_readers=16,
                        fanout_events=200_000, restart_events=30_000_000)


# -- raw protocol ----------------------------------------------------------------------------


def frame(op: int, request_id: int, body: bytes) -> bytes:
    return HEADER.pack(8 + len(body), op, 0, 0, request_id) + body


def hello_frame(name: str) -> bytes:
    return frame(HELLO, 1, pack({"client_id": name, "client_name": name, "project": "public",
                                 "token": TOKEN, "protocol": 1}))


def encode_messages(payloads: list[bytes], first_id: int = 0) -> list[bytes]:
    messages = []
    now = int(time.time() * 1000)
    for i, data in enumerate(payloads):
        fields = [b"Bench", b"m-%d" % (first_id + i), b"bench", b"", b""]
        head = MESSAGE.pack(1, 0, *(len(f) for f in fields), 0, 0, len(data), now, -1)
        messages.append(head + b"".join(fields) + data)
    return messages


def append_frame(request_id: int, payloads: list[bytes], *, type_code: int = EVENT,
                 topic: str = "", first_id: int = 0) -> bytes:
    messages = encode_messages(payloads, first_id)
    topic_bytes = topic.encode()
    body = (struct.pack("<BBH", type_code, 2, len(topic_bytes)) + topic_bytes
            + struct.pack("<I", len(messages))
            + struct.pack(f"<{len(messages)}I", *(len(m) for m in messages))
            + bytes(i % 128 for i in range(len(messages))) + b"".join(messages))
    return frame(APPEND, request_id, body)


def read_frame(request_id: int, consumer: str, last_index: int, *, max_size: int = 1000,
               timeout_ms: int = 60_000) -> bytes:
    return frame(READ, request_id, pack({
        "type": EVENT, "topic": None, "consumer": consumer, "tracker": consumer,
        "max_size": max_size, "max_timeout_ms": timeout_ms, "client_index": True,
        "last_index": last_index}))


class Conn:
    """A blocking raw connection."""

    def __init__(self, address: str, name: str = "bench") -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.call(hello_frame(name), WELCOME)

    def recv(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= 12:
                length, op, _f, _r, request_id = HEADER.unpack_from(self.buf)
                if len(self.buf) >= 4 + length:
                    body, self.buf = self.buf[12 : 4 + length], self.buf[4 + length :]
                    return op, request_id, body
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk

    def call(self, data: bytes, expect: int) -> bytes:
        self.sock.sendall(data)
        op, _rid, body = self.recv()
        if op != expect:
            raise RuntimeError(f"expected op {expect}, got {op}: {body[:200]!r}")
        return body

    def close(self) -> None:
        self.sock.close()


def open_many(address: str, count: int, window: int = 200,
              sources: tuple[str, ...] = ()) -> list[socket.socket]:
    """`count` connections that said HELLO and got their WELCOME, `window` at a time; from
    the loopback `sources` in turn, if given (each has its own range of ephemeral ports)."""
    host, port = address.rsplit(":", 1)
    hello = hello_frame("idle")
    selector = selectors.DefaultSelector()
    out: list[socket.socket] = []
    made = 0
    try:
        while len(out) < count:
            batch = []
            for _ in range(min(window, count - len(out))):
                source = (sources[made % len(sources)], 0) if sources else None
                made += 1
                sock = socket.create_connection((host, int(port)), timeout=60,
                                                source_address=source)
                sock.sendall(hello)
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, [b""])
                batch.append(sock)
            pending = len(batch)
            while pending:
                events = selector.select(60)
                if not events:
                    raise RuntimeError("no WELCOME within 60 s")
                for key, _ in events:
                    got = key.data[0] + key.fileobj.recv(4096)  # type: ignore[union-attr]
                    key.data[0] = got
                    if len(got) >= 12 and len(got) >= 4 + HEADER.unpack_from(got)[0]:
                        if got[4] != WELCOME:
                            raise RuntimeError(f"HELLO answered with op {got[4]}")
                        selector.unregister(key.fileobj)
                        pending -= 1
            out.extend(batch)
    finally:
        selector.close()
    return out


# -- the server process ----------------------------------------------------------------------


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the whole process (all threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def health_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextlib.contextmanager
def fluxcore(directory: Path, **config: str) -> Iterator[Server]:
    port = free_port()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{f"FLUXCORE_{k.upper()}": v for k, v in config.items()})
    with running_server("fluxcore", fluxcore_argv(port, directory, TOKEN), port, directory,
                        ready=fluxcore_ready, env=env) as server:
        yield server


def raise_own_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- rows ------------------------------------------------------------------------------------


def _hello_cost(pid: int, address: str, batch: int, repeats: int = 3,
                sources: tuple[str, ...] = ()) -> float:
    """Median server CPU (us) per connect + HELLO over `repeats` batches; each batch is
    closed again (outside the timing) so the number open stays where it was."""
    costs = []
    for _ in range(repeats):
        cpu = cpu_seconds(pid)
        timed = open_many(address, batch, sources=sources)
        costs.append((cpu_seconds(pid) - cpu) / batch * 1e6)
        for sock in timed:
            sock.close()
        time.sleep(0.5)
    return statistics.median(costs)


def connection_rows(sizes: ScaleSizes, directory: Path, results: Results) -> None:
    """idle_connection_kib, hello_us_at_100, hello_us_at_10k."""
    count = min(sizes.connections, raise_own_open_file_limit() - sizes.hello_batch - 200)
    with fluxcore(directory) as server:
        pid, address = server.process.pid, server.address
        warm = Conn(address)
        warm.close()
        base = open_many(address, 100)
        at_100 = _hello_cost(pid, address, sizes.hello_batch)
        before = rss(pid)
        held = open_many(address, count - len(base))
        time.sleep(1.0)
        per_connection = (rss(pid) - before) / len(held)
        at_10k = _hello_cost(pid, address, sizes.hello_batch)
        for sock in base + held:
            sock.close()
    note = "raw sockets, HELLO then WELCOME; server RSS from /proc"
    results.rows.append(Row("idle_connection_kib", "fluxcore", "KiB", per_connection / 1024,
                            len(held), note + f"; {count} open"))
    how = (f"server CPU (utime+stime from /proc, 10 ms ticks) per connect + HELLO, median of "
           f"3 batches of {sizes.hello_batch}, with {{}} already open")
    results.rows.append(Row("hello_us_at_100", "fluxcore", "us", at_100, sizes.hello_batch,
                            how.format(100)))
    results.rows.append(Row("hello_us_at_10k", "fluxcore", "us", at_10k, sizes.hello_batch,
                            how.format(count), {"ratio_to_100": at_10k / max(at_100, 1e-9)}))


CONNECTIONS_100K = 100_000
# 127.0.0.0/8 is all loopback on Linux; each source address has its own ~28,000 ephemeral
# ports (ip_local_port_range) towards the server's one port.
SOURCES_100K = tuple(f"127.0.0.{i}" for i in range(2, 10))


def connection_100k_row(sizes: ScaleSizes, directory: Path, results: Results) -> None:
    """idle_connection_kib_100k, hello_us_at_100k: the connection rows at 100,000 open. Needs
    root, to raise this process's hard RLIMIT_NOFILE (the server inherits it); not in --quick."""
    wanted = CONNECTIONS_100K + sizes.hello_batch + 2_000
    if sizes is SCALE_QUICK:
        results.context.append("connection_100k_row: not in --quick")
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (ValueError, OSError) as exc:
        results.context.append(f"connection_100k_row: not measured, RLIMIT_NOFILE could not "
                               f"be raised to {wanted} ({exc}; needs root)")
        return
    with fluxcore(directory) as server:
        pid, address = server.process.pid, server.address
        base = open_many(address, 100)
        at_100 = _hello_cost(pid, address, sizes.hello_batch)
        before = rss(pid)
        started = time.monotonic()
        held = open_many(address, CONNECTIONS_100K - len(base), sources=SOURCES_100K)
        opened_s = time.monotonic() - started
        time.sleep(2.0)
        per_connection = (rss(pid) - before) / len(held)
        at_100k = _hello_cost(pid, address, sizes.hello_batch, sources=SOURCES_100K)
        healthy = health_ok(server.port)
        for sock in base + held:
            sock.close()
    note = (f"raw sockets from {len(SOURCES_100K)} loopback source addresses, HELLO then "
            f"WELCOME; server RSS from /proc; {len(base) + len(held):,} open (opened in "
            f"{opened_s:.0f} s); /health {'answered' if healthy else 'did NOT answer'} with "
            "all of them open")
    results.rows.append(Row("idle_connection_kib_100k", "fluxcore", "KiB",
                            per_connection / 1024, len(held), note))
    results.rows.append(Row(
        "hello_us_at_100k", "fluxcore", "us", at_100k, sizes.hello_batch,
        f"server CPU per connect + HELLO, median of 3 batches of {sizes.hello_batch}, with "
        f"{len(base) + len(held):,} already open (at 100 open, same run: {at_100:.0f} us)",
        {"ratio_to_100": at_100k / max(at_100, 1e-9), "hello_us_at_100": at_100}))


def _disk_kib(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total / 1024


def log_rows(sizes: ScaleSizes, directory: Path, results: Results) -> None:
    """log_disk_kib_small, log_idle_cpu_pct_1k."""
    sample = 20
    with fluxcore(directory / "disk") as server:
        conn = Conn(server.address)
        logs = directory / "disk" / "data" / "public" / "logs"
        for i in range(sample):
            conn.call(append_frame(i, [b"x" * 100] * 3, type_code=CUSTOM, topic=f"t{i}"), ACK)
        per_topic = statistics.median(_disk_kib(logs / f"custom-t{i}") for i in range(sample))
        conn.close()
    results.rows.append(Row("log_disk_kib_small", "fluxcore", "KiB", per_topic, sample,
                            "disk blocks (st_blocks) of a custom topic holding 3 messages of "
                            "100 bytes, default segment_file_size; median of the topics"))
    count = sizes.idle_logs
    config: dict[str, str] = {}
    note = ""
    free = shutil.disk_usage(directory).free
    if per_topic * 1024 * count > free / 4:
        config["segment_file_size"] = str(1 << 20)  # the disk would not hold them otherwise
        note = (f"; segment_file_size 1 MiB ({count} topics at {per_topic:.0f} KiB each would "
                "take over a quarter of the free disk)")
    with fluxcore(directory / "idle", **config) as server:
        conn = Conn(server.address)
        for i in range(count):
            conn.call(append_frame(i, [b"x" * 100] * 3, type_code=CUSTOM, topic=f"t{i}"), ACK)
        conn.close()
        time.sleep(2.0)  # the appends' own work settles
        pid = server.process.pid
        threads = len(os.listdir(f"/proc/{pid}/task"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        cpu = cpu_seconds(pid)
        time.sleep(sizes.idle_seconds)
        pct = (cpu_seconds(pid) - cpu) / sizes.idle_seconds * 100
    results.rows.append(Row(
        "log_idle_cpu_pct_1k", "fluxcore", "%", pct, count,
        f"server CPU over {sizes.idle_seconds:g} s with {count} idle topics of 3 messages and "
        f"no connection; {threads} threads, {fds} descriptors" + note,
        {"threads": threads, "descriptors": fds}))


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
TIMESPEC = struct.Struct("qq")


def _recv_ready(selector: selectors.BaseSelector, want: int, timeout: float) -> list[int]:
    """Reads until `want` connections got one complete frame; returns when each one's frame
    arrived in this machine's kernel (CLOCK_REALTIME ns, SO_TIMESTAMPNS): the server's
    latency, not how fast this one process gets round to 500 sockets. The data of a
    connection: [buffer, last index, consumer name]."""
    arrivals: list[int] = []
    deadline = time.monotonic() + timeout
    while len(arrivals) < want:
        events = selector.select(max(deadline - time.monotonic(), 0))
        if not events:
            raise RuntimeError(f"{len(arrivals)} of {want} consumers got the message")
        for key, _ in events:
            state = key.data
            chunk, ancillary, _flags, _addr = key.fileobj.recvmsg(  # type: ignore[union-attr]
                1 << 16, 64)
            if not chunk:
                raise RuntimeError("a consumer's connection closed")
            stamp = time.time_ns()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = TIMESPEC.unpack_from(data)
                    stamp = seconds * 1_000_000_000 + nanoseconds
            state[0] += chunk
            got = state[0]
            if len(got) >= 12 and len(got) >= 4 + HEADER.unpack_from(got)[0]:
                length, op = struct.unpack_from("<IB", got)
                if op != BATCH:
                    raise RuntimeError(f"a consumer got op {op}: {got[12:200]!r}")
                state[1] = BATCH_HEAD.unpack_from(got, 12)[3]  # last_index
                state[0] = got[4 + length :]
                arrivals.append(stamp)
    return arrivals


def wake_row(sizes: ScaleSizes, directory: Path, results: Results) -> None:
    """wake_500_p50_us: one message to `waiters` consumers parked on READ."""
    with fluxcore(directory) as server:
        publisher = Conn(server.address, "publisher")
        first = struct.unpack_from("<QI", publisher.call(append_frame(1, [b"start"]), ACK))[0]
        socks = open_many(server.address, sizes.waiters)
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(socks):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            selector.register(sock, selectors.EVENT_READ, [b"", first, f"waiter-{i}"])
        samples: list[float] = []
        try:
            for round_ in range(sizes.wake_rounds):
                for key in list(selector.get_map().values()):
                    state = key.data
                    key.fileobj.sendall(read_frame(round_, state[2], state[1]))  # type: ignore[union-attr]
                time.sleep(0.3)  # every read parked
                sent = time.time_ns()
                publisher.sock.sendall(append_frame(100 + round_, [b"w" * 100],
                                                   first_id=round_ + 1))
                arrivals = _recv_ready(selector, len(socks), 30)
                publisher.recv()
                samples.extend((t - sent) / 1000 for t in arrivals)
        finally:
            selector.close()
            for sock in socks:
                sock.close()
            publisher.close()
    samples.sort()
    floor = _send_floor(sizes)
    results.rows.append(Row(
        "wake_500_floor_p50_us", "machine", "us", statistics.median(floor), len(floor),
        f"the same measurement for another process sending a 200-byte frame to "
        f"{sizes.waiters} loopback connections in a plain socket.send loop: the kernel's "
        "share (waking the reader each time) on this machine",
        {"p99_us": floor[int(len(floor) * 0.99)], "max_us": floor[-1]}))
    results.rows.append(Row(
        "wake_500_p50_us", "fluxcore", "us", statistics.median(samples), len(samples),
        f"one 100-byte EVENT to {sizes.waiters} consumers parked on READ (raw sockets, one "
        f"client process), {sizes.wake_rounds} rounds; from sending the append to each BATCH's "
        "arrival in the client's kernel (SO_TIMESTAMPNS)",
        {"p99_us": samples[int(len(samples) * 0.99)], "max_us": samples[-1]}))


def _floor_sender(listener: socket.socket, count: int, go: int, payload: bytes) -> None:
    """In a child process: accept `count` connections, then send `payload` to each one, in a
    plain loop, for every byte that comes on the pipe `go`."""
    conns = []
    for _ in range(count):
        conn, _addr = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(conn)
    while os.read(go, 1):
        for conn in conns:
            conn.send(payload)


def _send_floor(sizes: ScaleSizes) -> list[float]:
    """What the kernel alone costs for the wake measurement: another process sends a
    frame to `waiters` loopback connections in a plain loop; arrivals as in wake_row."""
    listener = socket.create_server((HOST, 0))
    go_read, go_write = os.pipe()
    payload = frame(BATCH, 1, BATCH_HEAD.pack(0, 128, 1, 1, 1) + b"x" * 164)
    pid = os.fork()
    if pid == 0:  # the sender
        code = 0
        try:
            os.close(go_write)
            _floor_sender(listener, sizes.waiters, go_read, payload)
        except BaseException:  # noqa: BLE001 - the child only reports, by its exit code
            code = 1
        os._exit(code)
    os.close(go_read)
    selector = selectors.DefaultSelector()
    clients = []
    samples: list[float] = []
    try:
        for _ in range(sizes.waiters):
            client = socket.create_connection(listener.getsockname())
            client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            client.setblocking(False)
            selector.register(client, selectors.EVENT_READ, [b"", 0, ""])
            clients.append(client)
        for _ in range(sizes.wake_rounds):
            time.sleep(0.3)
            sent = time.time_ns()
            os.write(go_write, b"x")
            samples.extend((t - sent) / 1000 for t in _recv_ready(selector, len(clients), 30))
    finally:
        os.close(go_write)
        os.waitpid(pid, 0)
        selector.close()
        for client in clients:
            client.close()
        listener.close()
    samples.sort()
    return samples


def fanout_row(sizes: ScaleSizes, directory: Path, results: Results) -> None:
    """fanout_16: aggregate msg/s to `fanout_readers` consumers of the same events."""
    with fluxcore(directory) as server:
        publisher = Conn(server.address, "publisher")
        payloads = [os.urandom(100) for _ in range(1000)]
        first = 0
        for i in range(sizes.fanout_events // 1000):
            body = publisher.call(append_frame(i, payloads, first_id=i * 1000), ACK)
            if i == 0:
                first = struct.unpack_from("<QI", body)[0]
        publisher.close()
        readers = [Conn(server.address, f"reader-{i}") for i in range(sizes.fanout_readers)]
        selector = selectors.DefaultSelector()
        for i, conn in enumerate(readers):
            conn.sock.setblocking(False)
            selector.register(conn.sock, selectors.EVENT_READ, [b"", first - 1, f"fan-{i}", 0])
        start = time.perf_counter_ns()
        for key in selector.get_map().values():
            key.fileobj.sendall(read_frame(0, key.data[2], key.data[1], max_size=10_000,  # type: ignore[union-attr]
                                           timeout_ms=1000))
        done = 0
        while done < len(readers):
            for key, _ in selector.select(60):
                state = key.data
                state[0] += key.fileobj.recv(1 << 22)  # type: ignore[union-attr]
                got = state[0]
                while len(got) >= 12 and len(got) >= 4 + HEADER.unpack_from(got)[0]:
                    length = HEADER.unpack_from(got)[0]
                    _s, _e, _c, last, count = BATCH_HEAD.unpack_from(got, 12)
                    got = got[4 + length :]
                    state[3] += count
                    state[1] = last or state[1]
                    if state[3] >= sizes.fanout_events:
                        done += 1
                    else:
                        key.fileobj.sendall(read_frame(1, state[2], state[1],  # type: ignore[union-attr]
                                                       max_size=10_000, timeout_ms=1000))
                state[0] = got
        seconds = (time.perf_counter_ns() - start) / 1e9
        selector.close()
        for conn in readers:
            conn.close()
    total = sizes.fanout_readers * sizes.fanout_events
    results.rows.append(Row(
        "fanout_16", "fluxcore", "msg/s", total / seconds, total,
        f"{sizes.fanout_readers} consumers (raw READ, client_index, max_size 10,000) each "
        f"reading the same {sizes.fanout_events} stored 100-byte events; one client process",
        {"seconds": seconds}))


def restart_row(sizes: ScaleSizes, directory: Path, results: Results) -> None:
    """restart_30m_s: from starting the process to /health answering, over stored events."""
    from fluxcore import Log

    log_dir = directory / "data" / "public" / "logs" / "event"
    log_dir.parent.mkdir(parents=True)
    messages = encode_messages([os.urandom(100) for _ in range(10_000)])
    with Log(str(log_dir)) as log:  # written as the server would have, without the wire
        for _ in range(sizes.restart_events // len(messages)):
            log.append_batch(messages)
    with fluxcore(directory):
        pass  # a first start and clean stop, as a restart follows one
    os.sync()  # the gigabytes just written are not the restart's to flush
    port = free_port()
    argv = fluxcore_argv(port, directory, TOKEN)
    start = time.perf_counter()
    with (directory / "restart.log").open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory,
                                   start_new_session=True)
    try:
        while not health_ok(port):
            if process.poll() is not None or time.perf_counter() - start > 120:
                raise RuntimeError("the server did not answer /health after a restart")
            time.sleep(0.002)
        seconds = time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(30)
    results.rows.append(Row(
        "restart_30m_s", "fluxcore", "s", seconds, sizes.restart_events,
        f"`fluxcore serve` started on a data directory with {sizes.restart_events:,} stored "
        "events until GET /health answers 200 (Python start-up included)"))


ROWS = (connection_rows, connection_100k_row, log_rows, wake_row, fanout_row, restart_row)


def run_scale(sizes: ScaleSizes, base: str | None, quick: bool,
              only: list[str] | None = None) -> Results:
    results = Results()
    results.context.append(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}; server "
                           "and client processes on the same machine, 127.0.0.1")
    results.context.append(f"load average at start: {_load()}")
    if quick:
        results.context.append("quick: fewer wake rounds, shorter idle window, "
                               f"{sizes.restart_events:,} events for restart_30m_s (see n)")
    for row in ROWS:
        name = row.__name__
        if only and name not in only:
            continue
        progress(f"scale: {name}")
        with results.attempt(name), scratch_dir(base, f"scale-{name}") as path:
            row(sizes, path, results)
    results.context.append(f"load average at end: {_load()}")
    return results


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
