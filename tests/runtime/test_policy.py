"""backend: auto with calibration images: measured choice of backend and precision."""

from __future__ import annotations

import numpy as np
import pytest

from fsac.errors import FsacError
from fsac.runtime.backends import load_model
from fsac.runtime.config import ModelConfig
from fsac.agreement import logit_agreement
from fsac.runtime.policy import MAX_REL_DLOGIT, failures

pytest.importorskip("openvino", reason="fsac[openvino] is part of fsac[all]; install it to test the candidates")


def test_logit_agreement_figures():
    ref = np.linspace(0.0, 4.0, 21)  # 21 images: the bounds need at least 20
    a = logit_agreement(ref, ref + 0.2 * np.sin(np.arange(21)), logit_threshold=2.5)
    assert a.spread == 4.0 and a.rel_max_abs_diff <= 0.05
    assert a.spearman == pytest.approx(1.0) and a.verdict_agreement == 1.0 and failures(a) == []
    swapped = ref.copy()
    swapped[[12, 13]] = swapped[[13, 12]] + np.array([0.5, -0.5])  # 2.6 -> 2.4, 2.4 -> 2.6: two verdicts flip
    msgs = " ".join(failures(logit_agreement(ref, swapped, logit_threshold=2.5)))
    assert "Spearman 0.99" in msgs or "verdicts agree on 19 of 21 images (90.48%) < 99.00%" in msgs
    assert "verdicts agree on 19 of 21 images (90.48%) < 99.00%" in msgs and "x the logit spread >" in msgs
    # without a threshold the verdicts cannot be compared: the candidate does not qualify
    assert "verdicts not compared" in " ".join(failures(logit_agreement(ref, ref, None)))
    # on too few images the bounds would be too easy: a perfect match does not qualify either
    assert failures(logit_agreement(ref[:12], ref[:12], 2.5)) == ["only 12 images compared; the bounds need at least 20"]


def test_auto_measures_candidates_and_serves_the_fastest_that_agrees(tiny_files, bottle):
    fp32, int8 = tiny_files
    model = load_model(ModelConfig(path=str(fp32), threshold=0.5, calibration_images=str(bottle / "train" / "good"),
                                   int8_path=str(int8)))
    sel = model.selection
    names = [c.name for c in sel.candidates]
    assert names == ["onnxruntime fp32", "openvino f32", "openvino bf16", "onnxruntime int8", "openvino int8",
                     "openvino int8_bf16"]
    assert sel.images == 32 and sel.reference == "onnxruntime fp32"  # the first 32 of the folder
    ref = sel.candidates[0]
    assert ref.qualified and ref.ms_per_image > 0
    for c in sel.candidates[1:]:
        if c.agreement is None:  # not available on this CPU (e.g. no bf16): says why
            assert c.reasons and not c.qualified
            continue
        a = c.agreement
        assert c.qualified == (a["spearman"] >= 0.99 and a["verdict_agreement"] >= 0.99
                               and a["rel_max_abs_diff"] <= MAX_REL_DLOGIT and a["n_images"] >= 20
                               and a["non_finite"] == 0)
    ok = [c for c in sel.candidates if c.qualified]
    chosen = min(ok, key=lambda c: c.ms_per_image)
    assert sel.chosen == chosen.name
    assert sel.chosen.split()[0] == model.backend.name
    text = model.describe()
    assert f"auto chose {sel.chosen} on 32 calibration images" in text and "RANDOM backbone weights" in text
    out = model.backend.infer(np.zeros((2, model.info.image_size, model.info.image_size, 3), np.uint8))
    assert out["logit"].shape == (2,)
    model.backend.close()


def test_auto_refuses_a_bad_int8_file_or_calibration_folder(tiny_files, image_folder, tmp_path):
    with pytest.raises(FsacError, match=r"model\.int8_path: .*tiny\.onnx is a fp32 model, not INT8"):
        load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5, calibration_images=str(image_folder),
                               int8_path=str(tiny_files[0])))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FsacError, match=r"model\.calibration_images: "):
        load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5, calibration_images=str(empty)))


def test_auto_without_calibration_images_is_onnxruntime(tiny_files):
    model = load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5))
    assert model.backend.name == "onnxruntime" and model.selection is None


def test_auto_on_too_few_calibration_images_serves_fp32_and_says_why(tiny_files, image_folder):
    fp32, int8 = tiny_files
    model = load_model(ModelConfig(path=str(fp32), threshold=0.5, calibration_images=str(image_folder),
                                   int8_path=str(int8)))
    sel = model.selection
    assert sel.images == 12 and sel.chosen == "onnxruntime fp32"
    measured = [c for c in sel.candidates[1:] if c.agreement is not None]
    assert measured and all("only 12 images compared" in " ".join(c.reasons) for c in measured)
    model.backend.close()


def _batch1_only_model(path):
    """A sealed model whose graph reshapes to a hard-coded batch of 1 (an export bug): it loads,
    and fails in ONNX Runtime as soon as it is run on more than one image at once."""
    import onnx

    from fsac.modelfile import write_model_file
    from fsac_run_helpers import build_model_bytes

    graph = onnx.load_from_string(build_model_bytes())
    for t in graph.graph.initializer:
        if t.name == "shape1":
            t.CopyFrom(onnx.helper.make_tensor("shape1", onnx.TensorProto.INT64, [1], [1]))
    write_model_file(path, graph.SerializeToString(), force=True)
    return path


def test_a_reference_that_fails_on_the_calibration_images_is_named_as_the_cause(tmp_path, model_file, image_folder):
    """Without fp32 logits nothing can be compared: the reference's own failure is the error,
    not a complaint about the comparison of the next candidate (which ran fine)."""
    from fsac.modelfile import load_model_file
    from fsac.runtime.backends import OnnxBackend
    from fsac.runtime.policy import calibration_pixels, select

    broken = _batch1_only_model(tmp_path / "batch1.onnx")
    data, info = load_model_file(broken)
    good_data, good_info = load_model_file(model_file)
    pixels = calibration_pixels(str(image_folder), info)
    candidates = {"onnxruntime fp32": lambda: OnnxBackend(data, info, batch_size=4),
                  "other": lambda: OnnxBackend(good_data, good_info, batch_size=4)}

    def logits(backend, px):
        return np.asarray(backend.infer(px[:4])["logit"], np.float64)

    with pytest.raises(FsacError) as e:
        select(candidates, "onnxruntime fp32", pixels, logits, 0.0)
    msg = str(e.value)
    assert "reference onnxruntime fp32 failed on the calibration images" in msg, msg
    assert "cannot be reshaped" in msg and "logit agreement" not in msg


def test_auto_with_an_unavailable_reference_says_so_at_check(tmp_path, model_file, image_folder):
    """The fp32 reference cannot even be built (a provider this onnxruntime lacks) while the
    OpenVINO candidates can: --check names the reference and the setting, in one line."""
    import subprocess
    import sys

    with pytest.raises(FsacError) as e:
        load_model(ModelConfig(path=str(model_file), calibration_images=str(image_folder),
                               providers=["TensorrtExecutionProvider"]))
    msg = str(e.value)
    assert msg.startswith("model.backend auto: the reference onnxruntime fp32 is not available"), msg
    assert "model.providers: TensorrtExecutionProvider" in msg and "logit agreement" not in msg
    proc = subprocess.run([sys.executable, "-m", "fsac.runtime.cli", "--check", "--model", str(model_file),
                           "--source", str(image_folder), "--jsonl", str(tmp_path / "r.jsonl"),
                           "--set", f"model.calibration_images={image_folder}",
                           "--set", "model.providers=[TensorrtExecutionProvider]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "fsac-run: error: model.backend auto: the reference onnxruntime fp32 is not available" \
        in proc.stderr.strip().splitlines()[-1]


def test_auto_serving_an_8_bit_int8_file_on_a_cpu_that_saturates_says_so(tiny_files, tiny_8bit_file, bottle,
                                                                         monkeypatch):
    """backend auto serves model.int8_path's file when an INT8 candidate wins; the saturation
    warning is about that file, not model.path's fp32 one. Which candidate wins is a timing, so
    the selection is made to pick ONNX Runtime int8 here; the rest is the real load."""
    import fsac.peaks
    import fsac.runtime.policy as policy

    real = policy.select

    def int8_wins(candidates, reference, *args, **kw):
        sel, backend = real(candidates, reference, *args, **kw)
        backend.close()
        sel.chosen = "onnxruntime int8"
        return sel, candidates["onnxruntime int8"]()

    monkeypatch.setattr(policy, "select", int8_wins)
    monkeypatch.setattr(fsac.peaks, "cpu_flags", lambda: ["sse2", "avx2", "fma"])
    cfg = dict(path=str(tiny_files[0]), threshold=0.5, calibration_images=str(bottle / "train" / "good"))
    model = load_model(ModelConfig(**cfg, int8_path=str(tiny_8bit_file)))
    model.backend.close()
    assert len(model.warnings) == 1 and "m8.int8.onnx: INT8 file with 8-bit weights" in model.warnings[0]
    assert model.selection.warnings == list(model.warnings)
    model = load_model(ModelConfig(**cfg, int8_path=str(tiny_files[1])))  # 7-bit: nothing to say
    model.backend.close()
    assert model.warnings == () and model.selection.warnings == []


def test_auto_measures_every_int8_file_listed_and_names_them(tiny_files, tiny_8bit_file, bottle, monkeypatch):
    """model.int8_path as a list: each INT8 layout is a candidate on every INT8 runtime, named
    by its file; the one served is the one whose saturation warning is given."""
    import fsac.peaks
    import fsac.runtime.policy as policy

    fp32, seven_bit = tiny_files
    cfg = dict(path=str(fp32), threshold=0.5, calibration_images=str(bottle / "train" / "good"))
    model = load_model(ModelConfig(**cfg, int8_path=[str(seven_bit), str(tiny_8bit_file)]))
    names = [c.name for c in model.selection.candidates]
    model.backend.close()
    assert names[:3] == ["onnxruntime fp32", "openvino f32", "openvino bf16"]
    for runtime in ("onnxruntime int8", "openvino int8", "openvino int8_bf16"):
        assert f"{runtime} [tiny.int8.onnx]" in names and f"{runtime} [m8.int8.onnx]" in names
    assert len(names) == 9
    timed = {c.name: c for c in model.selection.candidates}
    assert timed["onnxruntime int8 [m8.int8.onnx]"].ms_per_image > 0 and timed["onnxruntime int8 [tiny.int8.onnx]"].agreement

    real = policy.select

    def pick(name):
        def select(candidates, reference, *args, **kw):
            sel, backend = real(candidates, reference, *args, **kw)
            backend.close()
            sel.chosen = name
            return sel, candidates[name]()
        return select

    monkeypatch.setattr(fsac.peaks, "cpu_flags", lambda: ["sse2", "avx2", "fma"])  # a CPU that saturates
    for chosen, warned in (("onnxruntime int8 [m8.int8.onnx]", True), ("onnxruntime int8 [tiny.int8.onnx]", False)):
        monkeypatch.setattr(policy, "select", pick(chosen))
        model = load_model(ModelConfig(**cfg, int8_path=[str(seven_bit), str(tiny_8bit_file)]))
        model.backend.close()
        assert (len(model.warnings) == 1 and "m8.int8.onnx: INT8 file with 8-bit weights" in model.warnings[0]) \
            is warned, model.warnings
    monkeypatch.setattr(policy, "select", real)
    with pytest.raises(FsacError, match=r"model\.int8_path: .*tiny\.int8\.onnx is listed twice"):
        load_model(ModelConfig(**cfg, int8_path=[str(seven_bit), str(seven_bit)]))
    with pytest.raises(FsacError, match=r"model\.int8_path: .*tiny\.onnx is a fp32 model, not INT8"):
        load_model(ModelConfig(**cfg, int8_path=[str(seven_bit), str(fp32)]))


class _Timed:
    """A stand-in backend: logits that agree (or not) with the reference's, a fixed time per
    call, and a record of every batch it ran and whether it was closed."""

    max_batch = 4

    def __init__(self, seconds_per_call: float, offset: float = 0.0, holds_mib: int = 0):
        self.seconds, self.offset, self.batches, self.closed = seconds_per_call, offset, [], False
        self.holds_mib = holds_mib
        self.held = None

    def __call__(self):  # the factory: "building" it allocates (and touches) what it holds
        self.held = np.ones(self.holds_mib * 2**20, np.uint8) if self.holds_mib else None
        return self

    def infer(self, px):
        import time

        self.batches.append(len(px))
        time.sleep(self.seconds)
        return {"logit": np.arange(len(px), dtype=np.float64) + px[:, 0, 0, 0] + self.offset}

    def close(self):
        self.closed = True
        self.held = None


def test_select_times_per_image_at_the_daemons_batch_and_keeps_only_the_best_open():
    """Candidates are timed per image at `batch` (the daemon's full batches where frames queue
    up); a candidate run on one of two streams at batch 1 would count double. Only the fastest
    qualifying candidate stays open."""
    from fsac.runtime.policy import select

    pixels = np.zeros((24, 2, 2, 3), np.uint8)
    pixels[:, 0, 0, 0] = np.arange(24) * 10  # distinct logits, so the ranks mean something
    made = {"ref": _Timed(0.02), "fast": _Timed(0.005), "faster but wrong": _Timed(0.001, offset=1e6),
            "slow": _Timed(0.04)}
    candidates = {k: (lambda b: lambda: b)(b) for k, b in made.items()}

    def logits(backend, px):
        return np.concatenate([backend.infer(px[i:i + 4])["logit"] for i in range(0, len(px), 4)])

    sel, served = select(candidates, "ref", pixels, logits, 100.0, runs=3, batch=4)
    assert sel.timed_batch == 4 and "timed at batch 4, per image (frames queue up)" in sel.summary()
    by = {c.name: c for c in sel.candidates}
    assert all(set(b.batches[-3:]) == {4} for b in made.values())  # the timed calls: full batches
    assert 0.8 * 5 / 4 <= by["fast"].ms_per_image <= 3 * 5 / 4  # ~5 ms a call of 4 images
    assert not by["faster but wrong"].qualified and by["slow"].qualified  # the fastest disagrees
    assert sel.chosen == "fast" and served is made["fast"]
    assert [b.closed for b in made.values()] == [True, False, True, True]  # the reference, once beaten

    for b in made.values():
        b.closed = False
    sel, served = select(candidates, "ref", pixels, logits, None, runs=3)  # no threshold: only the reference
    assert sel.chosen == "ref" and [b.closed for b in made.values()] == [False, True, True, True]
    assert sel.timed_batch == 1 and "timed at batch 1:" in sel.summary()
    assert set(made["fast"].batches[-3:]) == {1}


def test_auto_times_at_the_batch_size_where_the_source_queues_frames(tiny_files, image_folder, bottle, tmp_path):
    """A folder in every-frame mode: backend auto times at model.batch_size; a trigger station
    (each frame's latency counts): at batch 1."""
    from fsac.runtime.config import load_config

    fp32, int8 = tiny_files
    sets = ["model.threshold=0.5", f"model.calibration_images={bottle / 'train' / 'good'}", f"model.int8_path={int8}",
            "model.batch_size=3"]
    cfg = load_config(None, sets, model=str(fp32), source=str(image_folder), jsonl=str(tmp_path / "r.jsonl"))
    model = load_model(cfg.model)
    model.backend.close()
    assert model.selection.timed_batch == 3 and cfg.model.openvino.streams == "throughput"
    cfg = load_config(None, sets + ["source.mode=trigger", "source.uri="], model=str(fp32),
                      jsonl=str(tmp_path / "r.jsonl"))
    model = load_model(cfg.model)
    model.backend.close()
    assert model.selection.timed_batch == 1 and cfg.model.openvino.streams == 1


def test_select_measures_what_each_candidate_holds_and_can_refuse_the_largest():
    """Each candidate's resident memory is measured (freed heap given back first) and shown;
    with max_memory a faster candidate that holds more does not qualify, with the reason."""
    from fsac.runtime.policy import select

    pixels = np.zeros((24, 2, 2, 3), np.uint8)
    pixels[:, 0, 0, 0] = np.arange(24) * 10
    made = {"ref": _Timed(0.02), "big and fast": _Timed(0.002, holds_mib=96), "small": _Timed(0.01, holds_mib=8)}

    def logits(backend, px):
        return np.concatenate([backend.infer(px[i:i + 4])["logit"] for i in range(0, len(px), 4)])

    sel, served = select(made, "ref", pixels, logits, 100.0, runs=3)
    by = {c.name: c for c in sel.candidates}
    assert 80 * 2**20 <= by["big and fast"].memory_bytes <= 128 * 2**20, by["big and fast"].memory_bytes
    assert by["small"].memory_bytes < 40 * 2**20
    import re

    assert sel.chosen == "big and fast"
    assert re.search(r"big and fast [\d.]+ ms, \+(8\d|9\d|1[0-2]\d) MiB \(ok\)", sel.summary()), sel.summary()
    served.close()
    sel, served = select(made, "ref", pixels, logits, 100.0, runs=3, max_memory=48 * 2**20)
    by = {c.name: c for c in sel.candidates}
    assert not by["big and fast"].qualified and sel.chosen == "small" and served is made["small"]
    assert any(r.startswith("holds 9") and "> model.max_backend_memory 48 MiB" in r for r in by["big and fast"].reasons)
    sel, _ = select(made, "ref", pixels, logits, 100.0, runs=3, max_memory=1)
    assert sel.chosen == "ref"  # nothing else fits; the reference is served whatever it holds
