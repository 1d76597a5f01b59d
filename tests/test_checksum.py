"""Our own CRC32C (SSE4.2 where the CPU has it, tables elsewhere) against the crc32c package."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import crc32c as crc32c_package
from hypothesis import given
from hypothesis import strategies as st

from fluxcore._ext import _log


def test_known_vector() -> None:
    assert _log.crc32c(b"123456789") == 0xE3069283
    assert _log.crc32c(b"") == 0


def test_every_length_and_alignment_matches_package() -> None:
    rng = random.Random(11)
    block = rng.randbytes(4096)
    for length in range(0, 200):
        for start in range(0, 9):
            data = block[start : start + length]
            assert _log.crc32c(data) == crc32c_package.crc32c(data)


@given(st.binary(max_size=5000), st.binary(max_size=500))
def test_chained_values_match_one_pass(head: bytes, tail: bytes) -> None:
    assert _log.crc32c(tail, _log.crc32c(head)) == crc32c_package.crc32c(head + tail)


def test_accepts_buffers() -> None:
    data = bytearray(b"fluxcore" * 100)
    assert _log.crc32c(memoryview(data)[8:]) == crc32c_package.crc32c(bytes(data[8:]))


def test_hardware_flag_is_a_bool() -> None:
    assert isinstance(_log.crc32c_hardware(), bool)


def test_software_path_matches_package() -> None:
    # The table fallback, forced in a child process (the choice is made once, at import).
    script = (
        "import random, crc32c\n"
        "from fluxcore._ext import _log\n"
        "assert not _log.crc32c_hardware()\n"
        "rng = random.Random(3)\n"
        "for n in range(0, 300):\n"
        "    d = rng.randbytes(n)\n"
        "    assert _log.crc32c(d) == crc32c.crc32c(d), n\n"
        "print('ok')\n"
    )
    env = dict(os.environ, FLUXCORE_CRC_SOFTWARE="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
