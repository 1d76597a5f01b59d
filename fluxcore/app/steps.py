"""The app's logic written once for both the blocking and the asyncio app: what is not I/O
(dispatch, serialization, aggregates, periodic jobs) is a generator that yields the I/O it
needs, as `Call`s of a backend method or `Await`s of a handler's coroutine, and gets each
outcome sent back (or its exception thrown in). `run_sync` performs the steps with a blocking
backend, `run_async` with an asyncio one (or a blocking one). A backend method may itself be
written as steps (the fixture's memory, which calls handlers): they are performed in turn."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Generator
from typing import Any, NamedTuple, TypeVar

__all__ = ["Await", "Call", "Steps", "run_async", "run_sync"]

T = TypeVar("T")


class Call(NamedTuple):
    """Calls `method` of the backend with these arguments."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}  # noqa: RUF012 - never mutated


class Await(NamedTuple):
    """Runs a coroutine handler to its end."""

    coroutine: Coroutine[Any, Any, Any]


Steps = Generator[Call | Await, Any, T]


def run_sync(steps: Steps[T], backend: Any,
             run_coroutine: Callable[[Coroutine[Any, Any, Any]], Any]) -> T:
    outcome: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = steps.send(outcome) if failure is None else steps.throw(failure)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        outcome = failure = None
        try:
            if isinstance(step, Call):
                outcome = getattr(backend, step.method)(*step.args, **step.kwargs)
                if inspect.isgenerator(outcome):  # a backend method written as steps
                    outcome = run_sync(typing.cast(Steps[Any], outcome), backend,
                                       run_coroutine)
            else:
                outcome = run_coroutine(step.coroutine)
        except Exception as exc:  # noqa: BLE001 - thrown into the steps, where it belongs
            failure = exc


async def run_async(steps: Steps[T], backend: Any) -> T:
    outcome: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = steps.send(outcome) if failure is None else steps.throw(failure)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        outcome = failure = None
        try:
            if isinstance(step, Call):
                outcome = getattr(backend, step.method)(*step.args, **step.kwargs)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
                elif inspect.isgenerator(outcome):  # a backend method written as steps
                    outcome = await run_async(typing.cast(Steps[Any], outcome), backend)
            else:
                outcome = await step.coroutine
        except Exception as exc:  # noqa: BLE001 - thrown into the steps, where it belongs
            failure = exc
