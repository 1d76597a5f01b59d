"""`pip wheel .` gives a wheel that installs and imports in a fresh venv with no compiler."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_without_a_compiler(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        # With build isolation, as on a fresh machine: pip fetches the build requirements.
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("fluxcore-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # No compiler on PATH and CC pointing nowhere: installing must not build anything.
    env = dict(os.environ, CC="/bin/false", CXX="/bin/false", PATH=str(env_dir / "bin"))
    env.pop("PYTHONPATH", None)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert install.returncode == 0, install.stderr
    smoke = (
        "import tempfile, fluxcore\n"
        "with fluxcore.Log(tempfile.mkdtemp(), segment_file_size=1 << 20) as log:\n"
        "    i = log.append(b'x', key='hello')\n"
        "    assert list(log.read(0)) == [(i, b'x')], 'read back'\n"
        "print(fluxcore.__file__)\n"
    )
    run = subprocess.run(
        [str(python), "-c", smoke], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert str(env_dir) in run.stdout  # the installed copy, not the source tree
