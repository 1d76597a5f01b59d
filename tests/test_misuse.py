"""Wrong use of the API fails loudly with the documented exception and leaves the log intact."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fluxcore

HELPER = Path(__file__).with_name("_writer_proc.py")
_spec = importlib.util.spec_from_file_location("_fluxcore_writer_proc", HELPER)
wp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wp)
MiB = 1 << 20


def read_all(log):
    out, after = [], 0
    while True:
        b = log.read(after=after)
        if len(b) == 0:
            return out
        out.extend((int(i), p) for i, p in b)
        after = b.next_after


@pytest.fixture
def log(tmp_path):
    with fluxcore.Log(tmp_path / "log", segment_file_size=MiB) as lg:
        yield lg


def test_exception_hierarchy():
    assert issubclass(fluxcore.LogError, Exception)
    for exc in (
        fluxcore.CorruptLogError,
        fluxcore.LogClosedError,
        fluxcore.LogLockedError,
        fluxcore.RecordTooLargeError,
        fluxcore.LogFullError,
    ):
        assert issubclass(exc, fluxcore.LogError), exc


CLOSED_CALLS = {
    "append": lambda lg: lg.append(b"x"),
    "append_batch": lambda lg: lg.append_batch([b"x"]),
    "append_buffer": lambda lg: lg.append_buffer(b"xy", np.array([0, 1, 2], dtype=np.int64)),
    "read": lambda lg: lg.read(after=0),
    "find": lambda lg: lg.find(0),
    "find_time": lambda lg: lg.find_time(0),
    "wait": lambda lg: lg.wait(0, timeout=0.01),
    "sync": lambda lg: lg.sync(),
    "verify": lambda lg: lg.verify(),
    "stats": lambda lg: lg.stats(),
}


@pytest.mark.parametrize("call", list(CLOSED_CALLS))
def test_closed_log(tmp_path, call):
    lg = fluxcore.Log(tmp_path / "log")
    lg.append(b"before")
    assert not lg.closed
    lg.close()
    assert lg.closed
    lg.close()  # idempotent
    with pytest.raises(fluxcore.LogClosedError):
        CLOSED_CALLS[call](lg)


def test_context_manager_closes(tmp_path):
    with fluxcore.Log(tmp_path / "log") as lg:
        lg.append(b"x")
    assert lg.closed
    with pytest.raises(fluxcore.LogClosedError):
        lg.append(b"y")
    with fluxcore.Log(tmp_path / "log") as lg2:  # the lock was released
        assert len(read_all(lg2)) == 1


@pytest.mark.parametrize("bad", ["text", 123, None, 1.5, ["b"]])
def test_append_wrong_payload_type(log, bad):
    log.append(b"ok")
    last = log.last_index
    with pytest.raises(TypeError):
        log.append(bad)
    with pytest.raises(TypeError):
        log.append_batch([b"a", bad, b"c"])
    assert log.last_index == last, "a rejected call wrote something"
    assert [p for _, p in read_all(log)] == [b"ok"]


def test_append_batch_wrong_container(log):
    with pytest.raises(TypeError):
        log.append_batch(12345)
    with pytest.raises(TypeError):
        log.append_buffer("a str is not a buffer", np.array([0, 3], dtype=np.int64))
    assert log.last_index == 0


def test_record_too_large(log):
    log.append(b"small")
    last = log.last_index
    files = sorted(Path(log.path).iterdir())
    huge = b"\x01" * (2 * MiB)
    with pytest.raises(fluxcore.RecordTooLargeError):
        log.append(huge)
    with pytest.raises(fluxcore.RecordTooLargeError):
        log.append(b"\x02" * MiB)  # a whole file, plus header: still too large
    with pytest.raises(fluxcore.RecordTooLargeError):
        log.append_batch([b"a", b"b", huge, b"c"])
    buf = b"ab" + huge
    with pytest.raises(fluxcore.RecordTooLargeError):
        log.append_buffer(buf, np.array([0, 1, 2, len(buf)], dtype=np.int64))
    assert log.last_index == last, "part of a rejected batch was written"
    assert sorted(Path(log.path).iterdir()) == files
    assert [p for _, p in read_all(log)] == [b"small"]
    i = log.append(b"after")
    assert i > last
    assert [p for _, p in read_all(log)] == [b"small", b"after"]
    assert log.verify() == 2


@pytest.mark.parametrize("kwargs", [{"bogus": 1}, {"segment_size": MiB}, {"fsync_ms": 5}])
def test_unknown_option(tmp_path, kwargs):
    with pytest.raises(TypeError):
        fluxcore.Log(tmp_path / "log", **kwargs)


def test_options_are_keyword_only(tmp_path):
    with pytest.raises(TypeError):
        fluxcore.Log(tmp_path / "log", True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fsync": "sometimes"},
        {"fsync": ""},
        {"segment_file_size": 10},
        {"segment_file_size": MiB - 1},
        {"segment_file_size": 0},
        {"segment_file_size": -MiB},
        {"fsync_interval_ms": -1},
        {"retention_ms": -1},
        {"retention_bytes": -1},
        {"page_cache_bytes": 0},
        {"page_cache_bytes": -1},
        {"max_mapped_files": 1},
    ],
)
def test_bad_option_value(tmp_path, kwargs):
    with pytest.raises(ValueError):
        fluxcore.Log(tmp_path / "log", **kwargs)
    # a rejected open leaves no lock behind
    with fluxcore.Log(tmp_path / "log") as lg:
        lg.append(b"x")


def test_second_writer_same_process(tmp_path):
    path = tmp_path / "log"
    with fluxcore.Log(path) as first:
        first.append(b"one")
        with pytest.raises(fluxcore.LogLockedError):
            fluxcore.Log(path)
        # a reader is fine while the writer holds the lock
        with fluxcore.Log(path, readonly=True) as reader:
            assert [p for _, p in read_all(reader)] == [b"one"]
        first.append(b"two")  # the failed open did not disturb the writer
    with fluxcore.Log(path) as again:
        assert [p for _, p in read_all(again)] == [b"one", b"two"]


def _run(cmd: str, args: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HELPER), cmd, json.dumps(args)],
        env=wp.child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_second_writer_other_process(tmp_path):
    path = tmp_path / "log"
    with fluxcore.Log(path) as lg:
        lg.append(b"mine")
        r = subprocess.run(
            [sys.executable, str(HELPER), "trylock", json.dumps({"path": str(path)})],
            env=wp.child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["error"] == "LogLockedError", out
        assert out["is_log_error"]


def test_lock_held_by_other_process_released_on_kill(tmp_path):
    path = tmp_path / "log"
    proc = _run("hold", {"path": str(path)})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "locked", proc.stderr.read() if proc.poll() is not None else line
        with pytest.raises(fluxcore.LogLockedError):
            fluxcore.Log(path)
        with fluxcore.Log(path, readonly=True) as reader:
            assert [p for _, p in read_all(reader)] == [b"held"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    with fluxcore.Log(path) as lg:  # a dead writer's lock is gone
        assert [p for _, p in read_all(lg)] == [b"held"]
        lg.append(b"next")


def test_append_on_readonly(tmp_path):
    path = tmp_path / "log"
    with fluxcore.Log(path) as w:
        w.append(b"x")
    with fluxcore.Log(path, readonly=True) as r:
        with pytest.raises(fluxcore.LogError):
            r.append(b"y")
        with pytest.raises(fluxcore.LogError):
            r.append_batch([b"y"])
        with pytest.raises(fluxcore.LogError):
            r.append_buffer(b"y", np.array([0, 1], dtype=np.int64))
        assert [p for _, p in read_all(r)] == [b"x"]


def test_create_false_on_missing_dir(tmp_path):
    with pytest.raises((fluxcore.LogError, OSError)):
        fluxcore.Log(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_preset_index_must_increase(log):
    i = log.append(b"a")
    for bad in (i, i - 1, 1, 0):
        with pytest.raises(ValueError):
            log.append(b"b", index=bad)
    assert log.last_index == i
    assert log.append(b"c", index=i + 1) == i + 1
    with pytest.raises(ValueError):
        log.append(b"d", index=i + 1)
    assert [p for _, p in read_all(log)] == [b"a", b"c"]


def test_keys_or_segments_wrong_length(log):
    with pytest.raises(ValueError):
        log.append_batch([b"a", b"b"], keys=["k"])
    with pytest.raises(ValueError):
        log.append_batch([b"a", b"b"], keys=["k1", "k2", "k3"])
    with pytest.raises(ValueError):
        log.append_batch([b"a", b"b"], segments=np.array([1], dtype=np.uint8))
    with pytest.raises(ValueError):
        log.append_batch([b"a"], segments=np.array([1, 2], dtype=np.uint8))
    assert log.last_index == 0


@pytest.mark.parametrize("seg", [128, 255, 1000, -1])
def test_segment_out_of_range(log, seg):
    with pytest.raises(ValueError):
        log.append(b"x", segment=seg)
    assert log.last_index == 0


@pytest.mark.parametrize("seg", [128, 200, 255])
def test_batch_segment_out_of_range(log, seg):
    with pytest.raises(ValueError):
        log.append_batch([b"a", b"b", b"c"], segments=np.array([0, seg, 5], dtype=np.uint8))
    assert log.last_index == 0


@pytest.mark.parametrize("offsets", [[0, 5, 3], [0, 2, 99], [-1, 2]])
def test_append_buffer_bad_offsets(log, offsets):
    with pytest.raises(ValueError):
        log.append_buffer(b"0123456789", np.array(offsets, dtype=np.int64))
    assert log.last_index == 0


def test_batch_data_is_read_only(log):
    log.append(b"payload")
    b = log.read(after=0)
    with pytest.raises(TypeError):
        b.data[int(b.offsets[0])] = 0
    assert b.payloads() == [b"payload"]


# -- close() while other threads use the log -----------------------------------------------

WORKERS = {
    "append": lambda lg: lg.append(b"a" * 200),
    "append_batch": lambda lg: lg.append_batch([b"b" * 300] * 50),
    "read": lambda lg: [len(b) for b in lg.tail(after=0, timeout=0, max_count=500)],
    "verify": lambda lg: lg.verify(),
    "wait": lambda lg: lg.wait(lg.last_index + (1 << 40), timeout=None),
}


def _close_round(path: Path, fsync: str, pause: float) -> None:
    log = fluxcore.Log(path, segment_file_size=MiB, fsync=fsync, fsync_interval_ms=5)
    log.append_batch([b"x" * 100] * 1000)
    outcomes: dict[str, object] = {}
    acked: list[int] = []
    go = threading.Barrier(len(WORKERS) + 1)

    def work(name: str) -> None:
        go.wait()
        try:
            while True:
                result = WORKERS[name](log)
                if name == "append":
                    acked.append(result)
                elif name == "append_batch":
                    acked.extend(int(i) for i in result)
        except fluxcore.LogClosedError:
            outcomes[name] = "closed"
        except Exception as exc:  # noqa: BLE001 - the test reports it
            outcomes[name] = exc

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in WORKERS]
    for t in threads:
        t.start()
    go.wait()
    time.sleep(pause)
    log.close()
    for t in threads:
        t.join(timeout=60)
    hung = [n for n, t in zip(WORKERS, threads, strict=True) if t.is_alive()]
    assert not hung, f"{fsync}: still running after close(): {hung}"
    assert outcomes == dict.fromkeys(WORKERS, "closed"), outcomes
    with fluxcore.Log(path, segment_file_size=MiB) as again:  # every acknowledged append kept
        present = set()
        for b in again.tail(after=0, timeout=0):
            present.update(int(i) for i in b.indexes)
        assert present.issuperset(acked)


@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_close_while_threads_append_read_verify_and_wait(tmp_path, fsync):
    """close() from one thread while five others append, read, verify and wait: each of them
    gets LogClosedError promptly (none hangs, none sees another error), and every append that
    returned before is in the log."""
    rng = random.Random(3)
    for k in range(8):
        _close_round(tmp_path / f"log{k}", fsync, rng.uniform(0.0, 0.05))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"page_cache_bytes": True},
        {"page_cache_bytes": "1G"},
        {"retention_ms": 1.5},
        {"retention_bytes": "10"},
        {"fsync_interval_ms": 2.5},
        {"max_mapped_files": 8.0},
        {"segment_file_size": float(MiB)},
        {"fsync": 1},
    ],
)
def test_wrong_option_type(tmp_path, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        fluxcore.Log(tmp_path / "log", **kwargs)


# -- timeouts and arguments out of range or of the wrong type --------------------------------


@pytest.mark.parametrize("timeout", [float("nan"), -1, -0.001, float("-inf")])
def test_wait_and_tail_refuse_nan_and_negative_timeouts(log, timeout):
    log.append(b"x")
    with pytest.raises(ValueError, match="timeout"):
        log.wait(log.last_index, timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        log.tail(timeout=timeout)  # refused at the call, before the first batch
    with pytest.raises(TypeError, match="timeout"):
        log.wait(log.last_index, timeout="1")
    assert log.wait(0, timeout=0) is True
    assert log.wait(log.last_index, timeout=0) is False
    assert [len(b) for b in log.tail(timeout=0)] == [1]


OUT_OF_RANGE = {
    "read after=-1": ("after", lambda lg: lg.read(after=-1)),
    "read after=2**64": ("after", lambda lg: lg.read(after=2**64)),
    "read max_bytes=-1": ("max_bytes", lambda lg: lg.read(0, max_bytes=-1)),
    "read max_count=0": ("max_count", lambda lg: lg.read(0, max_count=0)),
    "read max_count=2**64": ("max_count", lambda lg: lg.read(0, max_count=2**64)),
    "append index=2**64": ("index", lambda lg: lg.append(b"x", index=2**64)),
    "append index=-1": ("index", lambda lg: lg.append(b"x", index=-1)),
    "find_time 2**60": ("ms", lambda lg: lg.find_time(2**60)),
    "find 2**65": ("index", lambda lg: lg.find(2**65)),
    "wait after=-1": ("after", lambda lg: lg.wait(-1, timeout=0)),
    "wait after=2**64": ("after", lambda lg: lg.wait(2**64, timeout=0)),
    "tail after=-5": ("after", lambda lg: lg.tail(after=-5, timeout=0)),
    "tail max_count=0": ("max_count", lambda lg: lg.tail(max_count=0, timeout=0)),
}


def test_find_before_the_first_record(log):
    i = log.append(b"x")
    assert log.find(-1) == log.find(0) == i
    assert log.find_time(-1) == log.find_time(0) == i


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_out_of_range_integers_raise_value_error(log, case):
    log.append(b"x")
    name, call = OUT_OF_RANGE[case]
    with pytest.raises(ValueError, match=name) as ei:
        call(log)
    assert not isinstance(ei.value, OverflowError)
    assert [p for _, p in read_all(log)] == [b"x"]


def _strided() -> memoryview:
    return memoryview(b"abcdefgh")[::2]


NOT_CONTIGUOUS = {
    "append": ("payload", lambda lg: lg.append(_strided())),
    "append_batch": ("payload 1", lambda lg: lg.append_batch([b"ok", _strided()])),
    "append_buffer": (
        "buffer", lambda lg: lg.append_buffer(_strided(), np.array([0, 2, 4], dtype=np.int64))
    ),
    "append_buffer 2-d": (
        "buffer", lambda lg: lg.append_buffer(np.zeros((4, 4), dtype=np.uint8)[:, 1],
                                              np.array([0, 4], dtype=np.int64))
    ),
}


@pytest.mark.parametrize("case", list(NOT_CONTIGUOUS))
def test_non_contiguous_buffers_are_refused_by_name(log, case):
    name, call = NOT_CONTIGUOUS[case]
    with pytest.raises(ValueError, match=name) as ei:
        call(log)
    assert not isinstance(ei.value, BufferError)
    assert log.last_index == 0


WRONG_TYPE = {
    "append segment=1.5": ("segment", lambda lg: lg.append(b"x", segment=1.5)),
    "append segment='3'": ("segment", lambda lg: lg.append(b"x", segment="3")),
    "append segment=True": ("segment", lambda lg: lg.append(b"x", segment=True)),
    "append index=5.0": ("index", lambda lg: lg.append(b"x", index=float(2**50))),
    "append_buffer offsets=str list": (
        "offsets", lambda lg: lg.append_buffer(b"0123456789", ["0", "5", "10"])
    ),
    "append_buffer offsets=floats": (
        "offsets", lambda lg: lg.append_buffer(b"0123456789", [0.0, 5.0, 10.0])
    ),
    "append_buffer offsets=str": ("offsets", lambda lg: lg.append_buffer(b"0123", "0123")),
    "append_batch keys=str": ("keys", lambda lg: lg.append_batch([b"a", b"b"], keys="ab")),
    "append_batch keys=bytes": ("keys", lambda lg: lg.append_batch([b"a", b"b"], keys=b"ab")),
    "append_batch segments=floats": (
        "segments", lambda lg: lg.append_batch([b"a", b"b"], segments=[0.5, 3])
    ),
    "append_batch segments=str": (
        "segments", lambda lg: lg.append_batch([b"a", b"b"], segments="ab")
    ),
    "read after=3.7": ("after", lambda lg: lg.read(after=3.7)),
    "read after='0'": ("after", lambda lg: lg.read(after="0")),
    "read max_count=1.0": ("max_count", lambda lg: lg.read(0, max_count=10.0)),
    "read max_bytes='1'": ("max_bytes", lambda lg: lg.read(0, max_bytes="1")),
    "read segments=(0.5, 3)": ("segments", lambda lg: lg.read(0, segments=(0.5, 3))),
    "read segments=('0', 3)": ("segments", lambda lg: lg.read(0, segments=("0", 3))),
    "find 1.5": ("index", lambda lg: lg.find(1.5)),
    "find_time 1.5": ("ms", lambda lg: lg.find_time(1.5)),
    "wait after=3.7": ("after", lambda lg: lg.wait(3.7, timeout=0)),
    "tail after=3.7": ("after", lambda lg: lg.tail(after=3.7, timeout=0)),
    "segments_of str": ("keys", lambda lg: fluxcore.segments_of("ab")),
}


@pytest.mark.parametrize("case", list(WRONG_TYPE))
def test_floats_and_strings_for_integers_raise_type_error(log, case):
    log.append(b"x")
    name, call = WRONG_TYPE[case]
    with pytest.raises(TypeError, match=name):
        call(log)
    assert [p for _, p in read_all(log)] == [b"x"], "a refused call wrote something"


def test_numpy_integers_are_integers(log):
    i = log.append(b"x", segment=np.uint8(3))
    j = log.append(b"y", index=np.uint64(i + 1))
    assert j == i + 1
    b = log.read(after=np.uint64(0), max_count=np.int64(10), segments=(np.int8(0), 128))
    assert [int(k) for k in b.indexes] == [i, j]
    assert log.read(after=b.indexes[0]).indexes.tolist() == [j]
    assert log.find(np.uint64(i)) == i
    idx = log.append_buffer(b"abcd", np.array([0, 2, 4], dtype=np.uint32),
                            segments=np.array([1, 2], dtype=np.int16))
    assert len(idx) == 2


def test_a_closed_log_stays_its_owners_while_the_owner_lock_is_held(tmp_path):
    """owner_lock: the writer lock outlives close() for as long as the owner holds its lock
    (what lets the server close idle logs and stay the only writer of its data directory)."""
    path = tmp_path / "log"
    owner_path = tmp_path / "owner.lock"
    owner = os.open(owner_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(owner, fcntl.LOCK_EX)
    try:
        with fluxcore.Log(path, owner_lock=owner_path) as lg:
            lg.append(b"one")
        with pytest.raises(fluxcore.LogLockedError, match=r"owner\.lock"):
            fluxcore.Log(path)  # closed, but still the owner's
        with fluxcore.Log(path, readonly=True) as reader:  # readers are never refused
            assert [p for _, p in read_all(reader)] == [b"one"]
        with fluxcore.Log(path, owner_lock=owner_path) as lg:  # the owner reopens it
            lg.append(b"two")
    finally:
        os.close(owner)  # the owner is gone: the log is free again
    with fluxcore.Log(path) as lg:
        assert [p for _, p in read_all(lg)] == [b"one", b"two"]
    other = tmp_path / "other.lock"
    with fluxcore.Log(path, owner_lock=other) as lg:  # nobody holds other.lock: no matter
        lg.append(b"three")
