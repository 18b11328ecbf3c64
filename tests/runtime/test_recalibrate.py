"""Re-calibration from the live view (runtime/recalibrate.py): what `start` refuses before
any work is done (too few normal images; frames the operator marked Confirmed defect among
them), with messages that name the setting and the counts."""

from __future__ import annotations

import shutil

import pytest

from fsac.errors import FsacError
from fsac.feedback import CONFIRMED_DEFECT, FALSE_ALARM
from fsac.runtime.backends import load_model
from fsac.runtime.config import ModelConfig
from fsac.runtime.feedback import save_feedback
from fsac.runtime.recalibrate import RecalJob


def served(tmp_path, model_file):
    path = tmp_path / "models" / "line.fsac.onnx"
    path.parent.mkdir()
    shutil.copy(model_file, path)
    return load_model(ModelConfig(path=str(path)))


def record(seq):
    return {"run_id": "r1", "seq": seq, "frame_id": seq, "verdict": "defective"}


def test_too_few_normal_images_are_refused_before_any_work(tmp_path, model_file, image_folder, bottle_images):
    from PIL import Image
    import numpy as np

    model = served(tmp_path, model_file)
    fb = tmp_path / "fb"
    save_feedback(fb, FALSE_ALARM, record(1), np.asarray(Image.open(bottle_images[0]).convert("RGB")), 10)
    job = RecalJob([str(image_folder)], str(fb), alpha=0.01)
    with pytest.raises(FsacError) as e:
        job.start(model)
    msg = str(e.value)
    assert msg.startswith("live.calibration_images: ") and "13 normal images" in msg and "at least 99" in msg, msg
    assert "alpha 0.01" in msg
    assert job.snapshot() == {"status": "idle"}  # nothing started
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["line.fsac.onnx"]


def test_calibration_images_holding_confirmed_defects_are_refused(tmp_path, model_file, bottle_images):
    from PIL import Image
    import numpy as np

    model = served(tmp_path, model_file)
    fb = tmp_path / "fb"
    for i, src in enumerate(bottle_images[6:]):
        save_feedback(fb, CONFIRMED_DEFECT, record(i), np.asarray(Image.open(src).convert("RGB")), 10)
    # Pointed at the feedback folder's defects (by mistake, or the whole folder copied in).
    job = RecalJob([str(fb / CONFIRMED_DEFECT)], str(fb), alpha=0.5)
    with pytest.raises(FsacError) as e:
        job.start(model)
    msg = str(e.value)
    assert msg.startswith("live.calibration_images: ") and "marked Confirmed defect" in msg, msg
    assert job.snapshot() == {"status": "idle"}


def _finish(job, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while job.snapshot()["status"] == "running":
        assert time.monotonic() < deadline, "re-calibration did not finish"
        time.sleep(0.1)
    state = job.snapshot()
    assert state["status"] == "done", state
    return state["model"]


def test_superseded_recalibrations_are_removed_and_activated_ones_kept(tmp_path, model_file, image_folder):
    """Each press of Re-calibrate writes a whole model file beside the served one; the page
    offers only the newest. A finished job removes this daemon's earlier outputs that were
    never activated (model, report, plot), and keeps every activated one and the served file."""
    from pathlib import Path

    from fsac.runtime.backends import ModelHandle

    model = served(tmp_path, model_file)
    (tmp_path / "fb").mkdir()
    job = RecalJob([str(image_folder)], str(tmp_path / "fb"), alpha=0.2)
    job.start(model)
    first = _finish(job)
    assert Path(first).is_file() and Path(first + ".report.json").is_file()
    job.start(model)
    second = _finish(job)
    assert second != first and Path(second).is_file()
    assert not Path(first).exists() and not Path(first + ".report.json").exists()
    assert not Path(first + ".scores.png").exists()
    handle = ModelHandle(ModelConfig(path=model.info.source), model)
    assert job.activate(handle, second)["status"] == "activated"
    job.start(handle.current)
    third = _finish(job)
    assert Path(third).is_file() and Path(second).is_file()  # served now: kept
    job.start(handle.current)
    fourth = _finish(job)
    assert Path(fourth).is_file() and Path(second).is_file() and not Path(third).exists()
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert "line.fsac.onnx" in names and sum(n.endswith(".onnx") for n in names) == 3, names
    with pytest.raises(FsacError, match="not a model this daemon re-calibrated"):
        job.activate(handle, third)  # removed, and no longer offered


def test_training_shots_do_not_count_as_normal_images(tmp_path, model_file, image_folder):
    """`fsac calibrate` leaves the model's own training shots out of the normal images, so the
    up-front count must too: 12 calibration images of which 4 are training shots are 8, too
    few for alpha 0.1 (9), refused before any work and saying why."""
    import json

    from fsac.io import sha256_file
    from fsac.metadata import update_model_metadata
    from fsac.runner import expand_images

    images = expand_images([image_folder])
    assert len(images) == 12
    model = served(tmp_path, model_file)
    update_model_metadata(model.info.source, {"fsac.train_images": json.dumps(
        [{"name": p.name, "sha256": sha256_file(p)} for p in images[:4]])})
    model = load_model(ModelConfig(path=model.info.source))
    (tmp_path / "fb").mkdir()
    job = RecalJob([str(image_folder)], str(tmp_path / "fb"), alpha=0.1)
    with pytest.raises(FsacError) as e:
        job.start(model)
    msg = str(e.value)
    assert "8 normal images found (12 calibration images, 0 marked False alarm, less 4 that are the model's " \
           "training shots); alpha 0.1 needs at least 9" in msg, msg
    assert job.snapshot() == {"status": "idle"}
