"""ReplyFuture: what a request of the blocking client waits on (fluxcore/client/_futures.py)."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from fluxcore.client._futures import ReplyFuture


def test_result_and_callbacks() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    seen: list[int] = []
    future.add_done_callback(lambda f: seen.append(f.result()))
    assert not future.done() and not future.wait(0)
    future.set_result(7)
    assert future.done() and future.result() == 7 and future.result(0) == 7  # again: still 7
    assert future.exception() is None and not future.cancelled()
    future.add_done_callback(lambda f: seen.append(f.result() + 1))  # settled: runs now
    assert seen == [7, 8]


def test_exception_timeout_and_cancel() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    with pytest.raises(TimeoutError):
        future.result(0.01)
    future.set_exception(ConnectionError("gone"))
    with pytest.raises(ConnectionError, match="gone"):
        future.result()
    assert isinstance(future.exception(), ConnectionError)
    cancelled: ReplyFuture[int] = ReplyFuture()
    assert cancelled.cancel() and cancelled.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        cancelled.result()


def test_a_waiting_thread_wakes_and_every_callback_runs_once() -> None:
    # Callbacks added while another thread settles: each runs exactly once, whichever wins.
    for _ in range(200):
        future: ReplyFuture[int] = ReplyFuture()
        calls: list[int] = []
        woke = threading.Event()

        def wait(future: ReplyFuture[int] = future, woke: threading.Event = woke) -> None:
            future.result(10)
            woke.set()

        waiter = threading.Thread(target=wait)
        waiter.start()
        settler = threading.Thread(target=future.set_result, args=(1,))
        settler.start()
        for i in range(5):
            future.add_done_callback(lambda _f, i=i, calls=calls: calls.append(i))
        settler.join()
        waiter.join(10)
        assert woke.is_set() and sorted(calls) == [0, 1, 2, 3, 4]
