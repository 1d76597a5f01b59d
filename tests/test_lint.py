"""Lint and type checks run as tests, so CI enforces them (STYLE.md habit 10)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"{name} is not installed: pip install -e .[test]")
    return on_path


def check(*cmd: str) -> None:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"


def test_ruff() -> None:
    check(tool("ruff"), "check", "fluxcore", "server", "tests", "bench", "tools")


def test_cython_lint() -> None:
    check(tool("cython-lint"), "fluxcore/_ext")


def test_mypy() -> None:
    check(tool("mypy"))


def test_no_merge_conflict_markers() -> None:
    # Text files the repository tracks (docs too, which ruff and mypy never read).
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    markers = ("<" * 7 + " ", "=" * 7 + "\n", ">" * 7 + " ")
    found = []
    for name in listed.stdout.split():
        path = ROOT / name
        if path.suffix not in {".py", ".pyx", ".pxd", ".pxi", ".pyi", ".h", ".md", ".toml",
                               ".cfg", ".txt"} and name != ".ci/run":
            continue
        lines = path.read_text(errors="replace").splitlines(keepends=True)
        found += [f"{name}:{n}" for n, line in enumerate(lines, 1) if line.startswith(markers)]
    assert not found, f"merge conflict markers left in: {found}"
