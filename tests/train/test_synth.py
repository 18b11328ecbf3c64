"""Synthetic anomaly generators (fsac.train.synth) on real MVTec AD bottle images."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from fsac.errors import FsacError
from fsac.preprocess import preprocess_file
from fsac.train import synth as S
from fsac.train.synth import SynthConfig, estimate_foreground, gaussian_patches, generate, nsa_patch
from fsac.train import synth_sheet as SS
from fsac.train.synth_sheet import write_synth_images


@pytest.fixture(scope="module")
def normals(bottle):
    files = sorted((bottle / "train" / "good").glob("*.png"))[:3]
    assert len(files) == 3
    return [preprocess_file(f) for f in files]


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def _mean_abs(a, b, mask):
    return np.abs(a[mask].astype(np.int16) - b[mask].astype(np.int16)).mean()


def _grad(image):
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.dstack([cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)])


def _best_match(haystack, template):
    return float(cv2.matchTemplate(_grad(haystack), template, cv2.TM_CCOEFF_NORMED).max())


# --------------------------------------------------------------------------- module hygiene


def test_module_imports_no_torch():
    # The edge box and light tools may import synth without torch installed.
    import subprocess

    code = "import sys, fsac.train.synth; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- Gaussian


@pytest.mark.parametrize("seed", range(6))
def test_gaussian_changes_inside_mask_only(normals, seed):
    image = normals[seed % 3]
    before = image.copy()
    cfg = SynthConfig(kind="gaussian")
    out, mask = gaussian_patches(image, np.random.default_rng(seed), cfg)
    assert np.array_equal(image, before), "input modified in place"
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    assert mask.any()
    assert np.array_equal(out[~mask], image[~mask])  # bit-identical outside
    assert _mean_abs(out, image, mask) >= cfg.min_change
    # Most pixels inside are really replaced (a Gaussian draw rarely hits the old value).
    changed = np.any(out != image, axis=2)
    assert changed[mask].mean() > 0.8


@pytest.mark.parametrize("seed", range(5))
def test_gaussian_single_square_size_and_bounds(normals, seed):
    cfg = SynthConfig(gauss_patches=(1, 1), gauss_size=(0.1, 0.2), restrict_to_foreground=False)
    out, mask = gaussian_patches(normals[0], np.random.default_rng(seed), cfg)
    y0, y1, x0, x1 = _bbox(mask)
    assert (y1 - y0) == (x1 - x0), "not a square"
    assert mask[y0:y1, x0:x1].all() and mask.sum() == (y1 - y0) ** 2
    assert 0.1 * 240 - 1 <= y1 - y0 <= 0.2 * 240 + 1
    assert 0 <= y0 and y1 <= 240 and 0 <= x0 and x1 <= 240


def test_gaussian_patch_count(normals):
    for seed in range(5):
        cfg = SynthConfig(gauss_patches=(3, 3), gauss_size=(0.05, 0.05), restrict_to_foreground=False)
        _, mask = gaussian_patches(normals[1], np.random.default_rng(seed), cfg)
        n, _ = cv2.connectedComponents(mask.astype(np.uint8))
        assert 2 <= n <= 4  # 3 squares (+ background label), fewer only where they touch
        assert mask.sum() <= 3 * 12 * 12


def _small_object(image, size=90, at=(20, 130)):
    """The bottle shrunk onto a white 240 x 240 canvas: the object covers ~11 % of it."""
    canvas = np.full_like(image, 255)
    y, x = at
    canvas[y : y + size, x : x + size] = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return canvas


def test_gaussian_restricted_to_foreground(normals):
    image = _small_object(normals[0])
    cfg = SynthConfig(gauss_patches=(1, 1))
    fg = estimate_foreground(image, cfg)
    assert fg is not None and 0.05 < fg.mean() < 0.15
    for seed in range(8):
        _, mask = gaussian_patches(image, np.random.default_rng(seed), cfg)
        assert fg[mask].mean() >= cfg.fg_min_overlap
    # Without the restriction patches land anywhere, mostly on the background.
    free = SynthConfig(gauss_patches=(1, 1), restrict_to_foreground=False)
    overlaps = [fg[gaussian_patches(image, np.random.default_rng(s), free)[1]].mean() for s in range(8)]
    assert min(overlaps) < cfg.fg_min_overlap


def test_nsa_restricted_to_foreground(normals):
    target = _small_object(normals[0], at=(130, 20))
    source = _small_object(normals[1], at=(20, 130))
    cfg = SynthConfig(kind="nsa")
    fg_t = estimate_foreground(target, cfg)
    for seed in range(6):
        out, mask = nsa_patch(target, source, np.random.default_rng(seed), cfg)
        assert fg_t[mask].mean() >= cfg.fg_min_overlap
        assert _mean_abs(out, target, mask) >= cfg.min_change


def test_estimate_foreground(normals):
    fg = estimate_foreground(normals[0])
    assert fg is not None and fg.shape == (240, 240) and fg.dtype == bool
    assert 0.3 < fg.mean() < 0.9  # the bottle, not the white background
    assert fg[120, 120] and not fg[2, 2] and not fg[-3, -3]
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert estimate_foreground(noise) is None  # no uniform border: no object/background split
    assert estimate_foreground(np.full((64, 64, 3), 200, np.uint8)) is None  # nothing found


# --------------------------------------------------------------------------- NSA


@pytest.mark.parametrize("seed", range(6))
def test_nsa_changes_inside_rectangle_only(normals, seed):
    target, source = normals[0], normals[1]
    t0, s0 = target.copy(), source.copy()
    cfg = SynthConfig(kind="nsa")
    out, mask = nsa_patch(target, source, np.random.default_rng(seed), cfg)
    assert np.array_equal(target, t0) and np.array_equal(source, s0), "input modified in place"
    assert out.dtype == np.uint8 and out.shape == target.shape
    assert mask.dtype == bool and mask.shape == target.shape[:2] and mask.any()
    y0, y1, x0, x1 = _bbox(mask)
    assert mask[y0:y1, x0:x1].all(), "mask is one rectangle"
    assert y0 >= 1 and x0 >= 1 and y1 <= 239 and x1 <= 239
    assert np.array_equal(out[~mask], target[~mask])
    assert _mean_abs(out, target, mask) >= cfg.min_change


def test_nsa_clone_writes_only_inside_the_rectangle(normals):
    # The guarantee above is partly by construction (pixels outside are copied back); check
    # that this copy does not hide a misplaced clone: OpenCV itself changes nothing outside
    # the rectangle, and the blended content is aligned with it (no 1-px shift).
    target, source = normals[0], normals[2]
    patch = source[60:110, 40:95]
    src = target.copy()
    src[100:150, 80:135] = patch
    m = np.zeros((240, 240), np.uint8)
    m[100:150, 80:135] = 255
    raw = cv2.seamlessClone(src, target, m.copy(), (80 + 55 // 2, 100 + 50 // 2), cv2.NORMAL_CLONE)
    outside = np.ones((240, 240), bool)
    outside[100:150, 80:135] = False
    assert np.array_equal(raw[outside], target[outside])
    ours = S._clone(patch, target, 100, 80, cv2.NORMAL_CLONE)
    assert np.array_equal(ours, raw)
    g_out = np.diff(ours[102:148, 82:133].astype(float), axis=1)
    g_src = np.diff(patch[2:48, 2:53].astype(float), axis=1)
    corr = [np.corrcoef(g_out[:, 2:-2].ravel(), np.roll(g_src, s, axis=1)[:, 2:-2].ravel())[0, 1] for s in (-1, 0, 1)]
    assert np.argmax(corr) == 1 and corr[1] > 0.9


def test_nsa_patch_comes_from_the_source(normals):
    # No rescale: the blended region keeps the source patch's gradients (Poisson editing),
    # so its gradient template matches the source image better than the target itself.
    target, source = normals[0], normals[1]
    cfg = SynthConfig(kind="nsa", nsa_resize=(1.0, 1.0))
    for seed in range(4):
        out, mask = nsa_patch(target, source, np.random.default_rng(seed), cfg)
        y0, y1, x0, x1 = _bbox(mask)
        tmpl = _grad(out)[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
        assert _best_match(source, tmpl) > _best_match(target, tmpl) + 0.05


def test_nsa_size_distribution(normals):
    cfg = SynthConfig(kind="nsa", nsa_resize=(1.0, 1.0), restrict_to_foreground=False, min_change=0.0)
    sides = []
    for seed in range(30):
        _, mask = nsa_patch(normals[0], normals[1], np.random.default_rng(seed), cfg)
        y0, y1, x0, x1 = _bbox(mask)
        sides += [(y1 - y0) / 240, (x1 - x0) / 240]
    sides = np.array(sides)
    assert sides.min() >= cfg.nsa_size[0] - 0.01 and sides.max() <= cfg.nsa_size[1] + 0.01
    # offset + Gamma(2, 0.1): mean 0.26 before clipping; width and height drawn independently.
    assert 0.18 < sides.mean() < 0.32
    assert len(np.unique(np.round(sides, 3))) > 20


def test_nsa_same_image_moves_the_patch(normals):
    image = normals[2]
    cfg = SynthConfig(kind="nsa", nsa_shift=False)  # the same image always shifts
    for seed in range(4):
        out, mask = nsa_patch(image, None, np.random.default_rng(seed), cfg)
        assert _mean_abs(out, image, mask) >= cfg.min_change
        assert np.array_equal(out[~mask], image[~mask])


@pytest.mark.parametrize("clone", ["mixed", "random"])
def test_nsa_clone_modes_still_change_the_image(normals, clone):
    cfg = SynthConfig(kind="nsa", nsa_clone=clone)
    for seed in range(3):
        out, mask = nsa_patch(normals[0], normals[1], np.random.default_rng(seed), cfg)
        assert _mean_abs(out, normals[0], mask) >= cfg.min_change


def test_nsa_blank_image_falls_back_to_gaussian():
    # Nothing to cut from a constant image: generate says what it did instead.
    blank = np.full((64, 64, 3), 90, np.uint8)
    (row,) = generate([blank], SynthConfig(kind="nsa", per_image=2))
    assert [s.kind for s in row] == ["gaussian", "gaussian"]
    for s in row:
        assert s.source_index is None and _mean_abs(s.image, blank, s.mask) >= 8.0


# --------------------------------------------------------------------------- generate


@pytest.mark.parametrize("kind", ["gaussian", "nsa", "mixed"])
def test_generate_structure(normals, kind):
    before = [im.copy() for im in normals]
    cfg = SynthConfig(kind=kind, per_image=3)
    samples = generate(normals, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(normals, before))
    assert len(samples) == 3 and all(len(row) == 3 for row in samples)
    for i, row in enumerate(samples):
        for s in row:
            assert s.image.shape == (240, 240, 3) and s.image.dtype == np.uint8
            assert s.mask.shape == (240, 240) and s.mask.dtype == bool and s.mask.any()
            assert np.array_equal(s.image[~s.mask], normals[i][~s.mask])
            assert _mean_abs(s.image, normals[i], s.mask) >= cfg.min_change
            if s.kind == "nsa":
                assert s.source_index in (0, 1, 2) and s.source_index != i
            else:
                assert s.kind == "gaussian" and s.source_index is None
            if kind != "mixed":
                assert s.kind == kind


def test_generate_mixed_produces_both_kinds_balanced(normals):
    samples = generate(normals, SynthConfig(kind="mixed", per_image=4))
    for row in samples:
        kinds = [s.kind for s in row]
        assert kinds.count("nsa") == 2 and kinds.count("gaussian") == 2
    starts = {row[0].kind for row in generate(normals * 3, SynthConfig(kind="mixed", per_image=1))}
    assert starts == {"gaussian", "nsa"}


def test_generate_is_deterministic(normals):
    cfg = SynthConfig(kind="mixed", per_image=3, seed=7)
    a, b = generate(normals, cfg), generate(normals, cfg)
    for ra, rb in zip(a, b):
        for sa, sb in zip(ra, rb):
            assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.mask, sb.mask)
            assert (sa.kind, sa.source_index) == (sb.kind, sb.source_index)
    c = generate(normals, SynthConfig(kind="mixed", per_image=3, seed=8))
    differ = [not np.array_equal(sa.image, sc.image) for ra, rc in zip(a, c) for sa, sc in zip(ra, rc)]
    assert sum(differ) >= 8  # of 9


def test_generate_sample_does_not_depend_on_others(normals):
    # Sample (i, j) has its own stream: more samples per image or more images after it do
    # not change it (Gaussian: does not depend on the other images at all).
    cfg = SynthConfig(kind="gaussian", per_image=4, seed=3)
    full = generate(normals, cfg)
    fewer = generate(normals[:2], SynthConfig(kind="gaussian", per_image=2, seed=3))
    for i in range(2):
        for j in range(2):
            assert np.array_equal(full[i][j].image, fewer[i][j].image)


def test_generate_k1_nsa(normals):
    (row,) = generate(normals[:1], SynthConfig(kind="nsa", per_image=3))
    assert [s.kind for s in row] == ["nsa"] * 3
    assert all(s.source_index == 0 for s in row)
    masks = [s.mask for s in row]
    assert not np.array_equal(masks[0], masks[1])


@pytest.mark.parametrize("hw", [(32, 32), (32, 48), (57, 200), (300, 120)])
def test_non_square_and_small_images(normals, hw):
    h, w = hw
    ims = [cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in normals[:2]]
    for kind in ("gaussian", "nsa"):
        samples = generate(ims, SynthConfig(kind=kind, per_image=2))
        for i, row in enumerate(samples):
            for s in row:
                assert s.image.shape == (h, w, 3) and s.mask.shape == (h, w)
                assert s.mask.any() and not s.mask.all()
                assert np.array_equal(s.image[~s.mask], ims[i][~s.mask])
                assert not np.array_equal(s.image, ims[i])


def test_images_of_different_sizes(normals):
    small = cv2.resize(normals[1], (64, 48), interpolation=cv2.INTER_AREA)
    samples = generate([normals[0], small], SynthConfig(kind="nsa", per_image=2, restrict_to_foreground=False))
    assert samples[0][0].image.shape == (240, 240, 3) and samples[1][0].image.shape == (48, 64, 3)
    assert all(s.kind == "nsa" for row in samples for s in row)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field, value",
    [
        ("kind", "perlin"),
        ("per_image", 0),
        ("per_image", 2.5),
        ("per_image", True),
        ("seed", -1),
        ("min_change", -1.0),
        ("max_attempts", 0),
        ("gauss_patches", (0, 2)),
        ("gauss_patches", (3, 2)),
        ("gauss_size", (0.3, 0.1)),
        ("gauss_size", (0.0, 0.1)),
        ("gauss_size", (0.1,)),
        ("gauss_std", (-1.0, 5.0)),
        ("nsa_gamma_shape", 0.0),
        ("nsa_gamma_scale", float("nan")),
        ("nsa_size", (0.1, 1.5)),
        ("nsa_resize", (0.0, 1.0)),
        ("nsa_clone", "seamless"),
        ("nsa_shift", "yes"),
        ("restrict_to_foreground", 1),
        ("fg_fraction", (0.5, 0.2)),
        ("fg_min_overlap", 1.5),
    ],
)
def test_bad_settings_raise_naming_the_setting(field, value):
    with pytest.raises(FsacError, match=f"synth.{field}"):
        SynthConfig(**{field: value})


def test_config_dict_round_trip():
    cfg = SynthConfig(kind="mixed", per_image=2, gauss_size=(0.1, 0.2))
    d = cfg.to_dict()
    assert d["gauss_size"] == [0.1, 0.2]
    assert SynthConfig.from_dict(d) == cfg
    with pytest.raises(FsacError, match="unknown synth settings"):
        SynthConfig.from_dict({"per_imag": 3})


@pytest.mark.parametrize(
    "bad",
    [np.zeros((240, 240), np.uint8), np.zeros((240, 240, 3), np.float32), np.zeros((16, 240, 3), np.uint8), "x"],
)
def test_bad_images_raise(bad):
    with pytest.raises(FsacError, match="normal image 0"):
        generate([bad], SynthConfig())


def test_no_images_raise():
    with pytest.raises(FsacError, match="no normal images"):
        generate([], SynthConfig())


# --------------------------------------------------------------------------- inspection


def test_write_synth_images(normals, tmp_path):
    samples = generate(normals[:2], SynthConfig(kind="mixed", per_image=2))
    paths = write_synth_images(normals[:2], samples, tmp_path / "out", names=["000", "weird name/..png"])
    assert len(paths) == 2 * 2 * 2 + 1
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in paths)
    assert paths[-1].name == "contact_sheet.png"
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files
    images = [p for p in paths if p.name.endswith(("_gaussian.png", "_nsa.png"))]
    masks = [p for p in paths if p.name.endswith("_mask.png")]
    assert len(images) == 4 and len(masks) == 4
    assert images[2].name.startswith("001_weird_name")
    flat = [s for row in samples for s in row]
    for p, m, s in zip(images, masks, flat):
        rgb = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(rgb, s.image)  # lossless, and the channel order is right
        assert p.name.endswith(f"_{s.kind}.png")
        gray = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(gray > 127, s.mask) and set(np.unique(gray)) <= {0, 255}
    sheet = cv2.cvtColor(cv2.imread(str(paths[-1]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(sheet, SS.contact_sheet(normals[:2], samples, ["000", "weird_name_..png"]))
    assert sheet.shape[0] > 2 * 240 and sheet.shape[1] > 3 * 240
    # The normal image sits unchanged in the first tile of each row.
    g, lab = SS._SHEET_GAP, SS._SHEET_LABEL
    assert np.array_equal(sheet[g + lab : g + lab + 240, g : g + 240], normals[0])
    # Red mask outlines are drawn on the synthetic tiles.
    red = (sheet[..., 0] == 255) & (sheet[..., 1] == 0) & (sheet[..., 2] == 0)
    assert red[:, g + 240 :].sum() > 100


def test_outline_stays_outside_the_mask(normals):
    mask = np.zeros((240, 240), bool)
    mask[50:90, 60:120] = True
    out = SS.outline(normals[0], mask)
    assert np.array_equal(out[mask], normals[0][mask])
    assert (out != normals[0]).any(axis=2).sum() > 150


def test_write_synth_images_checks_lengths(normals, tmp_path):
    samples = generate(normals[:2], SynthConfig(per_image=1))
    with pytest.raises(FsacError):
        write_synth_images(normals[:1], samples, tmp_path)
    with pytest.raises(FsacError):
        write_synth_images(normals[:2], samples, tmp_path, names=["a"])
