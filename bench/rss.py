"""rss_outside_maps: the anonymous memory fluxcore holds while appending far more than it keeps.

Runs in a child process (`python -m bench.rss`), so that the other workloads'
allocations do not count. The mapped segment files are file-backed (RssFile),
so RssAnon growth is exactly the memory the log uses outside its mappings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import (
    BATCH,
    MIB,
    PAYLOAD_SIZE,
    JsonValue,
    Row,
    Sizes,
    make_dataset,
    progress,
)

STATUS = Path("/proc/self/status")
ROOT = Path(__file__).resolve().parent.parent
DISK_SAMPLE_EVERY = 50  # batches between two walks of the directory


def _status_kib(*fields: str) -> list[int]:
    values = dict.fromkeys(fields, 0)
    with STATUS.open() as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0])  # "RssAnon:   1234 kB"
    return [values[name] for name in fields]


def _disk_bytes(directory: Path) -> int:
    # Allocated blocks, not apparent size: preallocated, sparse files count as they lie.
    return sum(entry.stat().st_blocks * 512 for entry in os.scandir(directory))


def measure(directory: Path, total_bytes: int, retention_bytes: int) -> dict[str, float]:
    import fluxcore

    data = make_dataset()
    calls = -(-total_bytes // (BATCH * PAYLOAD_SIZE))
    with fluxcore.Log(str(directory), fsync="interval", retention_bytes=retention_bytes) as log:
        append_batch = log.append_batch
        (baseline,) = _status_kib("RssAnon")
        peak_anon = peak_file = peak_disk = 0
        for call in range(calls):
            append_batch(data.payloads, segments=data.segments)
            anon, file = _status_kib("RssAnon", "RssFile")
            peak_anon = max(peak_anon, anon)
            peak_file = max(peak_file, file)
            if call % DISK_SAMPLE_EVERY == 0:
                peak_disk = max(peak_disk, _disk_bytes(directory))
        peak_disk = max(peak_disk, _disk_bytes(directory))
    return {
        "messages": calls * BATCH,
        "baseline_mb": baseline / 1024,
        "peak_anon_mb": peak_anon / 1024,
        "outside_maps_mb": max(peak_anon - baseline, 0) / 1024,
        "peak_rss_file_mb": peak_file / 1024,
        "peak_disk_mb": peak_disk / MIB,
    }


def rss_row(sizes: Sizes, directory: Path) -> Row:
    """Run `measure` in a child process on `directory`; MB here means MiB."""
    progress(f"fluxcore: rss_outside_maps ({sizes.rss_bytes / 1e9:g} GB appended)")
    command = [
        sys.executable,
        "-m",
        "bench.rss",
        "--dir",
        str(directory),
        "--bytes",
        str(sizes.rss_bytes),
        "--retention-bytes",
        str(sizes.rss_retention_bytes),
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    found = json.loads(done.stdout)
    note = (
        f"peak RssAnon - baseline; retention_bytes={sizes.rss_retention_bytes >> 20} MiB,"
        f" disk peak {found['peak_disk_mb']:.0f} MiB"
    )
    extra: dict[str, JsonValue] = {
        key: value for key, value in found.items() if key != "outside_maps_mb"
    }
    extra["appended_bytes"] = sizes.rss_bytes
    messages = int(found["messages"])
    return Row(
        "rss_outside_maps", "fluxcore", "MB", found["outside_maps_mb"], messages, note, extra
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--retention-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.dir, args.bytes, args.retention_bytes)))


if __name__ == "__main__":
    main()
