"""Child-process side of the multi-process tests (crash, tail, lock, disk full).

Run as ``python tests/_writer_proc.py <command> <json-args>``. The test modules load the
payload helpers from this file by path, so it must stay importable without side effects.

Every payload is self-describing: a 12-byte header ``<u64 tag, u32 size>`` followed by
``size`` bytes derived from the header, so any record read back can be checked on its own.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import resource
import signal
import struct
import sys
import time

_HEADER = struct.Struct("<QI")
HEADER_SIZE = _HEADER.size


def make_payload(tag: int, size: int) -> bytes:
    head = _HEADER.pack(tag, size)
    return head + hashlib.shake_128(head).digest(size)


def check_payload(payload: bytes) -> tuple[int, int]:
    """Return (tag, size) of a payload made by make_payload; AssertionError if it is not one."""
    assert len(payload) >= HEADER_SIZE, f"payload too short: {len(payload)} bytes"
    tag, size = _HEADER.unpack_from(payload)
    assert len(payload) == HEADER_SIZE + size, (
        f"tag {tag}: payload is {len(payload)} bytes, header says {HEADER_SIZE + size}"
    )
    assert payload == make_payload(tag, size), f"tag {tag}: payload bytes differ"
    return tag, size


def child_env() -> dict[str, str]:
    """Environment for a child that must import the same fluxcore as this process."""
    import fluxcore

    root = os.path.dirname(os.path.dirname(os.path.abspath(fluxcore.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _pick_size(rng: random.Random, big_ok: bool) -> int:
    r = rng.random()
    if r < 0.70:
        return rng.randint(0, 200)
    if r < 0.92 or not big_ok:
        return rng.randint(200, 8000)
    return rng.randint(50_000, 300_000)


def cmd_crash(a: dict) -> None:
    """Append random batches forever; after each append returns, log its indexes to a side file."""
    import numpy as np

    import fluxcore

    rng = random.Random(a["seed"])
    log = fluxcore.Log(
        a["path"],
        segment_file_size=a["segment_file_size"],
        fsync=a["fsync"],
        page_cache_bytes=a.get("page_cache_bytes", fluxcore.log.DEFAULT_PAGE_CACHE_BYTES),
    )
    side = open(a["side"], "w", buffering=1)  # noqa: SIM115 - lives until SIGKILL
    print("ready", flush=True)
    tag = a["seed"] << 32
    spent = 0
    while True:
        n = rng.randint(1, 40)
        sizes = [_pick_size(rng, spent < a["budget"]) for _ in range(n)]
        spent += sum(sizes)
        payloads = [make_payload(tag + k, s) for k, s in enumerate(sizes)]
        how = rng.random()
        if how < 0.3:
            segs = np.array([rng.randrange(128) for _ in range(n)], dtype=np.uint8)
            idx = [int(i) for i in log.append_batch(payloads, segments=segs)]
        elif how < 0.5:
            idx = [
                int(i) for i in log.append_batch(payloads, keys=[f"k{tag + k}" for k in range(n)])
            ]
        elif how < 0.65:
            idx = [int(i) for i in log.append_batch(payloads)]
        elif how < 0.85:
            bounds = np.zeros(n + 1, dtype=np.int64)
            np.cumsum([len(p) for p in payloads], out=bounds[1:])
            idx = [int(i) for i in log.append_buffer(b"".join(payloads), bounds)]
        else:
            idx = [log.append(p, segment=rng.randrange(128)) for p in payloads]
        items = zip(idx, sizes, strict=True)
        side.write(" ".join(f"{i}:{tag + k}:{s}" for k, (i, s) in enumerate(items)) + "\n")
        side.flush()
        tag += n


def cmd_crash_many(a: dict) -> None:
    """Append small batches to one of `logs` logs at random, forever, and log the acknowledged
    records to a side file as `log:index:tag:size`: under `always` when the append returns, under
    `interval` when the log's durable index (moved by the background sync) reaches them."""
    import fluxcore

    rng = random.Random(a["seed"])
    logs = [
        fluxcore.Log(
            os.path.join(a["path"], f"log-{k}"),
            segment_file_size=a["segment_file_size"],
            fsync=a["fsync"],
            fsync_interval_ms=a.get("fsync_interval_ms", 100),
        )
        for k in range(a["logs"])
    ]
    side = open(a["side"], "w", buffering=1)  # noqa: SIM115 - lives until SIGKILL
    print("ready", flush=True)
    tag = a["seed"] << 32
    pending: list[tuple[int, int, str]] = []  # interval: (log, index, item) not yet durable
    while True:
        k = rng.randrange(len(logs))
        n = rng.randint(1, 5)
        sizes = [rng.randint(0, 3000) for _ in range(n)]
        payloads = [make_payload(tag + j, s) for j, s in enumerate(sizes)]
        if rng.random() < 0.5:
            idx = [int(i) for i in logs[k].append_batch(payloads)]
        else:
            idx = [logs[k].append(p) for p in payloads]
        items = [f"{k}:{i}:{tag + j}:{s}" for j, (i, s) in enumerate(zip(idx, sizes, strict=True))]
        tag += n
        if a["fsync"] == "always":
            side.write(" ".join(items) + "\n")
            continue
        # interval: acknowledged once the sync scheduler made them durable, in the background
        pending.extend((k, i, item) for i, item in zip(idx, items, strict=True))
        durable = [log.durable_index for log in logs]
        done = [item for k_, i, item in pending if i <= durable[k_]]
        if done:
            side.write(" ".join(done) + "\n")
            pending = [p for p in pending if p[1] > durable[p[0]]]
        time.sleep(0.001)


def _check_tail_record(index: int, payload: bytes, seq: int, indexes: list[int]) -> None:
    tag, _ = check_payload(payload)
    assert tag == seq, f"expected record #{seq}, got #{tag} (index {index})"
    assert not indexes or index > indexes[-1], f"index {index} not above {indexes[-1]}"


def cmd_tail(a: dict) -> None:
    """Read-only reader: tail until `count` records were seen, then dump their indexes."""
    import fluxcore

    log = fluxcore.Log(a["path"], readonly=True)
    print("ready", flush=True)
    deadline = time.monotonic() + a["timeout"]
    indexes: list[int] = []
    after = 0
    waits = 0
    while len(indexes) < a["count"]:
        assert time.monotonic() < deadline, f"timed out after {len(indexes)} records"
        b = log.read(after=after, verify=True)
        if len(b) == 0:
            waits += 1
            if log.wait(after, timeout=1.0):
                b = log.read(after=after, verify=True)
                assert len(b) > 0, f"wait({after}) returned True but read found nothing"
            else:
                continue
        for index, payload in b:
            _check_tail_record(index, payload, len(indexes), indexes)
            indexes.append(index)
        after = b.next_after
    extra = log.read(after=after)
    assert len(extra) == 0, f"{len(extra)} records beyond the expected {a['count']}"
    log.close()
    with open(a["out"], "w") as f:
        json.dump({"indexes": indexes, "waits": waits}, f)


def write_paced(log, count: int, seed: int) -> list[int]:
    """Append `count` self-describing records (tags 0..count-1), paced so a reader tails them."""
    rng = random.Random(seed)
    out: list[int] = []
    seq = 0
    while seq < count:
        n = min(count - seq, rng.randint(1, 12))
        sizes = [
            rng.randint(60_000, 200_000) if rng.random() < 0.08 else rng.randint(0, 3000)
            for _ in range(n)
        ]
        payloads = [make_payload(seq + k, s) for k, s in enumerate(sizes)]
        if rng.random() < 0.5:
            out.extend(int(i) for i in log.append_batch(payloads))
        else:
            out.extend(log.append(p) for p in payloads)
        seq += n
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.01)
    return out


def cmd_write(a: dict) -> None:
    """Writer for a reader in the parent process; dumps the appended indexes when done."""
    import fluxcore

    with fluxcore.Log(a["path"], segment_file_size=a["segment_file_size"], fsync="never") as log:
        print("ready", flush=True)
        assert sys.stdin.readline().strip() == "go"
        indexes = write_paced(log, a["count"], a["seed"])
    with open(a["out"], "w") as f:
        json.dump({"indexes": indexes}, f)


def cmd_fill(a: dict) -> None:
    """Append records of given sizes (tags 0..n-1), print the indexes, maybe skip close()."""
    import fluxcore

    log = fluxcore.Log(a["path"], segment_file_size=a["segment_file_size"], fsync=a["fsync"])
    indexes = [log.append(make_payload(k, s)) for k, s in enumerate(a["sizes"])]
    if a["close"]:
        log.close()
    sys.stdout.write(json.dumps({"indexes": indexes}) + "\n")
    sys.stdout.flush()
    if not a["close"]:
        os._exit(0)  # like a crash: no close, no final sync, no checkpoint


def cmd_hold(a: dict) -> None:
    """Hold the writer lock until killed."""
    import fluxcore

    log = fluxcore.Log(a["path"])
    log.append(b"held")
    print("locked", flush=True)
    while True:
        time.sleep(1)


def cmd_trylock(a: dict) -> None:
    """Try to open a writer; print the outcome."""
    import fluxcore

    try:
        log = fluxcore.Log(a["path"])
    except Exception as e:  # noqa: BLE001 - reporting which exception to the parent
        print(
            json.dumps(
                {
                    "error": type(e).__name__,
                    "is_log_error": isinstance(e, fluxcore.LogError),
                    "message": str(e),
                }
            ),
            flush=True,
        )
        return
    log.close()
    print(json.dumps({"error": None}), flush=True)


def _full_error(e: BaseException) -> bool:
    import fluxcore

    if isinstance(e, fluxcore.LogFullError):
        return True
    return isinstance(e, OSError) and e.errno in (errno.EFBIG, errno.ENOSPC)


def _read_all(log) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    after = 0
    while True:
        b = log.read(after=after, verify=True)
        if len(b) == 0:
            return out
        out.extend(b)
        after = b.next_after


def _describe(e: BaseException) -> dict:
    return {
        "type": type(e).__name__,
        "errno": getattr(e, "errno", None),
        "message": str(e),
        "is_log_full": type(e).__name__ == "LogFullError",
    }


def cmd_diskfull(a: dict) -> None:
    """RLIMIT_FSIZE below the segment file size: append until the next file cannot be created.

    Asserts in this process (a failure exits non-zero with a traceback) and prints a JSON summary.
    """
    import fluxcore

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    sfs = a["segment_file_size"]
    low = sfs // 2
    result: dict = {}

    # Phase 1: a log whose first file exists, then the limit drops below one segment file.
    log = fluxcore.Log(a["path"], segment_file_size=sfs, fsync="never")
    written: list[tuple[int, bytes]] = []
    seq = 0
    for _ in range(5):
        p = make_payload(seq, 20_000)
        written.append((log.append(p), p))
        seq += 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (low, hard))
    err = None
    for _ in range(4 * sfs // 20_000):
        p = make_payload(seq, 20_000)
        try:
            written.append((log.append(p), p))
        except Exception as e:  # noqa: BLE001 - classified below
            err = e
            break
        seq += 1
    assert err is not None, "no error although the next segment file cannot be created"
    result["first_error"] = _describe(err)
    assert _full_error(err), f"unexpected error {err!r}"
    assert str(err), "error has an empty message"
    assert log.last_index == written[-1][0], "a failed append moved last_index"
    # Trying again fails the same way and writes nothing, also as a batch.
    for attempt in (
        lambda: log.append(make_payload(seq, 20_000)),
        lambda: log.append_batch([make_payload(seq, 20_000)] * 3),
    ):
        try:
            attempt()
        except Exception as e:  # noqa: BLE001
            assert _full_error(e), f"unexpected error on retry {e!r}"
        else:
            raise AssertionError("append succeeded although the log is full")
    assert _read_all(log) == written, "records appended before the error are not all readable"
    result["before_full"] = len(written)

    # Raise the soft limit again: appends continue in the same process.
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    for _ in range(3 * sfs // 20_000):
        p = make_payload(seq, 20_000)
        written.append((log.append(p), p))
        seq += 1
    assert _read_all(log) == written
    log.close()
    with fluxcore.Log(a["path"], segment_file_size=sfs) as log:
        assert log.recovery["dropped_records"] == 0, log.recovery
        assert _read_all(log) == written
        assert log.verify() == len(written)
    result["total"] = len(written)

    # Phase 2: a fresh log while the limit is already too low for its first file.
    resource.setrlimit(resource.RLIMIT_FSIZE, (low, hard))
    path2 = a["path"] + "-fresh"
    log2 = None
    try:
        log2 = fluxcore.Log(path2, segment_file_size=sfs, fsync="never")
        log2.append(b"first")
    except Exception as e:  # noqa: BLE001
        assert _full_error(e), f"unexpected error for a fresh log {e!r}"
        result["fresh_error"] = _describe(e)
    else:
        raise AssertionError("a fresh log appended although its first file cannot be created")
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    if log2 is None:
        log2 = fluxcore.Log(path2, segment_file_size=sfs, fsync="never")
    i = log2.append(b"first")
    assert _read_all(log2) == [(i, b"first")]
    log2.close()
    with fluxcore.Log(path2, segment_file_size=sfs) as log2:
        assert _read_all(log2) == [(i, b"first")]
    print(json.dumps(result), flush=True)


COMMANDS = {
    "crash": cmd_crash,
    "crash_many": cmd_crash_many,
    "tail": cmd_tail,
    "write": cmd_write,
    "fill": cmd_fill,
    "hold": cmd_hold,
    "trylock": cmd_trylock,
    "diskfull": cmd_diskfull,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](json.loads(sys.argv[2]))
