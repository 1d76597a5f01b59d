"""Damaged segment files: mid-log corruption is reported (or repaired), torn tails are cut.

Logs are written by a child process that exits without close() (like a crash), so that opening
them has to scan the tail. Record layout (contract): u32 length (header + payload), u32 CRC32C,
u64 index, u16 segment, u16 flags, u32 reserved, payload; records 8-byte aligned.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import time
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


# -- closed logs cut short or with single bytes flipped (plain reads verify the CRCs) ----------

CLOSED_COUNT, CLOSED_SIZE = 3000, 1000


@pytest.fixture(scope="module")
def closed_log(tmp_path_factory):
    """A cleanly closed log (fsync="always", 1 MiB files) of 3,000 records of 1,000 bytes, and
    the payloads written, in order."""
    path = tmp_path_factory.mktemp("closed") / "log"
    payloads = [wp.make_payload(k, CLOSED_SIZE - wp.HEADER_SIZE) for k in range(CLOSED_COUNT)]
    with fluxcore.Log(path, segment_file_size=MiB, fsync="always") as log:
        indexes: list[int] = []
        for k in range(0, CLOSED_COUNT, 100):
            indexes.extend(int(i) for i in log.append_batch(payloads[k : k + 100]))
    return path, list(zip(indexes, payloads, strict=True))


def copy_log(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def plain_read(log: fluxcore.Log) -> tuple[list[tuple[int, bytes]], BaseException | None]:
    """Every record a plain read() hands out, and the CorruptLogError that stopped it, if any."""
    out: list[tuple[int, bytes]] = []
    after = 0
    try:
        while True:
            b = log.read(after=after)
            if len(b) == 0:
                return out, None
            out.extend((int(i), p) for i, p in b)
            after = b.next_after
    except fluxcore.CorruptLogError as exc:
        return out, exc


def payload_ends(path: Path, file: Path) -> list[tuple[int, int]]:
    """(index, end offset of the record's bytes) of every record of one file."""
    out = []
    with fluxcore.Log(path, readonly=True) as log:
        after = int(file.stem) - 1
        while True:
            b = log.read(after=after)
            if len(b) == 0 or b.file.path != str(file):
                return out
            out.extend(
                (int(i), int(o) + int(n))
                for i, o, n in zip(b.indexes, b.offsets, b.lengths, strict=True)
            )
            after = b.next_after


def test_closed_log_last_file_cut_below_checkpoint(tmp_path, closed_log):
    """The last file cut mid-record, far below its checkpoint: the writer reports exactly the
    records it lost and never hands out the cut record (zero-filled) as if it were intact."""
    template, written = closed_log
    path = copy_log(template, tmp_path / "log")
    last = seg_files(path)[-1]
    ends = payload_ends(path, last)
    cut = 100_000
    kept_in_last = sum(1 for _, end in ends if end <= cut)
    assert 0 < kept_in_last < len(ends)
    os.truncate(last, cut)
    keep = len(written) - len(ends) + kept_in_last

    with fluxcore.Log(path, segment_file_size=MiB) as log:
        assert log.recovery["dropped_records"] == len(ends) - kept_in_last, log.recovery
        assert log.recovery["truncated_bytes"] > 0
        got, err = plain_read(log)
        assert err is None
        assert got == written[:keep]
        i = log.append(b"after the cut")
    with fluxcore.Log(path, segment_file_size=MiB) as log:
        assert log.recovery["dropped_records"] == 0
        assert plain_read(log) == ([*written[:keep], (i, b"after the cut")], None)
        assert log.verify() == keep + 1


@pytest.mark.parametrize("cut_at", ["first_record", "sparse_index"])
def test_closed_log_last_file_cut_before_its_records(tmp_path, closed_log, cut_at):
    """Cut inside the first record, or before any record: every record of the file is lost,
    and the writer says so (the empty file goes, as after a crash right after a roll)."""
    template, written = closed_log
    path = copy_log(template, tmp_path / "log")
    last = seg_files(path)[-1]
    ends = payload_ends(path, last)
    first_record = ends[0][1] - CLOSED_SIZE - REC_HEADER
    os.truncate(last, first_record + 500 if cut_at == "first_record" else 6000)
    keep = len(written) - len(ends)

    with fluxcore.Log(path, segment_file_size=MiB) as log:
        assert log.recovery["dropped_records"] == len(ends), log.recovery
        assert log.recovery["truncated_bytes"] >= len(ends) * CLOSED_SIZE
        assert plain_read(log) == (written[:keep], None)
        i = log.append(b"next")
    with fluxcore.Log(path, segment_file_size=MiB) as log:
        assert plain_read(log) == ([*written[:keep], (i, b"next")], None)


def test_random_truncations(tmp_path, closed_log):
    """80 random cuts of closed segment files: a cut in the last file is reported exactly, a
    cut in an earlier one raises CorruptLogError (at open or at the read that reaches it);
    nothing is ever handed out that was not written, and nothing is skipped silently."""
    template, written = closed_log
    rng = random.Random(7)
    files = seg_files(template)
    for case in range(80):
        path = copy_log(template, tmp_path / f"cut{case}")
        pos = rng.randrange(len(files))
        victim = path / files[pos].name
        cut = rng.randrange(0, victim.stat().st_size)
        os.truncate(victim, cut)
        what = f"case {case}: {victim.name} cut to {cut}"
        try:
            log = fluxcore.Log(path, segment_file_size=MiB)
        except fluxcore.CorruptLogError as exc:
            # only damage in mid-log, or a header that is gone, may refuse the open
            assert pos < len(files) - 1 or cut < 4096, what
            assert victim.name in str(exc), what
            continue
        with log:
            got, err = plain_read(log)
            assert got == written[: len(got)], f"{what}: a read handed out other bytes"
            if err is not None:
                assert pos < len(files) - 1, f"{what}: {err}"
                assert victim.name in str(err), what
                continue
            dropped = log.recovery["dropped_records"]
            assert len(got) == len(written) - dropped, f"{what}: {log.recovery}, {len(got)} read"
            if pos < len(files) - 1:
                raise AssertionError(f"{what}: a cut in mid-log went unnoticed")


HEADER_FIELDS = range(0, 104)  # magic .. record_count


def test_random_byte_flips(tmp_path, closed_log):
    """200 single-byte flips in closed segment files (header, sparse index, records): a plain
    read by a reader or by the writer either raises CorruptLogError or returns exactly what
    was written; never other bytes, never a record under another index, never a gap."""
    template, written = closed_log
    rng = random.Random(11)
    files = seg_files(template)
    for case in range(200):
        path = copy_log(template, tmp_path / f"flip{case}")
        victim = path / rng.choice(files).name
        with fluxcore.Log(path, readonly=True) as log:
            used = log.read(after=int(victim.stem) - 1).file.sealed_end or None
        size = victim.stat().st_size
        kind = rng.random()
        if kind < 0.1:
            offset = rng.choice(HEADER_FIELDS)
        elif kind < 0.3:
            offset = rng.randrange(4096, 12288)  # the sparse index of a 1 MiB file
        else:
            offset = rng.randrange(12288, used or size)
        xor_byte(victim, offset, rng.randrange(1, 256))
        what = f"case {case}: {victim.name} byte {offset} flipped"
        for readonly in (True, False):
            try:
                log = fluxcore.Log(path, segment_file_size=MiB, readonly=readonly)
            except fluxcore.CorruptLogError as exc:
                assert not readonly, what
                assert victim.name in str(exc), what
                continue
            with log:
                got, err = plain_read(log)
                assert got == written[: len(got)], f"{what}: a read handed out other bytes"
                if err is not None:
                    assert victim.name in str(err), f"{what}: {err}"
                    continue
                assert log.recovery["dropped_records"] == len(written) - len(got), what


def test_verify_false_is_the_opt_out(tmp_path, closed_log):
    """read() checks CRCs; read(verify=False) skips that (raw speed) and hands out what is
    there, damaged or not."""
    template, written = closed_log
    path = copy_log(template, tmp_path / "log")
    first = seg_files(path)[0]
    index, payload = written[5]
    off = record_offset(first, index, len(payload))
    xor_byte(first, off + REC_HEADER + 10)
    with fluxcore.Log(path, readonly=True) as log:
        # the records before the damaged one read as usual; the read that reaches it raises
        b = log.read(after=0)
        assert [(int(i), p) for i, p in b] == written[:5]
        with pytest.raises(fluxcore.CorruptLogError) as ei:
            log.read(after=b.next_after)
        assert_names(ei.value, first, off)
        with pytest.raises(fluxcore.CorruptLogError):
            log.read(after=written[4][0], max_count=10, segments=(0, 1))
        raw = log.read(after=0, verify=False)
        assert raw[5][0] == index and raw[5][1] != payload
        with pytest.raises(fluxcore.CorruptLogError):
            list(log.tail(after=0, timeout=0))
        raw_tail = [p for b in log.tail(after=0, timeout=0, verify=False) for _, p in b]
        assert len(raw_tail) == len(written) and raw_tail[5] != payload
        with pytest.raises(fluxcore.CorruptLogError):
            log.find(index)


def test_service_never_delivers_a_damaged_record(tmp_path, caplog):
    """The server reads with CRC checks too: a consumer gets the records before a damaged one,
    never the damaged bytes, and its reads fail with `unavailable` naming the file; requests
    by index fail the same way, and the server goes on serving."""
    from fluxcore.client import Client, MessageType
    from fluxcore.protocol import ProtocolError

    from .service_harness import TOKEN, ServerProcess

    data = tmp_path / "data"
    payloads = [b"event %04d " % k + bytes(range(64)) for k in range(40)]
    server = ServerProcess(data).start()
    try:
        with Client.connect(server.address, token=TOKEN, name="t") as client:
            client.publish_batch(MessageType.EVENT, payloads, type="E")
    finally:
        assert server.stop() == 0
    damaged = [f for f in data.rglob("*.seg") if payloads[20] in f.read_bytes()]
    assert len(damaged) == 1
    offset = damaged[0].read_bytes().index(payloads[20]) + 3
    xor_byte(damaged[0], offset)

    server = ServerProcess(data).start()
    try:
        with Client.connect(server.address, token=TOKEN, name="t") as client:
            got: list[bytes] = []
            with caplog.at_level("ERROR", logger="fluxcore.client"):
                consumer = client.consume("c", MessageType.EVENT, lambda m: got.append(m.data),
                                          from_index=0, max_size=8)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any(
                        damaged[0].name in r.getMessage() for r in caplog.records):
                    time.sleep(0.05)
                consumer.stop()
            failures = [r.getMessage() for r in caplog.records if "read failed" in r.getMessage()]
            assert failures and "unavailable" in failures[0], failures
            assert damaged[0].name in failures[0], failures
            assert got == payloads[:20], "damaged bytes delivered, or records before them not"
            before = client.read_from_index(MessageType.EVENT, 0, max_size=100)
            assert [m.data for m in before] == payloads[:20]
            with pytest.raises(ProtocolError, match=damaged[0].name) as ei:
                client.read_from_index(MessageType.EVENT, before[-1].index + 1, max_size=100)
            assert ei.value.code == "unavailable"
            client.ping()
    finally:
        assert server.stop() == 0
