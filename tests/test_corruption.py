"""Damaged segment files: mid-log corruption is reported (or repaired), torn tails are cut.

Logs are written by a child process that exits without close() (like a crash), so that opening
them has to scan the tail. Record layout (contract): u32 length (header + payload), u32 CRC32C,
u64 index, u16 segment, u16 flags, u32 reserved, payload; records 8-byte aligned.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fluxcore

HELPER = Path(__file__).with_name("_writer_proc.py")
_spec = importlib.util.spec_from_file_location("_fluxcore_writer_proc", HELPER)
wp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wp)

MiB = 1 << 20
REC_HEADER = 24


def fill(path: Path, sizes: list[int], *, close: bool, fsync: str = "never") -> list[int]:
    """Append make_payload(k, sizes[k]) in a child process; return the indexes."""
    args = {
        "path": str(path),
        "sizes": sizes,
        "segment_file_size": MiB,
        "fsync": fsync,
        "close": close,
    }
    r = subprocess.run(
        [sys.executable, str(HELPER), "fill", json.dumps(args)],
        env=wp.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["indexes"]


def seg_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def file_of(path: Path, index: int) -> Path:
    files = [f for f in seg_files(path) if int(f.stem) <= index]
    return files[-1]


def align8(n: int) -> int:
    return (n + 7) & ~7


def record_offset(file: Path, index: int, payload_len: int) -> int:
    """File offset of the record with this index, found from the on-disk layout."""
    data = file.read_bytes()
    needle = struct.pack("<Q", index)
    pos = data.find(needle)
    while pos >= 0:
        start = pos - 8
        if (
            start >= 0
            and start % 8 == 0
            and struct.unpack_from("<I", data, start)[0] == REC_HEADER + payload_len
        ):
            return start
        pos = data.find(needle, pos + 1)
    raise AssertionError(f"record {index} not found in {file.name}")


def xor_byte(file: Path, offset: int, mask: int = 0xFF) -> None:
    with open(file, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def read_all(log: fluxcore.Log, verify: bool = True) -> list[tuple[int, bytes]]:
    out, after = [], 0
    while True:
        b = log.read(after=after, verify=verify)
        if len(b) == 0:
            return out
        out.extend((int(i), p) for i, p in b)
        after = b.next_after


def expected(indexes: list[int], sizes: list[int], upto: int) -> list[tuple[int, bytes]]:
    return [(indexes[k], wp.make_payload(k, sizes[k])) for k in range(upto)]


def assert_names(err: fluxcore.CorruptLogError, file: Path, offset: int) -> None:
    assert os.path.samefile(err.path, file), (err.path, file)
    assert err.offset == offset, (err.offset, offset)
    assert file.name in str(err), str(err)


# Byte to damage inside record #BAD, relative to its start.
FIELDS = {
    "payload": (REC_HEADER + 100, 0xFF),
    "crc": (4, 0xFF),
    "index": (8, 0xFF),
    "segment": (16, 0x80),
    "length": (0, 0x01),
    "length_misaligned": (0, 0x10),
}
COUNT, SIZE, BAD = 40, 2000, 20


@pytest.mark.parametrize("field", list(FIELDS))
def test_mid_last_file_corruption_raises(tmp_path, field):
    path = tmp_path / "log"
    sizes = [SIZE] * COUNT
    idx = fill(path, sizes, close=False)
    f = file_of(path, idx[BAD])
    assert f == seg_files(path)[-1] and file_of(path, idx[-1]) == f
    off = record_offset(f, idx[BAD], wp.HEADER_SIZE + SIZE)
    where, mask = FIELDS[field]
    xor_byte(f, off + where, mask)
    before = f.read_bytes()
    with pytest.raises(fluxcore.CorruptLogError) as ei:
        fluxcore.Log(path)
    assert isinstance(ei.value, fluxcore.LogError)
    assert_names(ei.value, f, off)
    assert f.read_bytes() == before, "a failed open changed the file"
    # the failed open released the lock and changed nothing: it fails the same way again
    with pytest.raises(fluxcore.CorruptLogError) as ei:
        fluxcore.Log(path)
    assert_names(ei.value, f, off)


def test_repair_truncates_at_bad_record(tmp_path):
    path = tmp_path / "log"
    sizes = [SIZE] * COUNT
    idx = fill(path, sizes, close=False)
    f = seg_files(path)[-1]
    rec = align8(REC_HEADER + wp.HEADER_SIZE + SIZE)
    off = record_offset(f, idx[BAD], wp.HEADER_SIZE + SIZE)
    end = record_offset(f, idx[-1], wp.HEADER_SIZE + SIZE) + rec
    assert end - off == (COUNT - BAD) * rec
    xor_byte(f, off + REC_HEADER + 7)

    with fluxcore.Log(path, repair=True) as log:
        assert log.recovery == {
            **log.recovery,
            "truncated_bytes": end - off,
            "dropped_records": COUNT - BAD,
        }
        assert read_all(log) == expected(idx, sizes, BAD)
        assert log.last_index == idx[BAD - 1]
        # a new record of the same size lands exactly where the dropped ones were aligned
        p = wp.make_payload(10_000, SIZE)
        i = log.append(p)
        assert i > idx[BAD - 1]
        assert log.verify() == BAD + 1
    want = [*expected(idx, sizes, BAD), (i, p)]
    for repair in (False, True):
        with fluxcore.Log(path, repair=repair) as log:
            assert log.recovery["dropped_records"] == 0, log.recovery
            assert read_all(log) == want, (
                "records dropped by repair came back, or records were lost"
            )
            assert log.verify() == BAD + 1


def test_repair_after_crash_again(tmp_path):
    """Repair, then a crash-style writer appends more: the dropped records never reappear."""
    path = tmp_path / "log"
    sizes = [SIZE] * COUNT
    idx = fill(path, sizes, close=False)
    f = seg_files(path)[-1]
    off = record_offset(f, idx[BAD], wp.HEADER_SIZE + SIZE)
    xor_byte(f, off + REC_HEADER + 7)
    with fluxcore.Log(path, repair=True) as log:
        assert log.recovery["dropped_records"] == COUNT - BAD
    more = fill(path, [SIZE] * 3, close=False)  # tags 0..2 again, new indexes
    with fluxcore.Log(path) as log:
        got = read_all(log)
    assert got == expected(idx, sizes, BAD) + [
        (more[k], wp.make_payload(k, SIZE)) for k in range(3)
    ]


def test_older_file_corruption_found_by_verify_and_read(tmp_path):
    path = tmp_path / "log"
    sizes = [100_000] * 35
    idx = fill(path, sizes, close=True, fsync="interval")
    files = seg_files(path)
    assert len(files) >= 3
    first = files[0]
    in_first = [k for k in range(len(idx)) if file_of(path, idx[k]) == first]
    assert len(in_first) >= 5
    bad = in_first[3]
    off = record_offset(first, idx[bad], wp.HEADER_SIZE + sizes[bad])
    xor_byte(first, off + REC_HEADER + 5000)

    for readonly in (False, True):
        with fluxcore.Log(path, readonly=readonly) as log:
            with pytest.raises(fluxcore.CorruptLogError) as ei:
                log.verify()
            assert_names(ei.value, first, off)
            with pytest.raises(fluxcore.CorruptLogError) as ei:
                read_all(log, verify=True)
            assert_names(ei.value, first, off)
            # records before the damage, and every later file, still read and verify
            b = log.read(after=0, max_count=bad, verify=True)
            assert [(int(i), p) for i, p in b] == expected(idx, sizes, bad)
            b = log.read(after=idx[in_first[-1]], verify=True)
            assert len(b) > 0 and int(b.indexes[0]) == idx[in_first[-1] + 1]


@pytest.mark.parametrize("close", [False, True], ids=["crashed", "closed"])
def test_truncated_last_file(tmp_path, close):
    path = tmp_path / "log"
    sizes = [150_000] * 12
    idx = fill(path, sizes, close=close)
    files = seg_files(path)
    assert len(files) >= 2
    last = files[-1]
    cut = len(idx) - 2
    assert file_of(path, idx[cut]) == last and file_of(path, idx[cut - 1]) == last
    off = record_offset(last, idx[cut], wp.HEADER_SIZE + sizes[cut])
    os.truncate(last, off + 30)  # shorter than its header says, mid-record

    with fluxcore.Log(path, segment_file_size=MiB) as log:
        assert read_all(log) == expected(idx, sizes, cut)
        assert log.last_index == idx[cut - 1]
        p = wp.make_payload(999, 200_000)
        i = log.append(p)
        assert i > idx[cut - 1]
        assert read_all(log)[-1] == (i, p)
    with fluxcore.Log(path, segment_file_size=MiB) as log:
        assert read_all(log) == [*expected(idx, sizes, cut), (i, p)]
        assert log.verify() == cut + 1


def _garbage(kind: str, next_index: int) -> bytes:
    if kind == "zeros":
        return bytes(4096)
    if kind == "random":
        return bytes((k * 131 + 7) % 251 + 1 for k in range(3000))
    # a plausible header (length, wrong CRC, next index) and half a payload: a torn write
    return struct.pack("<IIQHHI", REC_HEADER + 500, 0xDEADBEEF, next_index, 3, 0, 0) + b"\x5a" * 250


@pytest.mark.parametrize("kind", ["zeros", "random", "torn_header"])
def test_garbage_after_last_record(tmp_path, kind):
    path = tmp_path / "log"
    sizes = [3000] * 20
    idx = fill(path, sizes, close=False)
    f = seg_files(path)[-1]
    end = record_offset(f, idx[-1], wp.HEADER_SIZE + 3000) + align8(
        REC_HEADER + wp.HEADER_SIZE + 3000
    )
    junk = _garbage(kind, idx[-1] + 1)
    assert end + len(junk) <= f.stat().st_size
    with open(f, "r+b") as fh:
        fh.seek(end)
        fh.write(junk)

    with fluxcore.Log(path) as log:
        rec = log.recovery
        if kind == "zeros":
            assert rec == {**rec, "truncated_bytes": 0, "dropped_records": 0}
        else:
            # the torn record may count as one dropped record, never a complete one
            assert rec["dropped_records"] <= 1, rec
        assert read_all(log) == expected(idx, sizes, 20)
        # the torn tail is cut: nothing of the garbage is left for a later scan to find
        with open(f, "rb") as fh:
            fh.seek(end)
            assert fh.read(len(junk)) == bytes(len(junk)), "garbage left after the last record"
        p = wp.make_payload(77, 10)
        i = log.append(p)
        assert i > idx[-1]
        assert read_all(log)[-1] == (i, p)
    with fluxcore.Log(path) as log:
        assert read_all(log) == [*expected(idx, sizes, 20), (i, p)]
        assert log.verify() == 21


PROBE = textwrap.dedent("""
    import json, sys
    import fluxcore
    stage = "open"
    try:
        log = fluxcore.Log(sys.argv[1])
        stage = "read"
        after = 0
        while True:
            b = log.read(after=after, verify=True)
            if len(b) == 0:
                break
            after = b.next_after
        stage = "verify"
        log.verify()
        stage = "none"
        print(json.dumps({"stage": stage}))
    except Exception as e:
        print(json.dumps({"stage": stage, "type": type(e).__name__,
                          "log_error": isinstance(e, fluxcore.LogError), "message": str(e)}))
""")


def test_file_shorter_than_header_page(tmp_path):
    path = tmp_path / "log"
    idx = fill(path, [150_000] * 20, close=True, fsync="interval")
    files = seg_files(path)
    assert len(files) >= 3
    victim = files[1]
    os.truncate(victim, 100)
    # in a child: a crash (SIGBUS on a short mapping) must not take the test run down
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        env=wp.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"probe crashed (rc {r.returncode}): {r.stderr}"
    out = json.loads(r.stdout)
    assert out["stage"] != "none", "a truncated segment file went unnoticed"
    assert out["log_error"], out
    assert victim.name in out["message"], out
    assert len(idx) == 20
