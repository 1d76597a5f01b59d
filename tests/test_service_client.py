"""The clients against a real server: the asyncio client, handlers per payload type, TLS, and
resent appends that must not be stored twice (also across a server restart)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from fluxcore._ext import _proto
from fluxcore.client import AsyncClient, Client, Message, MessageType, RequestError
from fluxcore.client._wire import Codec
from fluxcore.protocol import Guarantee, Op, ProtocolError, decode_control

from .service_harness import TOKEN, ServerProcess


def test_async_client_publish_consume_request(server: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(server.address, token=TOKEN, name="a") as client:
            first = await client.publish(MessageType.EVENT, b"one", type="T", key="k")
            assert isinstance(first, int)
            got: list[Message] = []
            done = asyncio.Event()

            async def handle(message: Message) -> None:
                got.append(message)
                if len(got) == 3:
                    done.set()

            await client.consume("c", MessageType.EVENT, handle, trackers=2, from_index=first)
            indexes = await client.publish_batch(MessageType.EVENT, [b"two", b"three"], type="T")
            assert indexes is not None and indexes[0] > first
            await asyncio.wait_for(done.wait(), 30)
            assert sorted(m.data for m in got) == [b"one", b"three", b"two"]

            await client.consume("svc", MessageType.COMMAND, lambda m: b"ok:" + m.data)

            async def fail(message: Message) -> bytes:
                raise KeyError("missing")

            await client.consume("q", MessageType.QUERY, fail)
            result = await client.request(MessageType.COMMAND, b"x", type="C", timeout=30)
            assert result.data == b"ok:x" and result.target == client.client_id
            with pytest.raises(RequestError, match="missing"):
                await client.request(MessageType.QUERY, b"y", type="Q", timeout=30)
            results = await asyncio.gather(*[
                client.request(MessageType.COMMAND, str(i).encode(), timeout=30)
                for i in range(50)])
            assert [r.data for r in results] == [f"ok:{i}".encode() for i in range(50)]

    asyncio.run(main())


def test_handlers_per_payload_type(client: Client) -> None:
    seen: list[tuple[str, bytes]] = []
    done = threading.Event()

    def on_created(message: Message) -> None:
        seen.append(("created", message.data))

    def on_shipped(message: Message) -> None:
        seen.append(("shipped", message.data))
        done.set()

    start = client.publish(MessageType.EVENT, b"1", type="OrderCreated")
    client.publish(MessageType.EVENT, b"2", type="OrderPaid")  # no handler: filtered out
    client.publish(MessageType.EVENT, b"3", type="OrderShipped")
    client.consume("orders", MessageType.EVENT,
                   {"OrderCreated": on_created, "OrderShipped": on_shipped}, from_index=start)
    assert done.wait(30)
    assert seen == [("created", b"1"), ("shipped", b"3")]
    with pytest.raises(ValueError):
        client.consume("x", MessageType.EVENT, {"A": on_created}, batch=True)


class RawConnection:
    """Frames by hand, as a client in another language would send them."""

    def __init__(self, address: str, codec: Codec | None = None) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.codec = codec or Codec("raw-client", "raw", "public", TOKEN)
        self.sock.sendall(self.codec.hello(1))
        op, _rid, body = self.read()
        assert op == Op.WELCOME, decode_control(body)

    def read(self) -> tuple[int, int, bytes]:
        header = self._exactly(12)
        length, op, _flags, _reserved, rid = struct.unpack("<IBBHI", header)
        return op, rid, self._exactly(length - 8)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "server closed the connection"
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def resent(frame: bytes) -> bytes:
    return frame[:5] + bytes([frame[5] | 1]) + frame[6:]


def test_resent_append_is_acked_not_stored_twice(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        raw = RawConnection(server.address)
        frame = raw.codec.append(7, MessageType.EVENT, [b"a", b"b", b"c"], payload_type="T",
                                 guarantee=Guarantee.STORED)
        raw.sock.sendall(frame)
        op, rid, body = raw.read()
        assert (op, rid) == (Op.ACK, 7)
        first, count = struct.unpack("<QI", body)
        assert count == 3
        raw.sock.sendall(resent(frame))  # same connection: remembered in memory
        assert raw.read() == (Op.ACK, 7, body)
        raw.close()
        server.kill()  # kill -9: the server forgets everything but the log
        server.start()
        raw = RawConnection(server.address)
        raw.sock.sendall(resent(frame))
        assert raw.read() == (Op.ACK, 7, body)  # found in the log itself
        other = raw.codec.append(8, MessageType.EVENT, [b"d"], payload_type="T",
                                 guarantee=Guarantee.STORED)
        raw.sock.sendall(resent(other))  # a resend the server never saw: stored now
        op, rid, body = raw.read()
        assert (op, rid) == (Op.ACK, 8)
        raw.close()
        with Client.connect(server.address, token=TOKEN) as client:
            messages = client.read_from_index(MessageType.EVENT, 0, 100)
        assert [m.data for m in messages] == [b"a", b"b", b"c", b"d"]
        assert messages[0].index == first
    finally:
        server.kill()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = ServerProcess(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key))
    server.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with Client.connect(server.address, token=TOKEN, tls=context) as client:
            index = client.publish(MessageType.EVENT, b"secret", type="T")
            assert [m.data for m in client.read_from_index(MessageType.EVENT, index)] == [
                b"secret"]
        # A plaintext client gets nowhere, and the server goes on.
        with pytest.raises((ConnectionError, OSError, _proto.FrameError)):
            Client.connect(server.address, token=TOKEN, connect_timeout=5, reconnect=False)
        with Client.connect(server.address, token=TOKEN, tls=context) as client:
            assert client.ping() < 30
    finally:
        server.kill()


def test_retention_of_a_log_is_kept_across_restarts(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with Client.connect(server.address, token=TOKEN) as client:
            client.publish(MessageType.CUSTOM, b"x", topic="audit")
            client.set_retention(MessageType.CUSTOM, 3_600_000, topic="audit")
            with pytest.raises(ProtocolError):
                client.set_retention(MessageType.CUSTOM, -1, topic="audit")
        assert server.stop() == 0
        server.start()
        state = sqlite3.connect(tmp_path / "data" / "public" / "state.sqlite")
        assert state.execute("SELECT log, retention_ms FROM log_settings").fetchall() == [
            ("custom-audit", 3_600_000)]
        with Client.connect(server.address, token=TOKEN) as client:
            assert [m.data for m in client.read_from_index(MessageType.CUSTOM, 0,
                                                           topic="audit")] == [b"x"]
    finally:
        server.kill()


def test_fsync_always_acks_after_sync_and_survives_kill(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--fsync", "always").start()
    try:
        with Client.connect(server.address, token=TOKEN) as client:
            futures = [client.publish_batch_async(MessageType.EVENT, [b"%d" % i] * 10, type="T")
                       for i in range(50)]
            acked = [f.result(60) for f in futures if f is not None]
        assert len(acked) == 50
        server.kill()
        server.start()
        with Client.connect(server.address, token=TOKEN) as client:
            stored = client.read_from_index(MessageType.EVENT, 0, 1000)
        assert sorted(m.index for m in stored) == sorted(
            int(i) for batch in acked for i in batch)
    finally:
        server.kill()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data",
                           env={"FLUXCORE_SEGMENT_FILE_SIZE": str(1 << 20)}).start()
    try:
        with Client.connect(server.address, token=TOKEN, reconnect=False) as client:
            first = client.publish_batch(MessageType.EVENT, [b"before"] * 10, type="T")
            assert first is not None
            acked = {int(i): b"before" for i in first}
            # No new segment file may be made now (RLIMIT_FSIZE below the file size).
            subprocess.run(["prlimit", f"--pid={server.pid}", "--fsize=524288:unlimited"],
                           check=True)
            payload = b"p" * 50_000
            with pytest.raises(ProtocolError) as refused:
                for _ in range(100):  # ~5 MB: the first roll fails
                    indexes = client.publish_batch(MessageType.EVENT, [payload] * 2, type="T")
                    assert indexes is not None
                    acked.update({int(i): payload for i in indexes})
            assert refused.value.code == "unavailable"
            assert "no space" in refused.value.message
            assert client.ping() < 30  # the server goes on
            subprocess.run(["prlimit", f"--pid={server.pid}", "--fsize=unlimited:unlimited"],
                           check=True)
            index = client.publish(MessageType.EVENT, b"after", type="T")
            assert index is not None
            acked[index] = b"after"
            stored = {m.index: m.data for m in client.read_from_index(MessageType.EVENT, 0, 10_000)}
        assert stored == acked  # everything acknowledged, nothing half-written
    finally:
        server.kill()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_full_disk_under_the_stores_is_a_clear_error(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with Client.connect(server.address, token=TOKEN, reconnect=False) as client:
            client.store_values({"k": b"old"})
            assert client.append_events("agg", [b"e0"]) == 0
            # No file may grow past 64 KiB now: a large value or event cannot be committed.
            subprocess.run(["prlimit", f"--pid={server.pid}", "--fsize=65536:unlimited"],
                           check=True)
            big = b"v" * 300_000
            with pytest.raises(ProtocolError) as refused:
                client.store_values({"k": big})
            assert refused.value.code == "unavailable"
            assert "nothing of the request was stored" in refused.value.message
            with pytest.raises(ProtocolError) as refused:
                client.append_events("agg", [big])
            assert refused.value.code == "unavailable"
            assert client.ping() < 30  # the server goes on
            subprocess.run(["prlimit", f"--pid={server.pid}", "--fsize=unlimited:unlimited"],
                           check=True)
            assert client.get_value("k") == b"old"
            assert [e.data for e in client.get_events("agg")] == [b"e0"]
            client.store_values({"k": big})
            assert client.append_events("agg", [big]) == 1
            assert client.get_value("k") == big
    finally:
        server.kill()
