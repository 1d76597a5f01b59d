"""What a request waits on: `AsyncReplyFuture` (an asyncio future) in AsyncClient, and
`ReplyFuture` in Client: a lock held until the answer is there. Settling it releases the lock;
a thread waiting for it takes the lock and gives it back. That is one lock per request, made
once, where a concurrent.futures.Future makes a condition, a reentrant lock and a lock per wait,
and runs several Python calls under them, on the path of every request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["AsyncReplyFuture", "ReplyFuture"]

T = TypeVar("T")

AsyncReplyFuture = asyncio.Future

# Orders adding a callback against settling (they may happen in two threads at once); held for
# a few bytecodes only, so one lock serves every ReplyFuture.
_callbacks_lock = threading.Lock()


class ReplyFuture(Generic[T]):
    """The answer to one request. Settled once: by whoever took the request from the client's
    table of waiting requests (a dict pop decides who that is)."""

    __slots__ = ("_callbacks", "_error", "_lock", "_result", "_settled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._settled = False
        self._result: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[ReplyFuture[T]], Any]] | None = None

    def done(self) -> bool:
        return self._settled

    def cancelled(self) -> bool:
        return isinstance(self._error, concurrent.futures.CancelledError)

    def cancel(self) -> bool:
        """Settles it with CancelledError (call only as its settler)."""
        self.set_exception(concurrent.futures.CancelledError())
        return True

    def set_result(self, result: T) -> None:
        self._result = result
        self._settle()

    def set_exception(self, exception: BaseException) -> None:
        self._error = exception
        self._settle()

    def _settle(self) -> None:
        with _callbacks_lock:
            self._settled = True
            callbacks, self._callbacks = self._callbacks, None
        self._lock.release()
        for callback in callbacks or ():
            callback(self)

    def add_done_callback(self, callback: Callable[[ReplyFuture[T]], Any]) -> None:
        """Calls `callback(self)` once settled: in the thread that settles it, or now."""
        with _callbacks_lock:
            if not self._settled:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        callback(self)

    def wait(self, timeout: float | None = None) -> bool:
        """True once settled; False if `timeout` seconds passed first."""
        if self._settled:
            return True
        if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        self._lock.release()  # for the next waiter
        return True

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.wait(timeout):
            raise TimeoutError(f"no answer in {timeout:g} s")
        return self._error

    def result(self, timeout: float | None = None) -> T:
        if not self.wait(timeout):
            raise TimeoutError(f"no answer in {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
