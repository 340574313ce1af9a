"""The package installs quietly and carries its data: building the wheel and `pip install -e .` print no
setuptools warnings, and the wheel holds the default model, the tokenizer and the bundled photos."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
ASSETS = ("default_model", "tokenizer", "photos")
pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def source_tree(tmp: Path) -> Path:
    """What setup.py reads, copied: a build in the checkout would leave build/ and *.egg-info behind."""
    src = tmp / "src"
    shutil.copytree(REPO / "exif_jax", src / "exif_jax", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    return src


def pip(python: str, *args: str, cwd: Path, env: dict | None = None) -> str:
    """Run pip offline against the running interpreter's setuptools; returns its output (fails on rc != 0)."""
    p = subprocess.run([python, "-m", "pip", *args, "--no-deps", "--no-build-isolation", "--no-index"], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    return out


def test_wheel_builds_quietly_and_carries_the_assets(tmp_path):
    src = source_tree(tmp_path)
    out = pip(sys.executable, "wheel", "-w", str(tmp_path / "dist"), ".", cwd=src)
    assert "warning" not in out.lower(), out
    (wheel,) = (tmp_path / "dist").glob("exif_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for d in ASSETS:
        want = {f"exif_jax/assets/{d}/{f.name}" for f in (REPO / "exif_jax" / "assets" / d).iterdir() if f.is_file()}
        assert want and want <= names, (d, sorted(want - names))
    assert "exif_jax/cli.py" in names and "exif_jax/export/hf.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "experiments/"))]


def test_editable_install_is_quiet(tmp_path):
    src = source_tree(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    python = str(tmp_path / "venv" / "bin" / "python")
    # The project's own setuptools (the pinned environment's), not the one ensurepip brought.
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    out = pip(python, "install", "-e", ".", cwd=src, env=env)
    assert "warning" not in out.lower() and "would be ignored" not in out.lower(), out
    assert "Successfully installed exif-jax" in out
