"""fsac/image_geometry.py: warnings from the images' headers, on real and made-up sizes."""

from __future__ import annotations

from PIL import Image

from fsac.image_geometry import geometry_warnings, image_sizes
from fsac.preprocess import PreprocessSpec


def test_geometry_warnings_on_real_variable_size_images(shared_data, tmp_path):
    """brain_mri holds mixed sizes (about 225-630 px, not square): shortest would crop them."""
    paths = sorted((shared_data / "brain_mri" / "normal").iterdir())[:30]
    sizes = image_sizes(paths)
    assert len(sizes) == len(paths)
    worst = max(max(w, h) / min(w, h) for _, w, h in sizes)
    crop = geometry_warnings(sizes, PreprocessSpec(resize_mode="shortest"))
    assert len(crop) == 1 and "crops away up to" in crop[0] and f"{1 - 1 / worst:.0%}" in crop[0]
    assert geometry_warnings(sizes, PreprocessSpec(resize_mode="longest")) == []  # longest keeps everything


def test_geometry_warnings_for_squash_distortion_and_small_images(tmp_path):
    for name, size in (("wide.png", (900, 300)), ("square.png", (400, 400)), ("tiny.png", (60, 50))):
        Image.new("RGB", size, (10, 20, 30)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    sizes = image_sizes(sorted(tmp_path.iterdir()))
    assert [(n.split("/")[-1], w, h) for n, w, h in sizes] == [("square.png", 400, 400), ("tiny.png", 60, 50),
                                                            ("wide.png", 900, 300)]
    warns = geometry_warnings(sizes, PreprocessSpec())  # squash, 240
    assert len(warns) == 2
    assert "1 of 3 images are far from square" in warns[0] and "900x300" in warns[0] and "longest" in warns[0]
    assert "1 of 3 images are much smaller" in warns[1] and "smallest side 50 px" in warns[1]
    assert geometry_warnings([("a.png", 240, 240), ("b.png", 300, 200)], PreprocessSpec()) == []
