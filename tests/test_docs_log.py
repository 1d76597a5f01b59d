"""README "The embedded log": `repair=True` (and `fluxcore verify --repair`) truncate at a
damaged record wherever it is, also in records a closed log had synced long ago (opening
verifies only past the last checkpoint; bytes can rot below it), and `log.recovery` says what
went. The compiled extension on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fluxcore

MIB = 1 << 20
PAYLOAD = 100_000  # about ten records per 1 MiB segment file


def written_log(path: Path, count: int) -> list[int]:
    """A closed log whose records are all synced: its checkpoints are at the end."""
    with fluxcore.Log(path, segment_file_size=MIB, fsync="never") as log:
        indexes = [log.append(bytes([k % 251]) * PAYLOAD) for k in range(count)]
        log.sync()
        return indexes


def all_indexes(log: fluxcore.Log) -> list[int]:
    got: list[int] = []
    for batch in log.tail(0, timeout=0):  # a batch ends at the end of a file
        got += [int(i) for i in batch.indexes]
    return got


def flip_payload_byte(path: Path, index: int) -> tuple[Path, int]:
    """Flips a byte in the payload of the record `index`; returns its file and offset."""
    with fluxcore.Log(path, readonly=True) as log:
        batch = log.read(index - 1, max_count=1, verify=False)
        assert int(batch.indexes[0]) == index
        offset = int(batch.offsets[0])
    files = sorted(path.glob("*.seg"), key=lambda f: int(f.stem))
    file = [f for f in files if int(f.stem) <= index][-1]
    with open(file, "r+b") as f:
        f.seek(offset + 10)
        byte = f.read(1)
        f.seek(offset + 10)
        f.write(bytes([byte[0] ^ 0x55]))
    return file, offset - 24  # the record's header starts 24 bytes before its payload


@pytest.mark.parametrize("damaged", [3, 25], ids=["first-file", "last-file"])
def test_repair_truncates_at_damage_below_the_checkpoint(tmp_path: Path, damaged: int) -> None:
    path = tmp_path / "log"
    indexes = written_log(path, 30)
    assert len(list(path.glob("*.seg"))) >= 3
    file, record = flip_payload_byte(path, indexes[damaged])
    with fluxcore.Log(path, segment_file_size=MIB) as log:  # open does not see it ...
        with pytest.raises(fluxcore.CorruptLogError) as found:
            log.verify()  # ... verify does, naming the file and the record
        assert (found.value.path, found.value.offset) == (str(file), record)
    with fluxcore.Log(path, segment_file_size=MIB, repair=True) as log:
        assert log.recovery["dropped_records"] == 30 - damaged
        assert log.recovery["truncated_bytes"] >= (30 - damaged) * PAYLOAD
        assert log.verify() == damaged
        assert all_indexes(log) == indexes[:damaged]
        assert log.last_index == indexes[damaged - 1]
        later = log.append(b"after the repair")
        assert later > indexes[damaged - 1]
    assert max(int(f.stem) for f in path.glob("*.seg")) <= later  # later files went
    with fluxcore.Log(path, segment_file_size=MIB) as log:
        assert log.verify() == damaged + 1
        assert all_indexes(log) == [*indexes[:damaged], later]


def test_verify_repair_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "log"
    indexes = written_log(path, 12)
    flip_payload_byte(path, indexes[5])

    def fluxcore_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fluxcore", *args], text=True,
                              capture_output=True, timeout=60)

    checked = fluxcore_cli("verify", str(path))
    assert checked.returncode == 1 and "damaged record" in checked.stderr
    repaired = fluxcore_cli("verify", str(path), "--repair")
    assert repaired.returncode == 0, repaired.stderr
    out = json.loads(repaired.stdout)
    assert out["records"] == 5 and out["recovery"]["dropped_records"] == 7
    assert json.loads(fluxcore_cli("verify", str(path)).stdout) == {"records": 5}
