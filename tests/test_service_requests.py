"""Request/response against a real server: commands and queries answered by a consumer's
handler, handler errors as RequestError and in the ERROR log, many requests at once, results
routed only to their requester, timeouts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxcore.client import AsyncClient, Client, ConnectionLost, Message, MessageType, RequestError

from .service_harness import TOKEN, ServerProcess

REQUEST_TYPES = [MessageType.COMMAND, MessageType.QUERY]


@pytest.fixture
def handler_client(server: ServerProcess) -> Iterator[Client]:
    """A second connection that plays the service handling the requests."""
    with Client.connect(server.address, token=TOKEN, name="handler") as c:
        yield c


@pytest.mark.parametrize("message_type", REQUEST_TYPES, ids=lambda t: t.name)
def test_request_response(client: Client, handler_client: Client,
                          message_type: MessageType) -> None:
    seen: list[Message] = []

    def handle(message: Message) -> bytes:
        seen.append(message)
        return b"done:" + message.data

    handler_client.consume("order-service", message_type, handle, from_index=0)
    result = client.request(message_type, b"payload", type="CreateOrder", key="order-1",
                            metadata={"user": "u1"}, timeout=30)
    assert result.data == b"done:payload"
    assert not result.is_error
    assert result.target == client.client_id
    assert result.source == handler_client.client_id
    # the request as the handler saw it
    assert len(seen) == 1
    request = seen[0]
    assert (request.type, request.data, request.metadata) == ("CreateOrder", b"payload",
                                                              {"user": "u1"})
    assert request.source == client.client_id and request.request_id >= 0
    assert result.request_id == request.request_id
    # the request and its result are both in the logs
    logged = client.read_from_index(message_type, 0)
    assert [m.index for m in logged] == [request.index]
    results = client.read_from_index(MessageType.RESULT, 0)
    assert [m.data for m in results] == [b"done:payload"]


def test_handler_returning_str_and_none(client: Client, handler_client: Client) -> None:
    answers = {b"str": "text", b"none": None}
    handler_client.consume("svc", MessageType.QUERY, lambda m: answers[m.data], from_index=0)
    assert client.request(MessageType.QUERY, b"str", timeout=30).data == b"text"
    assert client.request(MessageType.QUERY, b"none", timeout=30).data == b""


@pytest.mark.parametrize("message_type", REQUEST_TYPES, ids=lambda t: t.name)
def test_handler_error_reaches_the_sender_and_the_error_log(
        client: Client, handler_client: Client, message_type: MessageType) -> None:
    def handle(message: Message) -> bytes:
        if message.data == b"bad":
            raise ValueError("no such order: 42")
        return b"ok"

    consumer = handler_client.consume("failing", message_type, handle, from_index=0)
    with pytest.raises(RequestError, match="no such order: 42") as caught:
        client.request(message_type, b"bad", type="CancelOrder", timeout=30)
    failed = caught.value.result
    assert failed.is_error and failed.target == client.client_id
    # the handler keeps working after a failure
    assert client.request(message_type, b"good", timeout=30).data == b"ok"
    assert consumer.errors == 1

    def errors() -> list[Message]:
        return client.read_from_index(MessageType.ERROR, 0)

    deadline = time.monotonic() + 30
    while not errors() and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = errors()
    assert len(logged) == 1, "the failure was not written to the ERROR log exactly once"
    error = logged[0]
    assert b"no such order: 42" in error.data
    assert error.is_error
    assert error.request_id == failed.request_id
    assert error.source == handler_client.client_id


def test_many_concurrent_requests_get_their_own_results(
        client: Client, handler_client: Client) -> None:
    def handle(message: Message) -> bytes:
        return b"r:" + message.data[::-1]

    handler_client.consume("echo", MessageType.QUERY, handle, trackers=3, from_index=0)
    count = 1000
    futures = {client.request_async(MessageType.QUERY, b"q%05d" % n, type="Q", key=f"k{n}"): n
               for n in range(count)}
    done, not_done = concurrent.futures.wait(futures, timeout=120)
    assert not not_done, f"{len(not_done)} of {count} requests got no result"
    for future in done:
        n = futures[future]
        assert future.result().data == b"r:" + (b"q%05d" % n)[::-1]
    assert len({f.result().request_id for f in done}) == count


def test_requests_from_many_threads(client: Client, handler_client: Client) -> None:
    handler_client.consume("threads", MessageType.COMMAND, lambda m: m.data * 2,
                           trackers=2, from_index=0)
    failures: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            for n in range(50):
                payload = b"w%d-%d" % (worker, n)
                assert client.request(MessageType.COMMAND, payload, timeout=60).data == (
                    payload * 2)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:3]


def test_a_requester_only_gets_its_own_results(server: ServerProcess,
                                               handler_client: Client) -> None:
    handler_client.consume("echo", MessageType.COMMAND, lambda m: b"echo:" + m.data,
                           trackers=2, from_index=0)
    with Client.connect(server.address, token=TOKEN, name="alice") as alice, \
            Client.connect(server.address, token=TOKEN, name="bob") as bob:
        received: dict[str, list[Message]] = {"alice": [], "bob": []}
        # both clients number their requests from 1: the same request ids on both sides
        futures = []
        for n in range(200):
            for name, requester in (("alice", alice), ("bob", bob)):
                futures.append((name, n, requester.request_async(
                    MessageType.COMMAND, f"{name}-{n}".encode())))
        for name, n, future in futures:
            result = future.result(60)
            received[name].append(result)
            assert result.data == f"echo:{name}-{n}".encode()
        assert all(m.target == alice.client_id for m in received["alice"])
        assert all(m.target == bob.client_id for m in received["bob"])
        # the request ids do collide: only the target filter keeps the results apart
        ids_alice = {m.request_id for m in received["alice"]}
        ids_bob = {m.request_id for m in received["bob"]}
        assert ids_alice & ids_bob
        # a third client tracking RESULT as a requester would sees none of them
        with Client.connect(server.address, token=TOKEN, name="carol") as carol:
            reply = carol.read({
                "type": int(MessageType.RESULT), "topic": None, "consumer": "carol-results",
                "tracker": "carol-0", "max_size": 1000, "max_timeout_ms": 500,
                "type_filter": None, "filter_target": True, "ignore_segment": True,
                "client_index": True, "last_index": 0, "purge_timeout_ms": None}, 30)
            assert reply.messages == []
            everything = carol.read_from_index(MessageType.RESULT, 0, max_size=1000)
            assert len(everything) == 400


def test_timeout_when_nobody_handles(client: Client) -> None:
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        client.request(MessageType.COMMAND, b"anyone?", type="Lost", timeout=1.0)
    assert time.monotonic() - began >= 1.0
    future = client.request_async(MessageType.QUERY, b"anyone?")
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(1.0)
    assert not future.done()
    # the request itself was stored: a handler that comes later still gets it
    assert [m.data for m in client.read_from_index(MessageType.QUERY, 0)] == [b"anyone?"]


def test_late_handler_answers_a_waiting_request(client: Client,
                                                handler_client: Client) -> None:
    future = client.request_async(MessageType.QUERY, b"patience")
    time.sleep(0.5)
    assert not future.done()
    handler_client.consume("late", MessageType.QUERY, lambda m: b"here", from_index=0)
    assert future.result(30).data == b"here"


def test_timed_out_requests_are_not_kept(client: Client) -> None:
    for _ in range(5):
        with pytest.raises(TimeoutError):
            client.request(MessageType.QUERY, b"nobody answers", type="Unanswered", timeout=0.2)
    assert client._requests == {}


# -- the request path: results woken by the reader, the results READ sent with requests ------


def _echo_or_fail(message: Message) -> bytes:
    if message.data.startswith(b"fail"):
        raise KeyError(message.data.decode())
    return b"re:" + message.data


def test_threads_mixing_request_and_request_async_get_their_own_results(
        client: Client, handler_client: Client) -> None:
    handler_client.consume("mixed", MessageType.COMMAND, _echo_or_fail, trackers=2,
                           from_index=0)
    failures: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            for n in range(40):
                payload = b"%s-%d-%d" % (b"fail" if n % 7 == 0 else b"ok", worker, n)
                if n % 2:
                    future = client.request_async(MessageType.COMMAND, payload)
                    outcome: Message | BaseException
                    try:
                        outcome = future.result(60)
                    except RequestError as exc:
                        outcome = exc
                else:
                    try:
                        outcome = client.request(MessageType.COMMAND, payload, timeout=60)
                    except RequestError as exc:
                        outcome = exc
                if payload.startswith(b"fail"):
                    assert isinstance(outcome, RequestError), outcome
                    assert payload.decode() in str(outcome)
                    assert outcome.result.target == client.client_id
                else:
                    assert isinstance(outcome, Message), outcome
                    assert outcome.data == b"re:" + payload
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:3]
    assert client._requests == {}


def test_async_tasks_get_their_own_results_and_errors(server: ServerProcess,
                                                      handler_client: Client) -> None:
    handler_client.consume("tasks", MessageType.QUERY, _echo_or_fail, trackers=2,
                           from_index=0)

    async def main() -> None:
        async with await AsyncClient.connect(server.address, token=TOKEN,
                                             name="tasks") as client:
            async def run(worker: int) -> None:
                for n in range(10):
                    payload = b"%s-%d-%d" % (b"fail" if n % 5 == 0 else b"ok", worker, n)
                    if payload.startswith(b"fail"):
                        with pytest.raises(RequestError, match=payload.decode()):
                            await client.request(MessageType.QUERY, payload, timeout=60)
                    elif n % 2:
                        future = await client.request_nowait(MessageType.QUERY, payload)
                        assert (await asyncio.wait_for(future, 60)).data == b"re:" + payload
                    else:
                        result = await client.request(MessageType.QUERY, payload, timeout=60)
                        assert result.data == b"re:" + payload
                        assert result.target == client.client_id

            await asyncio.gather(*(run(w) for w in range(50)))
            assert client._requests == {}
            with pytest.raises(TimeoutError):
                await client.request(MessageType.COMMAND, b"nobody handles commands here",
                                     timeout=0.3)
            assert client._requests == {}

    asyncio.run(main())


def test_requests_after_the_results_read_came_back_empty(client: Client,
                                                         handler_client: Client) -> None:
    # Between requests no READ of results waits at the server: the next request takes it
    # along. Also after the last one came back empty at its deadline (1 s), and when another
    # thread's publish is what carries it.
    handler_client.consume("idle", MessageType.COMMAND, lambda m: m.data, from_index=0)
    assert client.request(MessageType.COMMAND, b"first", timeout=30).data == b"first"
    future = client.request_async(MessageType.QUERY, b"nobody answers queries")
    time.sleep(1.5)  # the READ that waited for it came back empty and went out again
    assert not future.done()
    future.cancel()
    time.sleep(1.5)  # nothing waits now: the READ came back empty and stays owed
    client.publish(MessageType.EVENT, b"carries the owed READ")
    assert client.request(MessageType.COMMAND, b"second", timeout=30).data == b"second"
    for n in range(20):
        assert client.request(MessageType.COMMAND, b"%d" % n, timeout=30).data == b"%d" % n
    assert client.request(MessageType.COMMAND, b"no limit", timeout=None).data == b"no limit"
    with pytest.raises(TimeoutError):
        client.request(MessageType.QUERY, b"nobody answers queries", timeout=-1)
    assert client._requests == {}


def test_a_request_waiting_across_a_server_restart_gets_its_result(
        tmp_path: Path) -> None:
    # The READ of results is resent on the new connection: the result of a request stored
    # before the restart still reaches its requester.
    server = ServerProcess(tmp_path / "data").start()
    try:
        with Client.connect(server.address, token=TOKEN, name="patient") as requester:
            future = requester.request_async(MessageType.COMMAND, b"survive")
            deadline = time.monotonic() + 30
            while not requester.read_from_index(MessageType.COMMAND, 0):
                assert time.monotonic() < deadline, "the request was not stored"
                time.sleep(0.05)
            server.stop()
            server.start()
            with Client.connect(server.address, token=TOKEN, name="late-handler") as handler:
                handler.consume("svc", MessageType.COMMAND, lambda m: b"after:" + m.data,
                                from_index=0)
                assert future.result(60).data == b"after:survive"
    finally:
        server.kill()


def test_requests_fail_at_once_when_the_connection_is_gone_for_good(
        server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="mortal",
                        reconnect=False) as requester:
        future = requester.request_async(MessageType.COMMAND, b"no handler")
        time.sleep(0.2)
        server.kill()
        with pytest.raises(ConnectionLost):
            future.result(20)
