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


def _check_records_on_disk(directory: str) -> int:
    """Every record of every segment file carries the CRC32C of its length word and of the
    bytes after its CRC field, as the crc32c package computes it; returns the record count."""
    import struct
    from pathlib import Path

    import fluxcore

    checked = 0
    rng = random.Random(5)
    # Every length mod 8 next to every other: the batch path checksums records three at a time.
    sizes = [rng.randrange(0, 300) for _ in range(3000)] + [100] * 10 + [7, 8, 9, 1, 0]
    payloads = [rng.randbytes(n) for n in sizes]
    with fluxcore.Log(directory, segment_file_size=1 << 20) as log:
        start = 0
        while start < len(payloads):  # batches of 1 to 700 records
            step = rng.randrange(1, 700)
            log.append_batch(payloads[start : start + step])
            start += step
        log.append(b"single")
    for path in sorted(Path(directory).glob("*.seg")):
        raw = path.read_bytes()
        (off,) = struct.unpack_from("<Q", raw, 32)  # data_offset
        while off + 24 <= len(raw):
            length, crc = struct.unpack_from("<II", raw, off)
            if length == 0:
                break
            head = crc32c_package.crc32c(raw[off : off + 4])
            expected = crc32c_package.crc32c(raw[off + 8 : off + length], head)
            assert crc == expected, f"{path.name} offset {off}"
            checked += 1
            off += (length + 7) & ~7
    return checked


def test_records_on_disk_carry_the_package_crc(tmp_path) -> None:
    assert _check_records_on_disk(str(tmp_path / "log")) > 3000


def test_records_on_disk_software_path(tmp_path) -> None:
    script = (
        "import sys\n"
        "from tests.test_checksum import _check_records_on_disk\n"
        "from fluxcore._ext import _log\n"
        "assert not _log.crc32c_hardware()\n"
        "print(_check_records_on_disk(sys.argv[1]))\n"
    )
    env = dict(os.environ, FLUXCORE_CRC_SOFTWARE="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "log")],
        env=env, capture_output=True, text=True, cwd=root,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 3000
