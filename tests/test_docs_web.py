"""docs/protocol.md "HTTP: the health check and web requests", against a real server and a real
handler: what a WEBRESPONSE may not carry (a bad status or bad headers: 502, never a header the
handler did not mean to send) and how the WEBREQUEST carries the request's headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxcore.client import Client, Message, MessageType, WebResponse

from .service_harness import TOKEN, ServerProcess
from .test_service_web import http

RESPONSES = {
    "/status-999": WebResponse(b"x", status=999),
    "/status-0": WebResponse(b"x", status=0),
    "/newline-in-a-value": WebResponse(b"x", headers={"X-A": "v\r\nX-Injected: 1"}),
    "/newline-in-a-name": WebResponse(b"x", headers={"X-A\r\nX-Injected": "1"}),
    "/space-in-a-name": WebResponse(b"x", headers={"X A": "1"}),
    "/empty-name": WebResponse(b"x", headers={"": "1"}),
    "/nul-in-a-value": WebResponse(b"x", headers={"X-A": "a\x00b"}),
}


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data: Path = tmp_path_factory.mktemp("docs-web") / "data"
    server = ServerProcess(data, env={"FLUXCORE_WEB_PROJECT": "shop"}).start()
    seen: list[Message] = []

    def handle(message: Message) -> WebResponse | bytes:
        seen.append(message)
        path = message.metadata["url"]
        if path == "/echo-headers":
            return message.metadata["headers"].encode()
        return RESPONSES.get(path, WebResponse(b"fine", headers={"X-Good": "a, b; q=1"}))

    try:
        with Client.connect(server.address, token=TOKEN, project="shop") as client:
            client.consume("web", MessageType.WEBREQUEST, handle)
            yield server
    finally:
        server.stop()


@pytest.mark.parametrize("path", sorted(RESPONSES))
def test_a_response_with_a_bad_status_or_headers_is_a_502(web_server: ServerProcess,
                                                          path: str) -> None:
    status, headers, body = http(web_server.address,
                                 f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert status == 502, (status, headers, body)
    assert "x-injected" not in headers and body != b"x"


def test_a_good_response_keeps_its_headers(web_server: ServerProcess) -> None:
    status, headers, body = http(web_server.address, b"GET /good HTTP/1.1\r\n\r\n")
    assert (status, headers["x-good"], body) == (200, "a, b; q=1", b"fine")


def test_a_header_sent_twice_reaches_the_handler_with_both_values(
        web_server: ServerProcess) -> None:
    status, _headers, body = http(
        web_server.address,
        b"GET /echo-headers HTTP/1.1\r\nHost: h\r\nAccept: a/b\r\nX-Multi: 1\r\n"
        b"x-multi: 2\r\nAccept: c/d\r\n\r\n")
    assert status == 200
    assert json.loads(body) == {"Host": "h", "Accept": "a/b, c/d", "X-Multi": "1, 2"}
