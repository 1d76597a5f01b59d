"""README's code blocks for the embedded log and the Python client, run as written (their
placeholders given values), against the compiled extension and a real server; and what their
comments say each call returns. (The microclient blocks run in test_app_fixture.py.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fluxcore.client import Client, ConcurrencyError, Message, MessageType, Scheduled

from .service_harness import TOKEN, ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str) -> str:
    """The first python block under `heading` (up to the next heading of level 2)."""
    section = README.read_text().split(f"{heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, f"no python block under {heading!r}"
    return str(blocks[0])


def test_embedded_log_block_runs_as_written(tmp_path: Path) -> None:
    block = readme_block("## The embedded log")
    assert '"/data/orders"' in block
    block = block.replace('"/data/orders"', repr(str(tmp_path / "orders")))
    namespace: dict[str, Any] = {
        "buf": b"xxyyyzz",
        "offsets": np.array([0, 2, 5, 7], dtype=np.uint64),
        "ms": time.time_ns() // 1_000_000 - 60_000,
    }
    exec(compile(block, "README.md:embedded-log", "exec"), namespace)
    # what the block's comments say
    assert isinstance(namespace["i"], int)
    assert namespace["idx"].dtype == np.uint64 and len(namespace["idx"]) == 3  # append_buffer's
    assert namespace["first"] == namespace["i"]  # the first record at or after `ms`
    batch = namespace["batch"]
    assert [payload for _, payload in batch] == [b"order 1 placed", b"a", b"b", b"c", b"xx",
                                                  b"yyy", b"zz"]
    assert namespace["after"] == int(batch.indexes[-1])
    assert batch.data.readonly


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The block consumes WEBREQUESTs "with the server's web_project = this project".
    data = tmp_path_factory.mktemp("docs-readme") / "data"
    proc = ServerProcess(data, env={"FLUXCORE_WEB_PROJECT": "public"}).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_python_client_block_runs_as_written(web_server: ServerProcess) -> None:
    block = readme_block("### The Python client")
    block = block.replace('"127.0.0.1:8765"', repr(web_server.address))
    block = block.replace('token="..."', f"token={TOKEN!r}")
    handled: list[Any] = []
    namespace: dict[str, Any] = {
        "payloads": [b'{"id": 2}', b'{"id": 3}'], "keys": ["order-2", "order-3"],
        "types": ["OrderPlaced", "OrderPaid"], "data": b'{"id": 4}',
        "handle": handled.append, "handle_batch": handled.append, "remind": handled.append,
        "placed": b'{"placed": 1}', "paid": b'{"paid": 1}', "note": b'{"note": 1}',
        "snapshot": b"snapshot", "timedelta": timedelta,
    }
    # The block's QUERY request needs a handler of queries: another application.
    with Client.connect(web_server.address, token=TOKEN, name="queries") as other:
        other.consume("order-queries", MessageType.QUERY, lambda m: b"{}")
        exec(compile(block, "README.md:python-client", "exec"), namespace)
        client = Client.connect(web_server.address, token=TOKEN, name="check")
    with client:
        assert namespace["result"].data == b"done"
        assert [m.data for m in namespace["messages"][:3]] == [b'{"id": 1}', b'{"id": 2}',
                                                                 b'{"id": 3}']
        assert namespace["messages"][0].index == namespace["index"]
        assert [(m.index, m.type) for m in namespace["history"]] == [(0, "OrderPlaced"),
                                                                    (1, "OrderPaid")]
        assert namespace["sid"] == "order-1-payment"
        assert client.get_schedule("order-1-payment") is None  # cancelled
        assert client.get_events("order-1") == []  # deleted
        assert client.get_value("config") is None  # deleted
        assert client.get_value("lock") == b"me"
        assert client.get_value("$snapshot_order-1") == b"snapshot"


def test_python_client_block_comments_hold(web_server: ServerProcess) -> None:
    """Each `# -> ...` of README's client block, call by call."""
    with Client.connect(web_server.address, token=TOKEN, name="comments",
                        project="comments") as client:
        sid = client.schedule(b'{"order": 1}', timedelta(minutes=5), type="PaymentDue",
                              schedule_id="order-1-payment")
        scheduled = client.get_schedule(sid)
        assert isinstance(scheduled, Scheduled) and scheduled.schedule_id == sid
        assert scheduled.message.data == b'{"order": 1}' and scheduled.message.type == "PaymentDue"
        assert abs(scheduled.deadline_ms - (time.time_ns() // 1_000_000 + 300_000)) < 60_000
        assert client.cancel_schedule(sid) is True  # it was pending
        assert client.cancel_schedule(sid) is False
        assert client.get_schedule(sid) is None

        placed, paid, note = b'{"placed": 1}', b'{"paid": 1}', b'{"note": 1}'
        assert client.append_events("order-1", [placed, paid],
                                    types=["OrderPlaced", "OrderPaid"]) == 1
        history = client.get_events("order-1")
        assert all(isinstance(m, Message) for m in history)
        assert [(m.index, m.data) for m in history] == [(0, placed), (1, paid)]
        assert client.append_events("order-1", [note], types="Note", store_only=True) == 2
        assert client.append_events("order-1", [paid], types="OrderPaid",
                                    expected_sequence=2) == 3
        with pytest.raises(ConcurrencyError):  # the stream's last number is 3 now, not 2
            client.append_events("order-1", [paid], types="OrderPaid", expected_sequence=2)
        assert len(client.get_events("order-1")) == 4  # nothing stored by the refused one
        client.update_relationships(associations=[("order-1", "Order", "line-7")])
        assert client.get_aggregate_ids("line-7") == {"order-1": "Order"}
        client.delete_events("order-1")
        assert client.get_events("order-1") == []

        client.store_values({"config": b"...", "$snapshot_order-1": b"snap"})
        assert client.store_value("lock", b"me", if_absent=True) is True
        assert client.store_value("lock", b"you", if_absent=True) is False  # has a value
        assert client.get_value("lock") == b"me"
        assert client.get_value("config") == b"..."
        assert client.delete_value("config") is True  # it had one
        assert client.delete_value("config") is False
        assert client.get_value("config") is None
