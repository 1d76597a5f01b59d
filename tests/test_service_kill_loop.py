"""kill -9 of the server, over and over, under one publisher that keeps four batches in flight
and reconnects and resends by itself: every acknowledged message is in the log exactly once,
at the index its ACK gave, and every publish completes in the end.

Batches of 1 to 3,000 messages of 8 to 1,508 bytes cross the 1 MiB segment files; the
server is killed while it takes appends, at a random moment after it starts (often while it
opens its logs or takes the resends), and before it even listens."""

from __future__ import annotations

import concurrent.futures
import random
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fluxcore
from fluxcore.client import Client, Guarantee, MessageType

from .service_harness import TOKEN, ServerProcess

ROUNDS = 20
IN_FLIGHT = 4
SEGMENT_FILE_SIZE = 1 << 20


class Publisher:
    """publish_batch_async in a loop, at most IN_FLIGHT unacknowledged; each payload starts
    with an 8-byte tag (batch, message) that says which message it is."""

    def __init__(self, client: Client, seed: int) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.sent: dict[bytes, bytes] = {}  # tag -> payload
        self.acked: dict[bytes, int] = {}  # tag -> index, from the ACK
        self.failures: list[BaseException] = []
        self.futures: list[concurrent.futures.Future[np.ndarray]] = []
        self.slots = threading.Semaphore(IN_FLIGHT)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kill-loop-publisher")
        self.batches = 0

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.slots.acquire(timeout=0.1):
                continue
            count = self.rng.randint(1, 3000)
            tags = [struct.pack("<II", self.batches, i) for i in range(count)]
            payloads = [t + b"x" * self.rng.randint(0, 1500) for t in tags]
            self.batches += 1
            with self.lock:
                self.sent.update(zip(tags, payloads, strict=True))
            future = self.client.publish_batch_async(
                MessageType.EVENT, payloads, type="T", guarantee=Guarantee.STORED)
            assert future is not None
            future.add_done_callback(lambda f, tags=tags: self._done(f, tags))
            self.futures.append(future)

    def _done(self, future: concurrent.futures.Future[np.ndarray], tags: list[bytes]) -> None:
        self.slots.release()
        exc = future.exception()
        with self.lock:
            if exc is not None:
                self.failures.append(exc)
                return
            indexes = future.result()
            assert len(indexes) == len(tags)
            self.acked.update(zip(tags, (int(i) for i in indexes), strict=True))

    def progress(self) -> int:
        with self.lock:
            return len(self.acked)


def stored_messages(path: Path) -> list[tuple[int, bytes, bytes]]:
    """(index, message id, data) of every record of the log, read from its files with the
    embedded reader; every record's CRC is checked."""
    out = []
    with fluxcore.Log(path, readonly=True) as log:
        after = 0
        while True:
            batch = log.read(after, max_count=65536, verify=True)
            for index, message in batch:
                type_len, id_len = struct.unpack_from("<HH", message, 2)
                (data_len,) = struct.unpack_from("<I", message, 20)
                message_id = message[40 + type_len : 40 + type_len + id_len]
                out.append((index, message_id, message[len(message) - data_len :]))
            if not len(batch) and batch.next_after == after:
                return out
            after = batch.next_after


def fixed_port() -> int:
    """A free port below the ephemeral range: a client reconnecting to a port in that range
    while the server is down can be given it as its own port (TCP connects to itself), and
    the server could not listen on it again."""
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
        low = int(f.read().split()[0])
    for port in random.sample(range(10_000, max(low, 10_200)), 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below the ephemeral range")


def kill_and_restart(server: ServerProcess, publisher: Publisher, rng: random.Random) -> None:
    """One round: kill the running server at one of several kinds of moments, sometimes kill
    it again while it starts, and start it."""
    if rng.random() < 0.35:  # at any moment: often while the client reconnects and resends
        time.sleep(rng.uniform(0.0, 1.5))
    else:  # while it takes appends: once some were acknowledged since the last start
        before = publisher.progress()
        deadline = time.monotonic() + 10
        while publisher.progress() == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
    server.kill()
    if rng.random() < 0.25:  # before it listens: while it starts
        server.launch()
        time.sleep(rng.uniform(0.05, 0.6))
        server.kill()
    server.start()


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_kill_9_loop_loses_no_acknowledged_message(tmp_path: Path, fsync: str) -> None:
    rng = random.Random(f"kill-loop-{fsync}")
    server = ServerProcess(tmp_path / "data", "--fsync", fsync, port=fixed_port(),
                           env={"FLUXCORE_SEGMENT_FILE_SIZE": str(SEGMENT_FILE_SIZE)}).start()
    client = Client.connect(server.address, token=TOKEN)
    publisher = Publisher(client, rng.randrange(1 << 30))
    try:
        publisher.thread.start()
        for _ in range(ROUNDS):
            kill_and_restart(server, publisher, rng)
        publisher.stop.set()
        publisher.thread.join(30)
        # The client reconnects and resends by itself: every publish completes.
        _done, not_done = concurrent.futures.wait(publisher.futures, timeout=120)
        assert not not_done, f"{len(not_done)} publishes never completed"
        assert not publisher.failures, publisher.failures[:3]
        client.close()
        server.stop()
        stored = stored_messages(tmp_path / "data" / "public" / "logs" / "event")
    finally:
        publisher.stop.set()
        client.close()
        server.kill()
    files = list((tmp_path / "data" / "public" / "logs" / "event").glob("*.seg"))
    assert len(files) > ROUNDS  # batches crossed many file rolls
    ids = {message_id for _, message_id, _ in stored}
    assert len(ids) == len(stored), f"{len(stored) - len(ids)} message ids are stored twice"
    by_tag = {data[:8]: (index, data) for index, _, data in stored}
    assert len(by_tag) == len(stored), f"{len(stored) - len(by_tag)} messages stored twice"
    # Nothing but what was published, byte for byte: nothing torn or foreign is readable.
    foreign = [tag for tag, (_, data) in by_tag.items() if publisher.sent.get(tag) != data]
    assert not foreign, f"{len(foreign)} records are not messages as published"
    # Every acknowledged message, at the index its ACK gave.
    lost = [tag for tag in publisher.acked if tag not in by_tag]
    assert not lost, f"{len(lost)} of {len(publisher.acked)} acknowledged messages are lost"
    moved = [tag for tag, index in publisher.acked.items() if by_tag[tag][0] != index]
    assert not moved, f"{len(moved)} messages are not at their acknowledged index"
    # And every publish was acknowledged in the end.
    assert len(publisher.acked) == len(publisher.sent) == len(stored)
    shutil.rmtree(tmp_path / "data")  # hundreds of MB: not kept for inspection once passed
