"""Web requests through the service: an HTTP request on the service's port becomes a WEBREQUEST
message, a handler anywhere answers with a WEBRESPONSE message targeted back, and that becomes the
HTTP response. Nobody exposes an endpoint of their own.

The WEBREQUEST's metadata has `url` (path and query), `method` and `headers` (a JSON object); its
data is the body; its payload type is "METHOD /path", so that consumers can pick requests by a
type filter. A WEBRESPONSE's metadata may have `status` (default 200) and `headers`; its data is
the body. One request per connection (Connection: close); bodies need a Content-Length.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fluxcore._ext import _proto
from fluxcore.protocol import MessageType, decode_record, encode_metadata

if TYPE_CHECKING:
    from .project import Project

__all__ = ["HTTP_METHODS", "MAX_HEAD", "HttpError", "HttpRequest", "WebProxy", "http_response",
           "parse_http"]

HTTP_METHODS = (b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"PATC", b"OPTI")
MAX_HEAD = 64 * 1024  # request line and headers
_RECORD_HEADER_SIZE = 24
# What a handler may put in a response header (RFC 9110): a name is a token, a value has no
# control characters but tab, so a WEBRESPONSE can never add a header line or end the head.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout",
            411: "Length Required", 413: "Content Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


def parse_http(
    data: bytes | bytearray | memoryview, max_body: int
) -> tuple[HttpRequest, int] | None:
    """The request at the start of `data` and its length, or None while it is incomplete."""
    view = bytes(data[: MAX_HEAD + 4])
    end = view.find(b"\r\n\r\n")
    if end < 0:
        if len(view) > MAX_HEAD:
            raise HttpError(413, "request line and headers over 64 KiB")
        return None
    lines = view[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad request line")
    method, target, _version = parts
    if not target.startswith("/"):
        raise HttpError(400, "the target must be a path")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"bad header line {line[:40]!r}")
        headers.append((name, value.strip()))
    fields = {name.lower(): value for name, value in headers}
    if "transfer-encoding" in fields:
        raise HttpError(411, "chunked bodies are not taken: send a Content-Length")
    length_text = fields.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(400, "bad Content-Length")
    length = int(length_text)
    if length > max_body:
        raise HttpError(413, f"body over {max_body} bytes")
    total = end + 4 + length
    if len(data) < total:
        return None
    body = bytes(data[end + 4 : total])
    return HttpRequest(method, target, headers, body), total


def http_response(status: int, headers: list[tuple[str, str]], body: bytes,
                  head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    for name, value in headers:
        if name.lower() not in ("content-length", "connection", "transfer-encoding"):
            lines.append(f"{name}: {value}")
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    head = "\r\n".join(lines).encode("latin-1", "replace")
    return head if head_only else head + body


class Waiting:
    """An HTTP connection waiting for its WEBRESPONSE."""

    def __init__(self, respond: Any, head_only: bool) -> None:
        self.respond = respond  # called with the HTTP response bytes, once
        self.head_only = head_only
        self.timer: asyncio.TimerHandle | None = None


class WebProxy:
    """The web requests of one project: appends them, and routes each WEBRESPONSE back to the
    connection waiting for it (by target), reading the response log once for all of them."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.waiting: dict[str, Waiting] = {}
        self._after = 0  # responses up to this index were looked at
        self._watching = False

    def request(self, proxy_id: str, request: HttpRequest, respond: Any) -> None:
        """Appends the WEBREQUEST; `respond(bytes)` gets the HTTP response later."""
        responses = self.project.log("webresponse")
        if not self.waiting:
            self._after = max(self._after, responses.last_index)
        if not self._watching:
            self.project.watch_appends("webresponse", self)
            self._watching = True
        metadata = {"url": request.target, "method": request.method,
                    "headers": json.dumps(_header_object(request.headers))}
        self.project.append_own(
            "webrequest", MessageType.WEBREQUEST, request.body,
            payload_type=f"{request.method} {request.path}", source=proxy_id,
            metadata=encode_metadata(metadata), request_id=1)
        waiting = Waiting(respond, request.method == "HEAD")
        self.waiting[proxy_id] = waiting
        waiting.timer = asyncio.get_running_loop().call_later(
            self.project.config.web_timeout_s, self._expire, proxy_id)

    def forget(self, proxy_id: str) -> None:
        """The HTTP connection closed before its answer came."""
        waiting = self.waiting.pop(proxy_id, None)
        if waiting is not None and waiting.timer is not None:
            waiting.timer.cancel()

    def _expire(self, proxy_id: str) -> None:
        waiting = self.waiting.pop(proxy_id, None)
        if waiting is not None:
            waiting.respond(http_response(504, [("Content-Type", "text/plain")],
                                          b"no web response in time", waiting.head_only))

    def wake(self) -> None:
        """A WEBRESPONSE was appended: answer whoever it is for."""
        log = self.project.log("webresponse")
        while self.waiting:
            batch = log.read(self._after, max_count=4096)
            if len(batch) == 0:
                return
            self._after = batch.next_after
            targets = _proto.record_targets(batch)
            for position, target in enumerate(targets):
                waiting = self.waiting.pop(target, None) if target else None
                if waiting is None:
                    continue
                if waiting.timer is not None:
                    waiting.timer.cancel()
                waiting.respond(_to_http(batch, position, waiting.head_only))


def _to_http(batch: Any, position: int, head_only: bool) -> bytes:
    """The WEBRESPONSE at `position` of a log batch as an HTTP response."""
    message = _decode_record(batch, position)
    metadata = message.metadata
    try:
        status = int(metadata.get("status", "200"))
        raw_headers = json.loads(metadata.get("headers", "{}"))
        headers = [(str(k), _header_value(v)) for k, v in (
            raw_headers.items() if isinstance(raw_headers, dict) else raw_headers)]
    except (ValueError, TypeError):
        return http_response(502, [("Content-Type", "text/plain")],
                             b"the web response had bad status or headers", head_only)
    if not 100 <= status <= 599:
        return http_response(502, [("Content-Type", "text/plain")],
                             b"the web response had a bad status", head_only)
    if not all(_HEADER_NAME.fullmatch(k) and _HEADER_VALUE.fullmatch(v) for k, v in headers):
        return http_response(502, [("Content-Type", "text/plain")],
                             b"the web response had a header name or value HTTP does not allow",
                             head_only)
    return http_response(status, headers, message.data, head_only)


def _header_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"a header value is a string or a number, not {value!r}")
    return str(value)


def _header_object(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The request's headers as one JSON object: a name sent more than once (in any case)
    gets its values joined with ", " (RFC 9110), under its first spelling."""
    merged: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for name, value in headers:
        key = spelling.setdefault(name.lower(), name)
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


def _decode_record(batch: Any, position: int) -> Any:
    offset = int(batch.offsets[position])
    length = int(batch.lengths[position])
    return decode_record(bytes(batch.data[offset - _RECORD_HEADER_SIZE : offset + length]))
