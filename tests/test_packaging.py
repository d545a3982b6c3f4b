"""Packaging: the default model, marker set and IK setup are package data (``simspine_jax/data``),
the wheel carries them, and a wheel used outside the source tree runs ``simspine-jax demo``.
Package data read from a zip import works too.

The wheel is built offline (``pip wheel --no-build-isolation --no-index``) with the setuptools
that the ``test`` extra installs, from a copy of the source, so the checkout gets no ``build/``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import simspine_jax
from simspine_jax._resources import (
    DEFAULT_IK_SETUP_FILE,
    DEFAULT_MARKERS_FILE,
    DEFAULT_MODEL_FILE,
    DEFAULT_OSIM_FILE,
    data_path,
)

ROOT = Path(__file__).resolve().parents[1]
DATA_FILES = (DEFAULT_MODEL_FILE, DEFAULT_OSIM_FILE, DEFAULT_MARKERS_FILE, DEFAULT_IK_SETUP_FILE)
# what the source tree must hand setuptools to build the wheel
BUILD_INPUTS = ("pyproject.toml", "README.md", "simspine_jax")
DEMO_OUTPUTS = (
    "sample_trial.trc",
    "sample_trial.mot",
    "sample_trial_marker_errors.sto",
    "sample_trial_model_marker_locations.sto",
    "sample_trial_ik.png",
)
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600  # the demo compiles from an empty cache: ~20 s on 2 cores


def _run(argv: list[str], *, cwd: Path, env: dict | None = None, timeout: float) -> str:
    """Run a child process; fail showing its output unless it exits 0. Returns its stdout."""
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {proc.returncode}\n"
            f"--- stdout (end)\n{proc.stdout[-4000:]}\n--- stderr (end)\n{proc.stderr[-8000:]}"
        )
    return proc.stdout


def _outside_env(pythonpath: Path, tmp: Path) -> dict:
    """Environment of a child that imports simspine_jax from ``pythonpath`` only."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pythonpath)
    env["SIMSPINE_JAX_CACHE"] = str(tmp / "cache")  # no compiled programs from other runs
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the current source, built offline. Shape: one ``.whl`` path."""
    major = int(importlib.metadata.version("setuptools").split(".")[0])
    if major < 77:
        pytest.fail(
            f"setuptools {importlib.metadata.version('setuptools')} cannot build this project "
            "(pyproject.toml needs >= 77); run pip install -e '.[test]'"
        )
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    argv += ["--no-index", str(src), "-w", str(dist)]
    _run(argv, cwd=tmp, env=env, timeout=BUILD_TIMEOUT_S)
    wheels = sorted(dist.glob("simspine_jax-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_default_paths_are_package_data():
    """The four default files resolve inside the imported package; a missing name says so."""
    package = Path(simspine_jax.__file__).parent
    paths = (
        simspine_jax.default_model_path(),
        simspine_jax.default_osim_path(),
        simspine_jax.default_markers_path(),
        simspine_jax.default_ik_setup_path(),
    )
    for name, path in zip(DATA_FILES, paths, strict=True):
        assert path == package / "data" / name
        assert path.is_file(), path
    with pytest.raises(FileNotFoundError, match="simspine_jax/data/nothing.xml"):
        data_path("nothing.xml")


def test_wheel_carries_default_data(wheel):
    """The wheel holds the four data files, byte for byte, and only the package."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        for name in DATA_FILES:
            member = f"simspine_jax/data/{name}"
            assert member in names, f"{member} not in {wheel.name}"
            assert zf.read(member) == (ROOT / "simspine_jax" / "data" / name).read_bytes()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"simspine_jax", wheel.name.split("-py3")[0] + ".dist-info"}, tops


def test_wheel_outside_source_tree_runs_demo(wheel, tmp_path):
    """Unpacked away from the checkout (what pip install does for a pure-Python wheel), the
    package runs ``demo`` from its own data: exit 0 and the demo's output files."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    run = tmp_path / "run"
    run.mkdir()
    env = _outside_env(site, tmp_path)
    code = "import simspine_jax as s; print(s.__file__); print(s.default_ik_setup_path())"
    where = _run([sys.executable, "-c", code], cwd=run, env=env, timeout=RUN_TIMEOUT_S)
    for line in where.splitlines():
        assert Path(line).is_relative_to(site), f"imported from the wrong place: {where}"

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "simspine_jax.cli", "demo", "--no-opensim", "--frames", "64"]
    stdout = _run([*argv, "-o", str(out)], cwd=run, env=env, timeout=RUN_TIMEOUT_S)
    for name in DEMO_OUTPUTS:
        assert (out / name).is_file(), f"demo did not write {name}; stdout:\n{stdout[-4000:]}"
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["summary"]["frames"] == 64


def test_zip_import_extracts_data(wheel, tmp_path):
    """Imported from the zip itself, the default paths are real files the model loads from."""
    code = (
        "import simspine_jax as s\n"
        "paths = [s.default_model_path(), s.default_osim_path(), s.default_markers_path(),\n"
        "         s.default_ik_setup_path()]\n"
        "assert '.whl' in s.__file__, s.__file__\n"
        "assert all(p.is_file() for p in paths), paths\n"
        "print(s.load_model(paths[0]).n_marker)\n"
    )
    env = _outside_env(wheel, tmp_path)
    stdout = _run([sys.executable, "-c", code], cwd=tmp_path, env=env, timeout=RUN_TIMEOUT_S)
    assert stdout.strip() == "37"
