"""Fixtures for the fsac-run tests: a sealed test model (see fsac_run_helpers) and real images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works with any pytest import mode
import fsac_run_helpers as h  # noqa: E402

from tests.conftest import _helpers  # noqa: E402  (the export-models helper, loaded once by path)


@pytest.fixture(scope="session")
def make_model(tmp_path_factory):
    """make_model(name, **build_model_bytes kwargs) -> path of a sealed model file."""
    from fsac.modelfile import write_model_file

    folder = tmp_path_factory.mktemp("models")

    def make(name: str = "model.onnx", **kw) -> Path:
        path = folder / name
        write_model_file(path, h.build_model_bytes(**kw), force=True)
        return path

    return make


@pytest.fixture(scope="session")
def model_file(make_model) -> Path:
    return make_model("bottle.fsac.onnx")


@pytest.fixture(scope="session")
def bottle_images(bottle) -> list[Path]:
    """Real inspection images (512x512 PNG): 6 good bottles, then 6 defective ones."""
    files = sorted((bottle / "test" / "good").glob("*.png"))[:6]
    for defect in ("broken_large", "contamination"):
        files += sorted((bottle / "test" / defect).glob("*.png"))[:3]
    assert len(files) == 12
    return files


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, bottle_images) -> Path:
    """A folder of the 12 real images, named img_000.png ... so the sorted order is known."""
    folder = tmp_path_factory.mktemp("images")
    for i, src in enumerate(bottle_images):
        (folder / f"img_{i:03d}.png").write_bytes(src.read_bytes())
    return folder


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, bottle):
    """(fp32 model file, INT8 QDQ model file) of a tiny random-weight checkpoint."""
    import numpy as np

    from fsac.calibration.quantize import QuantizeSettings, quantize_model_file
    from fsac.export.cli import export_command
    from fsac.modelfile import inspect_model_file
    from fsac.preprocess import load_image, resize_crop

    models = _helpers()
    shots = sorted((bottle / "train" / "good").glob("*.png"))[:2]
    root = tmp_path_factory.mktemp("ov-model")
    ck = models.make_checkpoint(root / "ck", models.TINY_ARCH, shots)
    fp32 = root / "tiny.onnx"
    export_command(ck, out=fp32, quiet=True, optimize="none")
    spec = inspect_model_file(fp32).preprocess
    calib = sorted((bottle / "train" / "good").glob("*.png"))[2:10]
    px = np.stack([resize_crop(load_image(p, spec), spec) for p in calib])
    int8 = root / "tiny.int8.onnx"
    quantize_model_file(fp32, int8, px, QuantizeSettings(), calib_names=[p.name for p in calib])
    return fp32, int8


@pytest.fixture(scope="session")
def tiny_8bit_file(tiny_files, bottle, tmp_path_factory):
    """The tiny fp32 file quantized with full-range (8-bit) weights (`--no-reduce-range`), which
    x86 CPUs without VNNI run with clamped sums (fsac/int8_saturation.py)."""
    import numpy as np

    from fsac.calibration.quantize import QuantizeSettings, quantize_model_file
    from fsac.modelfile import inspect_model_file
    from fsac.preprocess import load_image, resize_crop

    fp32 = tiny_files[0]
    spec = inspect_model_file(fp32).preprocess
    calib = sorted((bottle / "train" / "good").glob("*.png"))[2:10]
    px = np.stack([resize_crop(load_image(p, spec), spec) for p in calib])
    out = tmp_path_factory.mktemp("int8-8bit") / "m8.int8.onnx"
    quantize_model_file(fp32, out, px, QuantizeSettings(reduce_range=False), calib_names=[p.name for p in calib])
    return out
