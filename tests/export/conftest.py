"""Fixtures for the export tests: a tiny trained checkpoint built directly (random weights,
no trainer run), real bottle images for parity, and its exported model file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def load_helpers():
    """tests/export/_models.py as a module, by path (works with any pytest import mode)."""
    name = "fsac_tests_export_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "_models.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def models():
    """The helper module: models.make_checkpoint(out_dir, arch, shots, ...), models.TINY_ARCH."""
    return load_helpers()


@pytest.fixture(scope="session")
def bottle_shots(bottle) -> list[Path]:
    return sorted((bottle / "train" / "good").glob("*.png"))[:2]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, bottle_shots, models) -> Path:
    return models.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", models.TINY_ARCH, bottle_shots)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_checkpoint) -> tuple[Path, dict]:
    """(model file, export result) of the tiny checkpoint, exported once per session."""
    from fsac.export.cli import export_command

    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    result = export_command(tiny_checkpoint, out=out, quiet=True)
    return out, result
