"""Fixtures for the calibration tests: a tiny exported model file (random weights) and the
real bottle images. The checkpoint helper is shared with tests/export (loaded by path)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest


def _helpers():
    name = "fsac_tests_export_models"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "export" / "_models.py"
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
