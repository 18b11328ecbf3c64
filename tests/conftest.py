"""Shared fixtures: where the real inspection images are, and small helpers."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FSAC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
TINY_ARCH = "ViT-B-16-plus-240-tiny"
FULL_ARCH = "ViT-B-16-plus-240"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (MVTec AD bottle, AutoVI pipe_staple, brain MRI); see its README."""
    if not (SHARED_DATA / "mvtec_ad" / "bottle").is_dir():
        pytest.skip(f"real inspection images not found at {SHARED_DATA} (set FSAC_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bottle(shared_data) -> Path:
    return shared_data / "mvtec_ad" / "bottle"


# A tiny exported model file (random weights), shared by the core, calibration and runtime
# tests. The checkpoint helper lives in tests/export/_models.py (loaded by path).


def _helpers():
    name = "fsac_tests_export_models"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "export" / "_models.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, bottle) -> Path:
    """A sealed fp32 model file of a tiny random-weight checkpoint, trained on 2 shots."""
    from fsac.export.cli import export_command

    models = _helpers()
    shots = sorted((bottle / "train" / "good").glob("*.png"))[:2]
    root = tmp_path_factory.mktemp("calib-model")
    ck = models.make_checkpoint(root / "ck", models.TINY_ARCH, shots)
    out = root / "model.onnx"
    export_command(ck, out=out, quiet=True, optimize="none")
    return out


@pytest.fixture
def model_copy(exported_model, tmp_path) -> Path:
    """A private copy of the exported model that a test may modify."""
    p = tmp_path / "model.onnx"
    shutil.copy(exported_model, p)
    return p


@pytest.fixture
def mount_small(tmp_path):
    """mount_small(size) -> a fresh, real tmpfs of that size (e.g. "256k") that a test can fill up,
    unmounted afterwards; skips where mounting is not permitted (it needs root)."""
    mounted = []

    def mount(size: str) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'not permitted'}); needs root")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
