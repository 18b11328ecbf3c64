"""End to end on real images with the tiny configuration: train + evaluate + report."""

import json
import shutil
from pathlib import Path

import pytest

from fsac.cli import main
from fsac.train.data import find_categories, subsample
from fsac.train.evaluate import EvalConfig, evaluate
from fsac.train.trainer import TrainConfig
from tests.conftest import TINY_ARCH

FAST = ["--arch", TINY_ARCH, "--weights", "random", "--epochs1", "5", "--epochs2", "5", "--synth-per-image", "2", "-q"]


def test_eval_mvtec_end_to_end(bottle, tmp_path, capsys, monkeypatch):
    import fsac.train.diagnostics as diagnostics

    # Every trained model warns (any cosine is below 2): the warnings must be stored per model
    # and printed as one summary, not once in full per model.
    monkeypatch.setattr(diagnostics, "MIN_PROTOTYPE_COSINE", 2.0)
    out = tmp_path / "report"
    rc = main(["eval", str(bottle), "--shots", "0,1,2", "--seeds", "2", "--max-test", "6", "--out", str(out)] + FAST)
    assert rc == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "RANDOM" in text and "I-AUROC" in text and "bottle" in text
    warned = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 2, captured.err
    assert warned[0].startswith("warning: 4 of 4 trained models: bottle k=1 seed=0: the text adapter has overwhelmed")
    assert "also bottle k=1 seed=1, bottle k=2 seed=0, bottle k=2 seed=1" in warned[0]
    assert "report.json" in warned[1]
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["train"]["preset"] == "mvtec" and report["meta"]["train"]["preset_overrides"] == {}
    for r in report["results"]:
        d = r["diagnostics"]
        if r["shots"] == 0:
            assert d is None  # zero-shot trains nothing
        else:
            assert -1 <= d["cos_at"] <= 1 and "pair_gap" in d and "overwhelmed" in d["warnings"][0]
    assert "## Training warnings (4)" in (out / "report.md").read_text()
    runs = report["results"]
    assert sorted({(r["shots"], r["seed"]) for r in runs}) == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    for r in runs:
        assert len(r["scores"]) == 12 and sum(r["labels"]) == 6
        assert all(0.0 <= s <= 1.0 for s in r["scores"])
        assert len(r["train_images"]) == r["shots"]
        m = r["metrics"]
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["aupr"] <= 1.0 and 0.0 < m["f1_max"] <= 1.0
    # Zero-shot runs once (it has no randomness); each few-shot seed draws different shots.
    one_shot = [r["train_images"] for r in runs if r["shots"] == 1]
    assert one_shot[0] != one_shot[1]
    for name in ("report.md", "roc.png", "scores_hist.png"):
        assert (out / name).stat().st_size > 1000
    assert report["meta"]["backbone"]["weights_id"] == "random"


def test_two_folder_with_corrupt_image_skips_and_lists_it(shared_data, tmp_path, tiny_backbone):
    root = tmp_path / "mri"
    for sub, n in (("normal", 8), ("anomalous", 5)):
        (root / sub).mkdir(parents=True)
        for p in sorted((shared_data / "brain_mri" / sub).iterdir())[:n]:
            shutil.copy(p, root / sub / p.name)
    (root / "anomalous" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "normal" / "truncated.png").write_bytes(
        next((shared_data / "mvtec_ad" / "bottle" / "train" / "good").glob("*.png")).read_bytes()[:200])
    cats = find_categories(root)
    cfg = EvalConfig(shots=(0, 2), seeds=(0,), train=TrainConfig(stage1_epochs=3, stage2_epochs=3))
    report = evaluate(tiny_backbone, cats, cfg, quiet=True)
    skipped = {s["file"].split("/")[-1]: s["reason"] for s in report.skipped}
    assert set(skipped) == {"corrupt.jpg", "truncated.png"}
    two_shot = [r for r in report.results if r.shots == 2][0]
    assert sum(two_shot.labels) == 5 and len(two_shot.labels) == 5 + 8 - 2
    assert not any("corrupt" in n or "truncated" in n for n in two_shot.image_names)


def test_a_copy_of_a_shot_is_left_out_of_the_test_set_and_reported(shared_data, tmp_path, tiny_backbone, capsys):
    """Real sets hold byte-identical copies (shared/data/brain_mri: 11 pairs of normals). A
    copy of a shot scored as a test normal would be a training image counted as unseen."""
    from fsac.train.report import from_json, to_json
    from fsac.train.report_markdown import to_markdown

    root = tmp_path / "mri"
    for sub, n in (("normal", 4), ("anomalous", 3)):
        (root / sub).mkdir(parents=True)
        for p in sorted((shared_data / "brain_mri" / sub).iterdir())[:n]:
            shutil.copy(p, root / sub / p.name)
    first = sorted((root / "normal").iterdir())[0]
    shutil.copy(first, root / "normal" / "zz copy.jpg")  # sorts last: the copy, not the original
    cfg = EvalConfig(shots=(1, 2), seeds=(0, 1, 2), train=TrainConfig(stage1_epochs=2, stage2_epochs=2))
    report = evaluate(tiny_backbone, find_categories(root), cfg, quiet=False)
    err = capsys.readouterr().err
    assert f"1 normal image(s) are byte-identical copies of others (e.g. normal/zz copy.jpg = normal/{first.name})" in err
    with_copy = [r for r in report.results if r.shot_copies]
    assert with_copy, "no run drew the copied image: the test lost its point"
    for r in report.results:
        drawn = [Path(t).name for t in r.train_images]
        assert "zz copy.jpg" not in drawn  # the pool holds one of the two
        drew = first.name in drawn
        assert r.shot_copies == (["normal/zz copy.jpg"] if drew else [])
        assert ("normal/zz copy.jpg" in r.image_names) == (not drew)
        assert len(r.labels) == 5 - r.shots + 3 - len(r.shot_copies)
        note = f"note: mri k={r.shots} seed={r.seed}: left out of the test set 1 image(s) with the bytes of a shot"
        assert (note in err) == drew
    assert [r.shot_copies for r in from_json(to_json(report)).results] == [r.shot_copies for r in report.results]
    assert "- mri, " in to_markdown(report) and "`normal/zz copy.jpg`" in to_markdown(report)


def test_k_larger_than_pool_is_one_line_error(bottle, tmp_path, capsys):
    root = tmp_path / "tiny_ds"
    (root / "normal").mkdir(parents=True)
    (root / "anomalous").mkdir()
    for i, p in enumerate(sorted((bottle / "train" / "good").glob("*.png"))[:3]):
        shutil.copy(p, root / "normal" / p.name)
    shutil.copy(next((bottle / "test" / "broken_large").glob("*.png")), root / "anomalous" / "a.png")
    rc = main(["eval", str(root), "--shots", "4", "--seeds", "1", "--out", str(tmp_path / "o")] + FAST)
    err = capsys.readouterr().err
    assert rc == 2
    assert "asked for 4 shots" in err and "has only 3 normal images" in err and "Traceback" not in err


def test_k_is_checked_for_every_category_before_anything_is_encoded(bottle, tiny_backbone, monkeypatch, capsys):
    """The second category is too small for k = 2: the error must come before the first
    category's images (or its prompts) are encoded, not after its runs."""
    import fsac.train.evaluate as ev
    from fsac.errors import FsacError
    from fsac.train.data import Category

    def must_not_run(*a, **k):
        raise AssertionError("encoded before the shot counts were checked")

    monkeypatch.setattr(ev, "_encode_valid", must_not_run)
    monkeypatch.setattr(ev, "cached_text", must_not_run)
    monkeypatch.setattr(ev, "train", must_not_run)
    (full,) = find_categories(bottle)
    big = subsample(full, 3, 3)
    small = Category("small", big.root, big.layout, big.train_pool[:1], big.test)
    with pytest.raises(FsacError, match=r"asked for 2 shots but .* has only 1 normal images"):
        evaluate(tiny_backbone, [big, small], EvalConfig(shots=(0, 2), seeds=(0,)), quiet=False,
                 log=must_not_run)
    assert capsys.readouterr().out == ""  # no progress line either


def test_subsample_keeps_both_classes(bottle):
    (cat,) = find_categories(bottle)
    small = subsample(cat, 5, 5)
    assert sum(t.label == 0 for t in small.test) == 5 and sum(t.label == 1 for t in small.test) == 5


@pytest.mark.parametrize("args, message", [
    (["eval", "/no/such/folder"], "data folder not found: /no/such/folder"),
    (["train", "/no/such/image.png"], "not found: /no/such/image.png"),
    (["eval", "--shots", "1,x"], "--shots must be a comma-separated list"),
])
def test_bad_input_is_one_line_error(args, message, capsys):
    rc = main(args + ["--arch", TINY_ARCH, "--weights", "random"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_saturated_scores_are_ranked_by_the_logit(bottle, tiny_backbone):
    """A trained tiny model at tau = 1e-5: most float32 scores tie at exactly 0 or 1, yet the
    metrics come from the float64 logits and agree with scikit-learn on them."""
    import numpy as np
    from dataclasses import replace
    from sklearn.metrics import average_precision_score, roc_auc_score

    from fsac.train.model import HeadConfig

    cat = subsample(find_categories(bottle)[0], max_normal=20, max_anomalous=20)
    train = TrainConfig(stage1_epochs=20, stage2_epochs=20)
    train = replace(train, head=replace(HeadConfig(embed_dim=64), tau=1e-5))
    report = evaluate(tiny_backbone, [cat], EvalConfig(shots=(1,), seeds=(0,), train=train), quiet=True)
    run = report.results[0]
    z = np.asarray(run.logits)
    as32 = (1 / (1 + np.exp(-z))).astype(np.float32)
    saturated = int(np.sum((as32 == 0.0) | (as32 == 1.0)))
    assert saturated >= len(z) // 2, f"only {saturated} of {len(z)} scores saturate: the test lost its point"
    assert len(np.unique(z)) >= len(z) - 1  # the logits still rank (nearly) every image
    assert run.metrics.auroc == pytest.approx(roc_auc_score(run.labels, z), abs=1e-12)
    assert run.metrics.aupr == pytest.approx(average_precision_score(run.labels, z), abs=1e-12)
    np.testing.assert_allclose(run.scores, 1 / (1 + np.exp(-z)), rtol=1e-12)


def test_repeated_shot_count_is_refused_up_front():
    # `--shots 1,1` used to train every model and then fail with "duplicate run in report".
    from fsac.errors import FsacError

    with pytest.raises(FsacError, match="--shots lists 1 more than once"):
        EvalConfig(shots=(0, 1, 1), seeds=(0,))


def _no_work(monkeypatch):
    import fsac.train.evaluate as ev

    def must_not_run(*a, **k):
        raise AssertionError("work done before the layout was checked")

    for name in ("_encode_valid", "cached_text", "train"):
        monkeypatch.setattr(ev, name, must_not_run)


def test_two_folder_k_equal_to_the_pool_is_refused_before_training(bottle, tiny_backbone, monkeypatch):
    """Two-folder layout: the test set is the normals not drawn, so k = all of them leaves
    none. That used to surface only after the smaller k had been encoded and trained."""
    from fsac.errors import FsacError
    from fsac.train.data import Category, TestItem

    _no_work(monkeypatch)
    pool = sorted((bottle / "train" / "good").glob("*.png"))[:2]
    cat = Category("two", bottle, "two-folder", pool, [TestItem(next((bottle / "test" / "broken_large").glob("*.png")), 1,
                                                                "broken_large")])
    with pytest.raises(FsacError, match="at least one must be left for the test set"):
        evaluate(tiny_backbone, [cat], EvalConfig(shots=(0, 1, 2), seeds=(0,)), quiet=True)


def test_mvtec_category_without_normal_test_images_names_test_good(bottle, tiny_backbone, monkeypatch):
    # Used to read "no normal test images left after drawing 0 shots", as if k were at fault.
    from fsac.errors import FsacError

    _no_work(monkeypatch)
    (full,) = find_categories(bottle)
    only_defects = subsample(full, 0, 2)
    assert not any(t.label == 0 for t in only_defects.test)
    with pytest.raises(FsacError, match="no normal test images \\(expected test/good\\)"):
        evaluate(tiny_backbone, [only_defects], EvalConfig(shots=(0, 1), seeds=(0,)), quiet=True)
