"""Running out of space: RLIMIT_FSIZE in a child process, and a tiny tmpfs where mounting works."""

from __future__ import annotations

import errno
import gc
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fluxcore

HELPER = Path(__file__).with_name("_writer_proc.py")
_spec = importlib.util.spec_from_file_location("_fluxcore_writer_proc", HELPER)
wp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wp)

MiB = 1 << 20


def _is_full(e: BaseException) -> bool:
    if isinstance(e, fluxcore.LogFullError):
        return getattr(e, "errno", None) in (errno.EFBIG, errno.ENOSPC)
    return isinstance(e, OSError) and e.errno in (errno.EFBIG, errno.ENOSPC)


def test_log_full_error_type():
    assert issubclass(fluxcore.LogFullError, fluxcore.LogError)


def test_rlimit_fsize(tmp_path):
    args = {"path": str(tmp_path / "log"), "segment_file_size": MiB}
    proc = subprocess.run(
        [sys.executable, str(HELPER), "diskfull", json.dumps(args)],
        env=wp.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    first = result["first_error"]
    assert first["errno"] == errno.EFBIG, first
    assert first["message"]
    assert result["before_full"] > 5  # the first file was filled before the error
    assert result["total"] > result["before_full"]


def _read_all(log):
    out, after = [], 0
    while True:
        b = log.read(after=after, verify=True)
        if len(b) == 0:
            return out
        out.extend((int(i), p) for i, p in b)
        after = b.next_after


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        gc.collect()
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_tmpfs_enospc(tiny_tmpfs):
    path = tiny_tmpfs / "log"
    written = []
    log = fluxcore.Log(path, segment_file_size=MiB, fsync="never")
    err = None
    for seq in range(400):  # 400 * 20 kB is well past 3 MiB
        p = wp.make_payload(seq, 20_000)
        try:
            written.append((log.append(p), p))
        except Exception as e:  # noqa: BLE001 - classified below
            err = e
            break
    assert err is not None, "no error although the tmpfs is full"
    assert _is_full(err), f"unexpected error {err!r}"
    assert err.errno == errno.ENOSPC
    assert str(err)
    assert len(written) > 40  # at least one full segment file
    assert log.last_index == written[-1][0]
    assert _read_all(log) == written

    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_tmpfs)], check=True)
    for seq in range(len(written) + 1, len(written) + 100):
        p = wp.make_payload(seq, 20_000)
        written.append((log.append(p), p))
    assert _read_all(log) == written
    log.close()
    with fluxcore.Log(path, segment_file_size=MiB) as log:
        assert log.recovery["dropped_records"] == 0, log.recovery
        assert _read_all(log) == written
        assert log.verify() == len(written)
