"""kill -9 of the server under load, in a loop: every acknowledged message survives, nothing
torn or doubled is readable, and the server takes appends again after each restart."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from fluxcore.client import Client, ConnectionLost, Guarantee, MessageType, ProtocolError

from .service_harness import TOKEN, ServerProcess

ROUNDS = 8


def read_everything(client: Client) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    after = 0
    while True:
        messages = client.read_from_index(MessageType.EVENT, after, 10_000)
        if not messages:
            return found
        for message in messages:
            assert message.index not in found, "an index is readable twice"
            found[message.index] = message.data
        after = messages[-1].index + 1


@pytest.mark.slow
def test_kill_9_loop_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    server = ServerProcess(tmp_path / "data").start()
    acked: dict[int, bytes] = {}
    try:
        for round_no in range(ROUNDS):
            client = Client.connect(server.address, token=TOKEN, reconnect=False)
            stop = threading.Event()
            errors: list[BaseException] = []

            def produce(client: Client = client, round_no: int = round_no,
                        stop: threading.Event = stop,
                        errors: list[BaseException] = errors) -> None:
                sent = 0
                while not stop.is_set():
                    size = rng.randrange(1, 400)
                    payloads = [b"r%d-%d-" % (round_no, sent + i) + b"x" * rng.randrange(200)
                                for i in range(size)]
                    try:
                        indexes = client.publish_batch(MessageType.EVENT, payloads, type="T",
                                                       guarantee=Guarantee.STORED, timeout=30)
                    except (ConnectionLost, OSError, ProtocolError) as exc:
                        errors.append(exc)
                        return
                    assert indexes is not None
                    acked.update(zip((int(i) for i in indexes), payloads, strict=True))
                    sent += size

            before = len(acked)
            producer = threading.Thread(target=produce)
            producer.start()
            time.sleep(rng.uniform(0.2, 0.8))
            server.kill()
            stop.set()
            producer.join(60)
            assert not producer.is_alive()
            assert len(acked) > before, "the kill came before any append was acknowledged"
            client.close()
            server.start()
            with Client.connect(server.address, token=TOKEN) as reader:
                stored = read_everything(reader)
                missing = [i for i in acked if stored.get(i) != acked[i]]
                assert not missing, f"round {round_no}: {len(missing)} acknowledged lost"
                # Nothing but what some producer sent: no torn or foreign record is readable.
                assert all(p.startswith(b"r") or p == b"after-restart" for p in stored.values())
                index = reader.publish(MessageType.EVENT, b"after-restart", type="T")
                assert index is not None and index > max(stored)
                acked[index] = b"after-restart"
        assert len(acked) > ROUNDS
    finally:
        server.kill()
