"""A SIGTERM that reaches an app while `run()` starts it stops the app cleanly: the handler is in
place before the consumers start (before, a SIGTERM sent as soon as the handlers answered could
still meet Python's default action and kill the process)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from .service_harness import TOKEN, ServerProcess, module_server, stopped_by_sigterm


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory, "app-signals")


# start() is made slow, and says when it begins, so the signal lands inside it every time.
_SYNC = """
import time
from fluxcore.app import Microclient
app = Microclient('slow-start', {address!r}, {token!r}, project='signals')
@app.handle_command
def noop(command: dict) -> None:
    pass
real_start = app.start
def slow_start(*args, **kwargs):
    print('starting', flush=True)
    time.sleep(1.0)
    return real_start(*args, **kwargs)
app.start = slow_start
app.run()
print('stopped', flush=True)
"""

_ASYNC = """
import asyncio
from fluxcore.app import AsyncMicroclient
app = AsyncMicroclient('slow-start', {address!r}, {token!r}, project='signals')
@app.handle_command
async def noop(command: dict) -> None:
    pass
real_start = app.start
async def slow_start(*args, **kwargs):
    print('starting', flush=True)
    await asyncio.sleep(1.0)
    return await real_start(*args, **kwargs)
app.start = slow_start
app.run()
print('stopped', flush=True)
"""


@pytest.mark.parametrize("script", [_SYNC, _ASYNC], ids=["Microclient", "AsyncMicroclient"])
def test_sigterm_while_run_starts_the_app_stops_it_cleanly(live: ServerProcess,
                                                          script: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", script.format(address=live.address, token=TOKEN)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "starting\n"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert stopped_by_sigterm(proc) == "stopped\n"
