"""The key-value store against a real server: store, overwrite, if-absent, get, delete; values
survive a kill -9 of the server; projects do not see each other's values; bad requests fail."""

from __future__ import annotations

import asyncio
import os

import pytest

from fluxcore.client import AsyncClient, Client, ProtocolError
from fluxcore.protocol import Op

from .service_harness import TOKEN, ServerProcess


def test_store_get_overwrite_delete(client: Client) -> None:
    assert client.get_value("missing") is None
    client.store_values({"a": b"1", "b": b"", "c": os.urandom(100_000)})
    assert client.get_value("a") == b"1"
    assert client.get_value("b") == b""  # empty, not missing
    assert len(client.get_value("c") or b"") == 100_000
    client.store_values({"a": b"2"})
    assert client.get_value("a") == b"2"
    assert not client.store_value("a", b"3", if_absent=True)
    assert client.get_value("a") == b"2"
    assert client.store_value("new", b"x", if_absent=True)
    assert client.store_value("a", b"4")
    assert client.get_value("a") == b"4"
    assert client.delete_value("a")
    assert not client.delete_value("a")
    assert client.get_value("a") is None
    assert client.get_value("$snapshot_order-1") is None  # any string is a key


def test_values_survive_kill9_and_stay_in_their_project(server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="w", project="one") as client:
        client.store_values({f"k{i}": str(i).encode() for i in range(1000)})
        client.delete_value("k7")
    server.kill()
    server.start()
    with Client.connect(server.address, token=TOKEN, name="r", project="one") as client:
        assert client.get_value("k999") == b"999"
        assert client.get_value("k7") is None
    with Client.connect(server.address, token=TOKEN, name="r", project="two") as client:
        assert client.get_value("k999") is None


def test_async_client_values(server: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(server.address, token=TOKEN, name="a") as client:
            await client.store_values({"x": b"1"})
            assert await client.get_value("x") == b"1"
            assert not await client.store_value("x", b"2", if_absent=True)
            assert await client.delete_value("x")
            assert await client.get_value("x") is None

    asyncio.run(main())


def test_bad_value_requests(client: Client) -> None:
    with pytest.raises(ProtocolError, match="1 to 1000"):
        client.get_value("")
    with pytest.raises(ProtocolError, match="1 to 1000"):
        client.store_values({"k" * 1001: b"x"})
    with pytest.raises(TypeError):
        client.store_values({"k": "not bytes"})  # type: ignore[dict-item]
    with pytest.raises(ProtocolError, match="wrong type"):
        client._call(Op.STORE_VALUES, {"values": [{"key": "k", "value": "text"}]})
    with pytest.raises(ProtocolError, match="each value is a map"):
        client._call(Op.STORE_VALUES, {"values": ["k"]})
    with pytest.raises(ProtocolError, match="missing field"):
        client._call(Op.GET_VALUE, {})
    # Nothing of a refused request was stored, and the connection goes on.
    assert client.get_value("k") is None
    client.store_values({"k": b"ok"})
    assert client.get_value("k") == b"ok"
