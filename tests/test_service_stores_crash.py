"""kill -9 of the server while clients append events, store values and schedule messages, in
a loop: after each restart every acknowledged event is in its stream, in order, and reached the
EVENT log; every acknowledged value is there; every acknowledged schedule fires."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from fluxcore.client import Client, ConnectionLost, Message, MessageType, ProtocolError

from .service_harness import TOKEN, ServerProcess

ROUNDS = 5
AGGREGATES = 12


@pytest.mark.slow
def test_kill_9_loop_keeps_acknowledged_events_values_and_schedules(tmp_path: Path) -> None:
    rng = random.Random(27)
    server = ServerProcess(tmp_path / "data").start()
    streams: dict[str, list[bytes]] = {f"agg-{i}": [] for i in range(AGGREGATES)}
    attempted: dict[str, list[bytes]] = {name: [] for name in streams}  # acked or not
    values: dict[str, set[bytes]] = {}  # key -> the acknowledged value and any tried after it
    schedules: set[str] = set()
    try:
        for round_no in range(ROUNDS):
            client = Client.connect(server.address, token=TOKEN, reconnect=False)
            stop = threading.Event()

            def work(client: Client = client, round_no: int = round_no,
                     stop: threading.Event = stop) -> None:
                n = 0
                while not stop.is_set():
                    name = f"agg-{rng.randrange(AGGREGATES)}"
                    events = [b"%s:%d:%d" % (name.encode(), round_no, n + i)
                              for i in range(rng.randrange(1, 30))]
                    key = f"k{rng.randrange(50)}"
                    value = b"v%d-%d" % (round_no, n)
                    attempted[name].extend(events)
                    values.setdefault(key, set()).add(value)
                    try:
                        last = client.append_events(name, events, types="E", timeout=30)
                        streams[name].extend(events)
                        assert last == len(streams[name]) - 1
                        client.store_values({key: value}, timeout=30)
                        values[key] = {value}  # acknowledged: the value from now on
                        sid = f"s{round_no}-{n}"
                        client.schedule(sid.encode(), time.time() + rng.uniform(0, 1.5),
                                        schedule_id=sid, timeout=30)
                        schedules.add(sid)
                    except (ConnectionLost, OSError, ProtocolError):
                        return
                    n += len(events)

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            time.sleep(rng.uniform(0.3, 1.0))
            server.kill()
            stop.set()
            worker.join(30)
            client.close()
            server.start()
            with Client.connect(server.address, token=TOKEN, name="check") as check:
                for name, acked in streams.items():
                    stored = [e.data for e in check.get_events(name)]
                    # Every acknowledged event, in order; at most the unacknowledged tail of
                    # the request the kill cut short beyond them, and it then stays.
                    assert stored[: len(acked)] == acked, f"round {round_no}: {name}"
                    assert stored == attempted[name][: len(stored)], f"round {round_no}: {name}"
                    streams[name] = stored
                    attempted[name] = list(stored)
                for key, possible in values.items():
                    found = check.get_value(key)
                    assert found in possible, f"round {round_no}: {key} = {found!r}"
                    values[key] = {found} if found is not None else possible
        # Every event of every stream reached the EVENT log (at least once), and every
        # acknowledged schedule fired.
        with Client.connect(server.address, token=TOKEN, name="final") as check:
            logged: set[bytes] = set()
            after = 0
            while True:
                batch: list[Message] = check.read_from_index(MessageType.EVENT, after, 10_000)
                if not batch:
                    break
                logged.update(m.data for m in batch)
                after = batch[-1].index + 1
            missing = [e for acked in streams.values() for e in acked if e not in logged]
            assert not missing, f"{len(missing)} stream events never reached the EVENT log"
            fired: set[str] = set()
            deadline = time.monotonic() + 20
            while not schedules <= fired and time.monotonic() < deadline:
                batch = check.read_from_index(MessageType.SCHEDULE, 0, 10_000)
                fired = {m.data.decode() for m in batch}
                time.sleep(0.2)
            assert schedules <= fired, f"{len(schedules - fired)} schedules never fired"
            assert sum(map(len, streams.values())) > 100 and len(schedules) > 20
    finally:
        server.kill()
