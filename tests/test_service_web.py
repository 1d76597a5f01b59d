"""Web requests through the service: HTTP in on the service's port, a WEBREQUEST to whichever
consumer handles it, its WEBRESPONSE back out as the HTTP response."""

from __future__ import annotations

import concurrent.futures
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from fluxcore.client import Client, Message, MessageType, WebResponse

from .service_harness import TOKEN, ServerProcess


def http(address: str, raw: bytes, timeout: float = 40) -> tuple[int, dict[str, str], bytes]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.fixture
def web_server(tmp_path: Path) -> Any:
    server = ServerProcess(tmp_path / "data", env={"FLUXCORE_WEB_PROJECT": "shop"}).start()
    yield server
    server.kill()


def test_http_request_is_answered_by_a_handler(web_server: ServerProcess) -> None:
    seen: list[Message] = []

    def handle(message: Message) -> WebResponse | bytes:
        seen.append(message)
        if message.type.endswith(" /plain"):
            return b"just bytes"
        body = json.dumps({"got": message.data.decode(), "url": message.metadata["url"]})
        return WebResponse(body, status=201, headers={"Content-Type": "application/json",
                                                      "X-Handled-By": "test"})

    with Client.connect(web_server.address, token=TOKEN, name="web", project="shop") as client:
        client.consume("web", MessageType.WEBREQUEST, handle)
        status, headers, body = http(
            web_server.address,
            b"POST /orders?id=7 HTTP/1.1\r\nHost: x\r\nX-Trace: abc\r\n"
            b"Content-Length: 5\r\n\r\nhello")
        assert status == 201
        assert headers["content-type"] == "application/json"
        assert headers["x-handled-by"] == "test"
        assert json.loads(body) == {"got": "hello", "url": "/orders?id=7"}
        request = seen[0]
        assert request.type == "POST /orders"
        assert request.metadata["method"] == "POST"
        assert json.loads(request.metadata["headers"])["X-Trace"] == "abc"
        assert http(web_server.address, b"GET /plain HTTP/1.1\r\n\r\n")[::2] == (
            200, b"just bytes")
        status, headers, body = http(web_server.address, b"HEAD /plain HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b"" and headers["content-length"] == "10"


def test_many_concurrent_requests_each_get_their_own_answer(web_server: ServerProcess) -> None:
    with Client.connect(web_server.address, token=TOKEN, name="web", project="shop") as client:
        client.consume("web", MessageType.WEBREQUEST, lambda m: m.metadata["url"].encode(),
                       trackers=2)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(
                lambda i: http(web_server.address, f"GET /n/{i} HTTP/1.1\r\n\r\n".encode()),
                range(100)))
        assert [(s, b) for s, _h, b in answers] == [(200, f"/n/{i}".encode()) for i in range(100)]


def test_handler_failure_is_a_500_and_an_error(web_server: ServerProcess) -> None:
    def fail(message: Message) -> bytes:
        raise ValueError("no such order")

    with Client.connect(web_server.address, token=TOKEN, name="web", project="shop") as client:
        client.consume("web", MessageType.WEBREQUEST, fail)
        status, _headers, body = http(web_server.address, b"GET /orders/9 HTTP/1.1\r\n\r\n")
        assert status == 500 and b"no such order" in body
        errors = client.read_from_index(MessageType.ERROR, 0, 100)
        assert any(b"no such order" in m.data for m in errors)


def test_bad_http_and_no_handler(tmp_path: Path, web_server: ServerProcess) -> None:
    address = web_server.address
    assert http(address, b"GET /health HTTP/1.1\r\n\r\n")[::2] == (200, b"Healthy")
    assert http(address, b"GET nonsense\r\n\r\n")[0] == 400
    assert http(address, b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")[0] == 411
    assert http(address, b"POST /x HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n")[0] == 413
    # Nobody handles these web requests: the proxy gives up after its timeout (504), and
    # meanwhile the server answers others.
    quick = ServerProcess(tmp_path / "quick", env={"FLUXCORE_WEB_PROJECT": "shop",
                                                   "FLUXCORE_WEB_TIMEOUT_S": "0.5"}).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(http, quick.address, b"GET /slow HTTP/1.1\r\n\r\n")
            assert http(quick.address, b"GET /health HTTP/1.1\r\n\r\n")[0] == 200
            status, _headers, body = slow.result(10)
        assert status == 504 and b"no web response" in body
    finally:
        quick.kill()
    # A server without web_project has no proxy.
    plain = ServerProcess(tmp_path / "plain").start()
    try:
        assert http(plain.address, b"GET /x HTTP/1.1\r\n\r\n")[0] == 404
        assert http(plain.address, b"GET /health HTTP/1.1\r\n\r\n")[0] == 200
    finally:
        plain.kill()
