"""Idle logs are closed and reopened on use (README "Limits", `max_open_logs`): under traffic,
with parked READs, with readers in other processes, with every kind of server code that uses a
log; the server stays the only writer of its logs while they are closed. Real server processes,
raw sockets, the client and the embedded Log API in child processes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

import fluxcore
from fluxcore.client import Client, Message, MessageType

from .service_harness import TOKEN, ServerProcess
from .test_service_limits import LOW_LIMIT, MIB, low_descriptor_limit
from .test_service_robustness import BATCH, READ, Raw, assert_healthy, frame

CUSTOM = 12


def open_log_dirs(server: ServerProcess) -> set[str]:
    """The log directories the server has a descriptor in (its open logs)."""
    logs = os.path.join(str(server.data_dir), "public", "logs")
    found = set()
    for fd in os.listdir(f"/proc/{server.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{server.pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(logs + os.sep):
            found.add(target[len(logs) + 1:].split(os.sep)[0])
    return found


def settled_open_logs(server: ServerProcess, limit: int) -> set[str]:
    """The open logs once the server has closed what is over `limit` (it closes them when
    the event loop's current callback ends, so look until it has)."""
    deadline = time.monotonic() + 10
    while True:
        found = open_log_dirs(server)
        if len(found) <= limit or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def assert_no_closed_log_used(server: ServerProcess) -> None:
    out = "".join(server.output)
    assert "Traceback" not in out, out[-3000:]
    assert "the log is closed" not in out and "LogClosedError" not in out, out[-3000:]


@pytest.fixture
def small_lru(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", env={
        "FLUXCORE_SEGMENT_FILE_SIZE": str(MIB), "FLUXCORE_MAX_OPEN_LOGS": "4",
        "FLUXCORE_METRICS_INTERVAL_S": "0.2"}).start()
    try:
        yield proc
    finally:
        proc.kill()


# A reader in another process: the embedded Log API, readonly, on the server's log directories.
# It reads every log until each holds `want` records and prints their indexes.
_READER = """
import json, sys, time
import fluxcore
dirs, want = json.loads(sys.argv[1])
logs = {d: fluxcore.Log(d, readonly=True) for d in dirs}
seen = {d: [] for d in dirs}
after = {d: 0 for d in dirs}
print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline and any(len(seen[d]) < want for d in dirs):
    for d, log in logs.items():
        batch = log.read(after[d])
        after[d] = batch.next_after
        seen[d].extend(int(i) for i in batch.indexes)
    time.sleep(0.01)
print(json.dumps(seen), flush=True)
"""


def test_idle_logs_close_and_reopen_under_traffic(small_lru: ServerProcess) -> None:
    """Twelve topics through a server that keeps four logs open: each round parks a READ on
    every topic, then publishes one message to each. Every parked READ gets its message, a
    reader in another process sees every message of every log in order, at most four logs are
    open between rounds, and no other writer can take a log, closed or not."""
    server = small_lru
    topics = [f"t{i}" for i in range(12)]
    rounds = 5
    logs_dir = server.data_dir / "public" / "logs"
    acked: dict[str, list[int]] = {t: [] for t in topics}
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        for topic in topics:  # creates the logs, so that the other process can open them
            index = client.publish(MessageType.CUSTOM, b"first", topic=topic)
            assert index is not None
            acked[topic].append(index)
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER,
             json.dumps([[str(logs_dir / f"custom-{t}") for t in topics], rounds + 1])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert reader.stdout is not None
        try:
            assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
            conns = {t: Raw(server.address) for t in topics}
            for conn in conns.values():
                conn.hello()
            for round_ in range(rounds):
                for n, (topic, conn) in enumerate(conns.items()):
                    body = {"type": CUSTOM, "topic": topic, "consumer": f"c-{topic}",
                            "tracker": f"c-{topic}-t", "max_size": 100,
                            "max_timeout_ms": 30_000, "client_index": True,
                            "last_index": acked[topic][-1]}
                    conn.send(frame(READ, 100 * round_ + n, msgspec.msgpack.encode(body)))
                time.sleep(0.2)  # parked, the logs of most of them closed
                assert len(settled_open_logs(server, 4)) <= 4
                for topic in topics:
                    index = client.publish(MessageType.CUSTOM, b"%d" % round_, topic=topic)
                    assert index is not None
                    acked[topic].append(index)
                for n, (topic, conn) in enumerate(conns.items()):
                    reply = conn.recv_frame()
                    assert reply is not None, topic
                    op, request_id, body = reply
                    assert (op, request_id) == (BATCH, 100 * round_ + n)
                    last_index, count = struct.unpack_from("<QI", body, 8)
                    assert (count, last_index) == (1, acked[topic][-1]), topic
            found = settled_open_logs(server, 4)
            assert len(found) <= 4, found
            out, err = reader.communicate(timeout=150)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.communicate()
        seen = json.loads(out.splitlines()[-1])
        for topic in topics:
            assert seen[str(logs_dir / f"custom-{topic}")] == acked[topic], (topic, err)
        # The server stays the only writer of every log, the closed ones too.
        for topic in topics:
            with pytest.raises(fluxcore.LogLockedError):
                fluxcore.Log(logs_dir / f"custom-{topic}")
        for topic in topics:  # and everything is still there, through the server
            assert [m.index for m in client.read_from_index(
                MessageType.CUSTOM, 0, 100, topic=topic)] == acked[topic]
    assert_healthy(server)
    assert_no_closed_log_used(server)
    assert server.stop() == 0
    with fluxcore.Log(logs_dir / "custom-t0") as log:  # its server gone, the log is free
        assert [int(i) for i in log.read(0).indexes] == acked["t0"]


def test_every_user_of_a_log_survives_its_close(small_lru: ServerProcess) -> None:
    """Schedules, retention, the DOCUMENT log of search, consumers (trackers, and the metrics
    of consumer lag every 0.2 s), event sourcing: each uses its log after it was closed for
    being idle, and never a closed one."""
    server = small_lru
    received: list[bytes] = []
    got = threading.Event()

    def handle(message: Message) -> None:
        received.append(message.data)
        if len(received) == 6:
            got.set()

    def churn(client: Client, tag: str) -> None:
        """Traffic on other logs: every log used before is closed after."""
        for i in range(6):
            assert client.publish(MessageType.CUSTOM, tag.encode(), topic=f"churn-{i}")

    with Client.connect(server.address, token=TOKEN, name="users") as client:
        consumer = client.consume("lag", MessageType.CUSTOM, handle, topic="watched",
                                  max_timeout_ms=500, from_index=0)
        try:
            sid = client.schedule(b"later", 1.0, type="Later")
            assert sid is not None
            client.index({"name": "a"}, collection="docs", id="d1")
            client.set_retention(MessageType.CUSTOM, 3_600_000, topic="kept")
            client.append_events("order-1", [b"created"], types="Order")
            for round_ in range(3):
                churn(client, f"a{round_}")
                assert client.publish(MessageType.CUSTOM, b"w%d" % round_, topic="watched")
                churn(client, f"b{round_}")
                client.index({"name": f"b{round_}"}, collection="docs", id=f"d{round_ + 2}")
                client.set_retention(MessageType.CUSTOM, None, topic="kept")
                assert client.publish(MessageType.CUSTOM, b"k", topic="kept")
                client.append_events("order-1", [b"paid%d" % round_], types="Order")
                assert client.publish(MessageType.CUSTOM, b"w%d+" % round_, topic="watched")
                time.sleep(0.3)  # metrics of consumer lag run over closed logs
            assert got.wait(30), received
        finally:
            consumer.stop()
        deadline = time.monotonic() + 20
        while not client.read_from_index(MessageType.SCHEDULE, 0, 10):
            assert time.monotonic() < deadline, "the schedule did not fire"
            churn(client, "c")
            time.sleep(0.2)
        assert [m.data for m in client.read_from_index(MessageType.SCHEDULE, 0, 10)] == [
            b"later"]
        documents = client.read_from_index(MessageType.DOCUMENT, 0, 100, topic="docs")
        assert len(documents) == 4, documents
        assert len(client.read_from_index(MessageType.CUSTOM, 0, 100, topic="kept")) == 3
        assert len(client.get_events("order-1")) == 4
        assert sorted(received) == sorted(
            [b"w%d" % r for r in range(3)] + [b"w%d+" % r for r in range(3)])
    assert len(settled_open_logs(server, 4)) <= 4
    assert_healthy(server)
    assert_no_closed_log_used(server)


def test_durable_acks_of_logs_closed_while_they_wait(tmp_path: Path) -> None:
    """fsync always with two logs open: STORED appends to many topics at once; a log closed
    while its acks wait for their sync is synced by its close, and every ack comes."""
    server = ServerProcess(tmp_path / "data", "--fsync", "always", env={
        "FLUXCORE_SEGMENT_FILE_SIZE": str(MIB), "FLUXCORE_MAX_OPEN_LOGS": "2"}).start()
    try:
        with Client.connect(server.address, token=TOKEN, name="durable") as client:
            futures = [(i % 8, client.publish_batch_async(
                MessageType.CUSTOM, [b"%d" % i], topic=f"d{i % 8}")) for i in range(200)]
            acked: dict[int, list[int]] = {}
            for topic, future in futures:
                indexes = future.result(30)
                assert indexes is not None and len(indexes) == 1
                acked.setdefault(topic, []).append(int(indexes[0]))
            for topic, indexes in acked.items():
                assert [m.index for m in client.read_from_index(
                    MessageType.CUSTOM, 0, 100, topic=f"d{topic}")] == indexes
        assert_no_closed_log_used(server)
    finally:
        server.kill()


@pytest.mark.slow
def test_two_thousand_topics_under_a_low_descriptor_limit(tmp_path: Path) -> None:
    """2,000 topics, 256 open files, max_open_logs automatic: no error at all, nothing lost,
    /health answers; the server holds well under its limit of descriptors."""
    server = ServerProcess(tmp_path / "data", env={
        "FLUXCORE_SEGMENT_FILE_SIZE": str(MIB), "FLUXCORE_MAX_LOGS": "5000"},
        preexec_fn=low_descriptor_limit).start()
    try:
        stored: dict[str, list[int]] = {}
        with Client.connect(server.address, token=TOKEN, name="topics") as client:
            for i in range(2000):
                index = client.publish(MessageType.CUSTOM, b"%d" % i, topic=f"topic-{i}")
                assert index is not None
                stored[f"topic-{i}"] = [index]
            assert_healthy(server)
            for topic in list(stored)[::100]:  # closed long ago: reopened
                index = client.publish(MessageType.CUSTOM, b"again", topic=topic)
                assert index is not None
                stored[topic].append(index)
            assert len(os.listdir(f"/proc/{server.pid}/fd")) < LOW_LIMIT - 32
            # automatic: an eighth of the 224 descriptors below the reserve of 32
            assert "at most 28 logs open at a time" in "".join(server.output)
            assert len(settled_open_logs(server, 28)) <= 28
            for topic, indexes in stored.items():
                assert [m.index for m in client.read_from_index(
                    MessageType.CUSTOM, 0, 10, topic=topic)] == indexes, topic
        assert_healthy(server)
        out = "".join(server.output)
        assert "limit of open files" not in out, out[-3000:]
        assert_no_closed_log_used(server)
    finally:
        server.kill()


def test_one_server_per_data_directory(small_lru: ServerProcess) -> None:
    """A second server on the same data directory is refused at start, clearly: the first
    keeps the logs it closed for being idle."""
    second = subprocess.run(
        [sys.executable, "-m", "fluxcore", "serve", "--data", str(small_lru.data_dir),
         "--port", "0", "--token", TOKEN], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another process (a server?) uses this data directory" in second.stderr
    assert_healthy(small_lru)


# Put into a server process as its sitecustomize: the final sync of the log named
# FLUXCORE_TEST_GATED_LOG, when that log closes, makes the file `closing` in
# FLUXCORE_TEST_GATE and then waits until the test makes `release` there: a disk as slow as
# the test wants, at a moment the test knows.
_SLOW_CLOSE_HOOK = """
import os, time
from fluxcore.log import Log

_gate = os.environ["FLUXCORE_TEST_GATE"]
_gated = os.environ["FLUXCORE_TEST_GATED_LOG"]
_sync_to = Log._sync_to

def _slow_sync_to(self, target):
    if self.closed and os.path.basename(self.path) == _gated:
        open(os.path.join(_gate, "closing"), "w").close()
        give_up = time.monotonic() + 120
        while not os.path.exists(os.path.join(_gate, "release")) and time.monotonic() < give_up:
            time.sleep(0.01)
    return _sync_to(self, target)

Log._sync_to = _slow_sync_to
"""


def _wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_slow_close_of_an_idle_log_does_not_stall_the_server(tmp_path: Path) -> None:
    """One log open at a time, and the close of `gated` blocked in its final sync until the
    test lets it go: meanwhile the server answers pings and appends to other logs, takes back
    a log whose close had not begun yet, and an append to `gated` itself waits for that close
    (one writer at a time), then is stored with what `gated` held before."""
    hook, gate = tmp_path / "hook", tmp_path / "gate"
    hook.mkdir()
    gate.mkdir()
    (hook / "sitecustomize.py").write_text(_SLOW_CLOSE_HOOK)
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    server = ServerProcess(tmp_path / "data", env={
        "PYTHONPATH": path, "FLUXCORE_TEST_GATE": str(gate),
        "FLUXCORE_TEST_GATED_LOG": "custom-gated", "FLUXCORE_MAX_OPEN_LOGS": "1",
        "FLUXCORE_METRICS_INTERVAL_S": "0"}).start()
    try:
        with Client.connect(server.address, token=TOKEN, name="slow-close") as client:
            first = client.publish(MessageType.CUSTOM, b"1", topic="gated")
            client.publish(MessageType.CUSTOM, b"a", topic="other")  # gated closes
            _wait_for_file(gate / "closing")
            client.ping(timeout=30)  # a close that synced on the event loop: no answer
            client.publish(MessageType.CUSTOM, b"x", topic="third", timeout=30)  # other closes
            # other's close waits behind gated's: taken back, still open, no wait
            client.publish(MessageType.CUSTOM, b"b", topic="other", timeout=30)
            assert not (gate / "release").exists()
            reopen = client.publish_batch_async(MessageType.CUSTOM, [b"2"], topic="gated")
            assert reopen is not None
            (gate / "release").touch()
            second = reopen.result(60)
            assert [(m.index, m.data) for m in client.read_from_index(
                MessageType.CUSTOM, 0, 10, topic="gated")] == [(first, b"1"),
                                                                (int(second[0]), b"2")]
            assert [m.data for m in client.read_from_index(
                MessageType.CUSTOM, 0, 10, topic="other")] == [b"a", b"b"]
        assert server.stop() == 0
        out = "".join(server.output)
        assert "another writer" not in out and "LogLockedError" not in out, out[-3000:]
        assert_no_closed_log_used(server)
    finally:
        (gate / "release").touch()
        server.kill()
