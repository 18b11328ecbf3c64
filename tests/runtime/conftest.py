"""Fixtures for the fsac-run tests: a sealed test model, real images, helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works with any pytest import mode
import fsac_run_helpers as h  # noqa: E402


@pytest.fixture(scope="session")
def make_model(tmp_path_factory):
    """make_model(name, **build_model_bytes kwargs) -> path of a sealed model file."""
    from fsac.modelfile import write_model_file

    folder = tmp_path_factory.mktemp("models")

    def make(name: str = "model.onnx", **kw) -> Path:
        path = folder / name
        write_model_file(path, build_model_bytes(**kw), force=True)
        return path

    return make


@pytest.fixture(scope="session")
def model_file(make_model) -> Path:
    return make_model("bottle.fsac.onnx")




@pytest.fixture(scope="session")
def bottle_images(bottle) -> list[Path]:
    """Real inspection images: good and defective bottles (512x512 PNG)."""
    files = sorted((bottle / "test" / "good").glob("*.png"))[:6]
    for defect in ("broken_large", "contamination"):
        files += sorted((bottle / "test" / defect).glob("*.png"))[:3]
    assert len(files) >= 10
    return files


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, bottle_images) -> Path:
    """A folder of 12 real images named so that sorted order is known."""
    folder = tmp_path_factory.mktemp("images")
    for i, src in enumerate(bottle_images):
        (folder / f"img_{i:03d}.png").write_bytes(src.read_bytes())
    return folder










@pytest.fixture
def helpers():
    """Helpers as a fixture, so test modules need not import conftest."""

    class H:
        read_jsonl = staticmethod(read_jsonl)
        free_port = staticmethod(free_port)
        fsac_run = staticmethod(fsac_run)
        wait_for = staticmethod(wait_for)
        expected_score = staticmethod(expected_score)
        build_model_bytes = staticmethod(build_model_bytes)
        load_image = staticmethod(load_image)

    return H
