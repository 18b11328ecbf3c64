"""Writing the synthetic anomalies as PNGs: a rerun into the same folder leaves only its own files."""

from fsac.preprocess import PreprocessSpec, preprocess_file
from fsac.train.synth import SynthConfig, generate
from fsac.train.synth_sheet import remove_synth_images, write_synth_images


def _pixels(bottle, n):
    spec = PreprocessSpec(image_size=64)
    return [preprocess_file(p, spec) for p in sorted((bottle / "train" / "good").glob("*.png"))[:n]]


def test_rerun_with_fewer_images_leaves_no_stale_files(bottle, tmp_path):
    # A second run with fewer images / anomalies used to leave the first run's extra PNGs
    # beside the new ones, where they read as part of this run.
    out = tmp_path / "synth"
    big = _pixels(bottle, 2)
    write_synth_images(big, generate(big, SynthConfig(per_image=3)), out, names=["a", "b"])
    (out / "notes.txt").write_text("mine")  # not ours: must survive
    small = big[:1]
    paths = write_synth_images(small, generate(small, SynthConfig(per_image=1)), out, names=["a"])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(p.name for p in paths)
    assert (out / "notes.txt").read_text() == "mine"


def test_remove_synth_images_touches_only_its_own_names(bottle, tmp_path):
    out = tmp_path / "synth"
    px = _pixels(bottle, 1)
    written = write_synth_images(px, generate(px, SynthConfig(per_image=1)), out)
    (out / "photo.png").write_bytes(written[0].read_bytes())
    removed = remove_synth_images(out)
    assert sorted(removed) == sorted(written)
    assert [p.name for p in out.iterdir()] == ["photo.png"]
    assert remove_synth_images(tmp_path / "missing") == []
