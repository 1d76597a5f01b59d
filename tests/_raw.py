"""A client written from docs/protocol.md alone, a frame at a time, for tests of what that page
says: HELLO, one request, one answer (or the frames the server sends unasked)."""

from __future__ import annotations

import socket
import struct
from typing import Any

from fluxcore.client._wire import Codec
from fluxcore.protocol import Op, decode_control, encode_control

from .service_harness import TOKEN, ServerProcess

HEADER = struct.Struct("<IBBHI")  # length (8 + body), op, flags, reserved, request_id
BATCH_HEADER = struct.Struct("<HHB3xQI4x")  # segment range, caught_up, last_index, count
RECORD_HEADER = struct.Struct("<IIQHHI")  # length, crc32c, index, segment, flags, reserved


def connect(server: ServerProcess, client_id: str, token: str = TOKEN) -> socket.socket:
    host, port = server.address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(Codec(client_id, "raw", "public", token).hello(1))
    op, request_id, _body = read_frame(sock)
    assert (op, request_id) == (Op.WELCOME, 1)
    return sock


def frame(op: int, request_id: int, body: bytes = b"") -> bytes:
    return HEADER.pack(8 + len(body), op, 0, 0, request_id) + body


def control(op: int, request_id: int, value: dict[str, Any]) -> bytes:
    return frame(op, request_id, encode_control(value))


def read_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    length, op, _flags, _reserved, request_id = HEADER.unpack(read_exactly(sock, 12))
    return op, request_id, read_exactly(sock, length - 8)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise ConnectionResetError(f"closed after {len(out)} of {size} bytes")
        out += chunk
    return bytes(out)


def ask(sock: socket.socket, op: int, request_id: int, value: dict[str, Any]
        ) -> tuple[int, bytes]:
    """Sends a msgpack request; returns (op, body) of the answer with its request id."""
    sock.sendall(control(op, request_id, value))
    while True:
        got, answered, body = read_frame(sock)
        if answered == request_id:
            return got, body


def error_code(op: int, body: bytes) -> str:
    assert op == Op.ERROR, op
    return str(decode_control(body)["code"])


def records(body: bytes) -> tuple[tuple[int, int, bool, int], list[tuple[int, int, int, int,
                                                                          bytes, bytes]]]:
    """A BATCH body: ((start, end, caught_up, last_index), [(length, crc, index, segment,
    message, record bytes from offset 8 to length)]), parsed as docs/protocol.md says."""
    start, end, caught_up, last_index, count = BATCH_HEADER.unpack_from(body)
    out = []
    offset = BATCH_HEADER.size
    for _ in range(count):
        length, crc, index, segment, _flags, _reserved = RECORD_HEADER.unpack_from(body, offset)
        record = body[offset : offset + length]
        out.append((length, crc, index, segment, record[24:], record[8:]))
        offset += (length + 7) // 8 * 8
    assert offset == len(body)
    return (start, end, bool(caught_up), last_index), out
