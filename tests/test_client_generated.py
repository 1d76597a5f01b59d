"""The blocking client's shared code is generated from the asyncio client's
(tools/async_to_sync.py): the checked-in files are what the script writes, and the two clients
offer the same operations."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fluxcore.client import AsyncClient, AsyncSearch, Client, Search

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "async_to_sync.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_up_to_date() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, (
        f"run `python tools/async_to_sync.py` and commit what it writes:\n{out.stdout}"
        f"{out.stderr}")


def test_transform_drops_async_and_renames() -> None:
    script = load_script()
    source = (
        '__all__ = ["AsyncSearch"]\n\n\n'
        "class AsyncSearch:  # a comment stays\n"
        "    async def fetch(self) -> AsyncIterator[int]:\n"
        "        for x in await self._call(1):\n"
        "            yield x\n")
    out = script.to_sync(source, "example.py")
    body = out.split("\n", 2)[2]  # after the header
    assert out.startswith("# Generated from example.py by tools/async_to_sync.py")
    assert body == (
        '__all__ = ["Search"]\n\n\n'
        "class Search:  # a comment stays\n"
        "    def fetch(self) -> Iterator[int]:\n"
        "        for x in self._call(1):\n"
        "            yield x\n")


def test_transform_refuses_what_has_no_sync_meaning() -> None:
    script = load_script()
    with pytest.raises(SystemExit, match="gather"):
        script.to_sync("async def f():\n    await asyncio.gather(g())\n", "example.py")


PUBLIC_ONLY_SYNC = {"answer", "request_async", "publish_batch_async"}
PUBLIC_ONLY_ASYNC = {"request_nowait", "publish_batch_nowait"}


def public(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and callable(member)}


def test_both_clients_offer_the_same_operations() -> None:
    sync, aio = public(Client), public(AsyncClient)
    assert set(sync) - PUBLIC_ONLY_SYNC == set(aio) - PUBLIC_ONLY_ASYNC
    for name in set(sync) & set(aio):
        assert list(sync[name].parameters) == list(aio[name].parameters), name
    assert set(public(Search)) == set(public(AsyncSearch))


def test_transform_keeps_lines_aligned_under_their_bracket() -> None:
    script = load_script()
    source = (
        "async def fetch(self, a: int,\n"
        "                b: int) -> AsyncSearch:\n"
        "    return await self._call(\n"
        "        a, b)\n")
    body = script.to_sync(source, "example.py").split("\n", 2)[2]
    assert body == (
        "def fetch(self, a: int,\n"
        "          b: int) -> Search:\n"
        "    return self._call(\n"
        "        a, b)\n")
