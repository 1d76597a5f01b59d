"""_proto.frame_send_each: one frame to many sockets, each with its own request id, over real
loopback connections and the event loop's own transports."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import struct
from array import array

import numpy as np
import pytest

from fluxcore._ext import _proto

HEADER = struct.Struct("<IBBHI")  # length, op, flags, reserved, request id


class Quiet(asyncio.Protocol):
    pass


async def pair(loop: asyncio.AbstractEventLoop, receive_buffer: int = 0
               ) -> tuple[asyncio.Transport, int, socket.socket]:
    """(the server side's transport, its descriptor, the client socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if receive_buffer:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, receive_buffer)
    transport, _ = await loop.connect_accepted_socket(Quiet, ours)
    return transport, transport.get_extra_info("socket").fileno(), theirs


def drain(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(10)
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        assert chunk
        out += chunk
    return out


LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_one_frame_goes_to_each_socket_with_its_request_id_in_order(loop_kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        body = bytes(range(256)) * 200  # 51 KB: two fit in a default socket buffer
        frame = HEADER.pack(8 + len(body), 131, 0, 0, 7) + body
        plain = await pair(loop)
        small = await pair(loop, receive_buffer=4096)  # takes part of one frame, no more
        queued = await pair(loop, receive_buffer=4096)
        queued[0].write(b"x" * 1_000_000)  # stays queued: its peer does not read
        closing = await pair(loop)
        closing[0].close()
        transports = [plain[0], small[0], small[0], queued[0], closing[0], plain[0], plain[0]]
        fds = array("i", [plain[1], small[1], small[1], queued[1], closing[1], -1, plain[1]])
        request_ids = array("I", [1, 2, 3, 4, 5, 6, 0xFFFFFFFF])
        sent = np.empty(len(transports), dtype=np.int64)
        whole = _proto.frame_send_each(frame, transports, fds, request_ids, sent)
        size = len(frame)
        assert sent[0] == size and sent[6] == size and whole == 2
        assert 0 < sent[1] < size  # in part: the rest is the caller's to send
        assert sent[2] == 0  # behind the first frame of its socket: not written
        assert sent[3] == sent[4] == _proto.SEND_SKIPPED  # answers queued / closing
        assert sent[5] == 0  # no descriptor (TLS): the caller sends it
        got = drain(plain[2], 2 * size)
        for request_id, start in ((1, 0), (0xFFFFFFFF, size)):
            one = got[start : start + size]
            assert HEADER.unpack_from(one)[4] == request_id
            assert one[:8] == frame[:8] and one[12:] == frame[12:]
        partial = drain(small[2], int(sent[1]))
        assert partial[:8] == frame[:8] and HEADER.unpack_from(partial)[4] == 2
        assert partial[12:] == frame[12 : len(partial)]
        for transport, _fd, theirs in (plain, small, queued, closing):
            transport.abort()
            theirs.close()

    if loop_kind == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


def test_nothing_to_send_and_bad_arguments() -> None:
    frame = HEADER.pack(8, 131, 0, 0, 1)
    assert _proto.frame_send_each(frame, [], array("i"), array("I"),
                                  np.empty(0, dtype=np.int64)) == 0
    try:
        _proto.frame_send_each(frame[:8], [], array("i"), array("I"),
                               np.empty(0, dtype=np.int64))
    except _proto.FrameError as exc:
        assert "no header" in str(exc)
    else:
        raise AssertionError("a frame without a header was taken")
