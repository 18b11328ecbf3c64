"""fsac.preprocess: decoding every image mode, geometry (parity with open_clip), errors.

Expected pixel values are computed independently of the code under test (literal values,
textbook colour formulas, numpy), never by calling `to_rgb` again.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageCms

import fsac.preprocess as pp
from fsac.errors import FsacError, ImageDecodeError
from fsac.preprocess import (
    IMAGE_SUFFIXES,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PreprocessSpec,
    decode_image_bytes,
    decode_resize_bytes,
    frame_to_rgb,
    list_images,
    load_image,
    preprocess_file,
    preprocess_frame,
    resize_crop,
    stack,
    to_rgb,
)

cv2 = pytest.importorskip("cv2")

BG = (10, 200, 30)  # a non-black alpha background, so compositing is visible
SPEC_BG = PreprocessSpec(alpha_background=BG)


def _check_rgb(out: np.ndarray, h: int, w: int) -> None:
    assert isinstance(out, np.ndarray)
    assert out.shape == (h, w, 3), out.shape
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]


def _gray3(g: np.ndarray) -> np.ndarray:
    return np.stack([g, g, g], axis=-1).astype(np.uint8)


def _blend(fg, alpha, bg=BG) -> np.ndarray:
    """Straight-alpha 'over' onto an opaque background, float, per channel."""
    fg = np.asarray(fg, dtype=np.float64)
    a = np.asarray(alpha, dtype=np.float64)[..., None] / 255.0
    return fg * a + np.asarray(bg, dtype=np.float64) * (1.0 - a)


def _assert_close(out, expected, tol) -> None:
    diff = np.abs(out.astype(np.int64) - np.rint(np.asarray(expected, dtype=np.float64)).astype(np.int64))
    assert diff.max() <= tol, f"max abs diff {diff.max()} > {tol}"


def _blocks(colors: list[tuple[int, ...]], block: int = 16) -> np.ndarray:
    """One row of flat colour blocks (block x block each), aligned to JPEG MCUs."""
    return np.concatenate([np.full((block, block, len(c)), c, dtype=np.uint8) for c in colors], axis=1)


def _centres(arr: np.ndarray, n: int, block: int = 16) -> np.ndarray:
    """The pixel in the middle of each of the n blocks of a _blocks() image."""
    return np.stack([arr[block // 2, i * block + block // 2] for i in range(n)])


# --------------------------------------------------------------------------- decoding: modes


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_mode_1(tmp_path, fmt):
    bits = np.zeros((5, 7), dtype=bool)
    bits[1:4, 2:6] = True
    bits[0, 0] = True
    img = Image.fromarray(bits)
    assert img.mode == "1"
    p = tmp_path / f"bits.{fmt.lower()}"
    img.save(p, fmt)
    assert Image.open(p).mode == "1"
    out = load_image(p, SPEC_BG)
    _check_rgb(out, 5, 7)
    np.testing.assert_array_equal(out, _gray3(np.where(bits, 255, 0)))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_mode_L(tmp_path, fmt):
    g = np.arange(6 * 9, dtype=np.uint8).reshape(6, 9) * 4 + 3
    p = tmp_path / f"l.{fmt.lower()}"
    Image.fromarray(g, "L").save(p, fmt)
    out = load_image(p)
    _check_rgb(out, 6, 9)
    np.testing.assert_array_equal(out, _gray3(g))


def test_mode_LA_composited_onto_background(tmp_path):
    g = np.array([[0, 100, 200, 255], [50, 60, 70, 80]], dtype=np.uint8)
    a = np.array([[255, 0, 128, 1], [254, 64, 192, 255]], dtype=np.uint8)
    p = tmp_path / "la.png"
    Image.fromarray(np.stack([g, a], axis=-1), "LA").save(p)
    assert Image.open(p).mode == "LA"
    out = load_image(p, SPEC_BG)
    _check_rgb(out, 2, 4)
    _assert_close(out, _blend(_gray3(g), a), 1)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])  # opaque: the pixel itself
    np.testing.assert_array_equal(out[0, 1], BG)  # fully transparent: the background
    # Default background is black.
    _assert_close(load_image(p), _blend(_gray3(g), a, (0, 0, 0)), 1)


def _palette_image(idx: np.ndarray, palette: list[tuple[int, int, int]]) -> Image.Image:
    img = Image.fromarray(idx.astype(np.uint8), "P")
    flat = [c for rgb in palette for c in rgb]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (12, 34, 56)]
IDX = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 3, 3]])


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "TIFF", "BMP"])
def test_mode_P_without_transparency(tmp_path, fmt):
    p = tmp_path / f"p.{fmt.lower()}"
    _palette_image(IDX, PALETTE).save(p, fmt)
    assert Image.open(p).mode == "P"
    out = load_image(p, SPEC_BG)
    _check_rgb(out, 3, 4)
    np.testing.assert_array_equal(out, np.array(PALETTE, dtype=np.uint8)[IDX])


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_mode_P_with_transparent_index(tmp_path, fmt):
    img = _palette_image(IDX, PALETTE)
    p = tmp_path / f"pt.{fmt.lower()}"
    img.save(p, fmt, transparency=3)
    reread = Image.open(p)
    assert reread.mode == "P" and reread.info.get("transparency") == 3
    out = load_image(p, SPEC_BG)
    expected = np.array(PALETTE, dtype=np.uint8)[IDX]
    expected[IDX == 3] = BG
    np.testing.assert_array_equal(out, expected)


def test_mode_P_with_per_index_alpha(tmp_path):
    img = _palette_image(IDX, PALETTE)
    alphas = [255, 128, 0, 64]
    p = tmp_path / "ptrns.png"
    img.save(p, transparency=bytes(alphas))
    out = load_image(p, SPEC_BG)
    fg = np.array(PALETTE)[IDX]
    _assert_close(out, _blend(fg, np.array(alphas)[IDX]), 1)


def test_mode_PA(tmp_path):
    idx = IDX.astype(np.uint8)
    alpha = np.array([[255, 0, 128, 200], [10, 255, 255, 0], [255, 90, 255, 30]], dtype=np.uint8)
    base = _palette_image(idx, PALETTE)
    img = base.convert("PA")
    img.putalpha(Image.fromarray(alpha, "L"))
    assert img.mode == "PA"
    p = tmp_path / "pa.tiff"
    try:
        img.save(p, "TIFF")
    except (OSError, ValueError, KeyError) as e:  # pragma: no cover - depends on Pillow build
        pytest.skip(f"Pillow cannot save PA: {e}")
    if Image.open(p).mode != "PA":  # pragma: no cover
        pytest.skip("Pillow did not keep mode PA")
    out = load_image(p, SPEC_BG)
    _assert_close(out, _blend(np.array(PALETTE)[IDX], alpha), 1)
    # And the in-memory PA image directly.
    _assert_close(to_rgb(img, BG), _blend(np.array(PALETTE)[IDX], alpha), 1)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP"])
def test_mode_RGB_lossless(tmp_path, fmt):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(11, 13, 3), dtype=np.uint8)
    p = tmp_path / f"rgb.{fmt.lower()}"
    kw = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(rgb).save(p, fmt, **kw)
    out = load_image(p)
    _check_rgb(out, 11, 13)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_mode_RGBA_partial_transparency(tmp_path, fmt):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, size=(9, 10, 3), dtype=np.uint8)
    a = rng.integers(0, 256, size=(9, 10), dtype=np.uint8)
    a[0, :] = 255
    a[1, :] = 0
    p = tmp_path / f"rgba.{fmt.lower()}"
    Image.fromarray(np.dstack([rgb, a]), "RGBA").save(p, fmt)
    out = load_image(p, SPEC_BG)
    _check_rgb(out, 9, 10)
    _assert_close(out, _blend(rgb, a), 1)
    np.testing.assert_array_equal(out[0], rgb[0])  # opaque row untouched
    np.testing.assert_array_equal(out[1], np.tile(BG, (10, 1)))  # transparent row = background


def _naive_cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    c, m, y, k = (cmyk[..., i].astype(np.float64) / 255 for i in range(4))
    return np.stack([255 * (1 - c) * (1 - k), 255 * (1 - m) * (1 - k), 255 * (1 - y) * (1 - k)], axis=-1)


CMYK_COLOURS = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255),
                (0, 128, 0, 64), (10, 20, 30, 200), (200, 100, 50, 0)]


def test_mode_CMYK_tiff(tmp_path):
    cmyk = _blocks(CMYK_COLOURS, block=4)
    p = tmp_path / "cmyk.tiff"
    Image.fromarray(cmyk, "CMYK").save(p, "TIFF")
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    _check_rgb(out, 4, 4 * len(CMYK_COLOURS))
    _assert_close(out, _naive_cmyk_to_rgb(cmyk), 1)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # no ink = white
    np.testing.assert_array_equal(out[0, 4 * 4], [0, 0, 0])  # full black ink = black


def test_mode_CMYK_jpeg(tmp_path):
    cmyk = _blocks(CMYK_COLOURS)
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(p, "JPEG", quality=100, subsampling=0)
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    _check_rgb(out, 16, 16 * len(CMYK_COLOURS))
    _assert_close(_centres(out, len(CMYK_COLOURS)), _naive_cmyk_to_rgb(np.array(CMYK_COLOURS, dtype=np.uint8)), 3)


YCC = [(128, 128, 128), (76, 85, 255), (150, 44, 21), (29, 255, 107), (235, 128, 128), (16, 128, 128)]


def _jfif_ycc_to_rgb(ycc) -> np.ndarray:
    ycc = np.asarray(ycc, dtype=np.float64)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(rgb, 0, 255)


def test_mode_YCbCr_jpeg(tmp_path):
    img = Image.fromarray(_blocks(YCC), "YCbCr")
    p = tmp_path / "ycc.jpg"
    img.save(p, "JPEG", quality=100, subsampling=0)
    out = load_image(p)
    _check_rgb(out, 16, 16 * len(YCC))
    _assert_close(_centres(out, len(YCC)), _jfif_ycc_to_rgb(YCC), 3)


def test_mode_YCbCr_tiff(tmp_path):
    p = tmp_path / "ycc.tiff"
    Image.fromarray(_blocks(YCC, 2), "YCbCr").save(p, "TIFF")
    assert Image.open(p).mode == "YCbCr"
    out = load_image(p)
    _assert_close(_centres(out, len(YCC), 2), _jfif_ycc_to_rgb(YCC), 2)


def test_mode_LAB_tiff(tmp_path):
    rgb = _blocks([(200, 100, 50), (0, 0, 0), (255, 255, 255), (30, 160, 220)], 2)
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    lab = ImageCms.applyTransform(Image.fromarray(rgb), to_lab)
    assert lab.mode == "LAB"
    p = tmp_path / "lab.tiff"
    lab.save(p, "TIFF")
    assert Image.open(p).mode == "LAB"
    # LittleCMS's own way back (8-bit Lab quantises: a few units off the original in dark blues)
    back = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    _assert_close(load_image(p), np.asarray(ImageCms.applyTransform(lab, back)), 1)
    _assert_close(load_image(p), rgb, 10)


def test_mode_HSV_in_memory():
    hsv = Image.fromarray(_blocks([(0, 255, 255), (85, 255, 255), (170, 255, 255), (0, 0, 128)], 1), "HSV")
    _assert_close(to_rgb(hsv), _blocks([(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)], 1), 2)


def test_mode_I16_png_fixed_scaling(tmp_path):
    v = np.array([[0, 65535, 257 * 100, 1000], [255, 256, 32768, 65280]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(v).save(p)
    assert Image.open(p).mode == "I;16"
    out = load_image(p)
    _check_rgb(out, 2, 4)
    # fixed factor, never the image's own range: 65535 -> 255, 257 * 100 -> 100, high byte
    np.testing.assert_array_equal(out[..., 0], [[0, 255, 100, 3], [0, 1, 128, 255]])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # A dark 16-bit image stays dark (no stretching to its own min/max).
    dark = np.full((3, 3), 700, dtype=np.uint16)
    dark[1, 1] = 900
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "dark16.png")[..., 0], (dark >> 8).astype(np.uint8))


def test_mode_I16_written_by_opencv(tmp_path):
    v = np.array([[0, 65535, 25700], [12345, 4660, 65279]], dtype=np.uint16)
    p = tmp_path / "cv16.png"
    assert cv2.imwrite(str(p), v)
    out = load_image(p)
    np.testing.assert_array_equal(out, _gray3(np.array([[0, 255, 100], [48, 18, 254]])))
    # the same pixels as the uint16 frame path
    np.testing.assert_array_equal(out, frame_to_rgb(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)))


def test_mode_I16B_in_memory():
    v = np.array([[0, 65535, 25700, 512]], dtype=">u2")
    img = Image.frombytes("I;16B", (4, 1), v.tobytes())
    assert img.mode == "I;16B"
    np.testing.assert_array_equal(to_rgb(img)[..., 0], [[0, 255, 100, 2]])


def test_mode_I_32bit_tiff(tmp_path):
    v = np.array([[0, 65535, 257 * 100, 100000], [-5, 1000, 256, 70000]], dtype=np.int32)
    p = tmp_path / "i32.tiff"
    Image.fromarray(v).save(p, "TIFF")
    assert Image.open(p).mode == "I"
    out = load_image(p)
    _check_rgb(out, 2, 4)
    # 16-bit scale, clipped: negatives -> 0, above 65535 -> 255
    np.testing.assert_array_equal(out[..., 0], [[0, 255, 100, 255], [0, 3, 1, 255]])
    assert (out[..., 0] == out[..., 2]).all()


def test_mode_I_scale_does_not_depend_on_content(tmp_path):
    """32-bit ints are always 16-bit data: small values stay dark, whatever the image holds."""
    v = np.array([[0, 17, 128, 255]], dtype=np.int32)
    p = tmp_path / "i8.tiff"
    Image.fromarray(v).save(p, "TIFF")
    np.testing.assert_array_equal(load_image(p)[..., 1], [[0, 0, 0, 0]])
    v2 = np.array([[0, 17, 128, 255, 65535]], dtype=np.int32)
    Image.fromarray(v2).save(tmp_path / "i16.tiff", "TIFF")
    np.testing.assert_array_equal(load_image(tmp_path / "i16.tiff")[..., 1], [[0, 0, 0, 0, 255]])


def test_mode_F_float_tiff(tmp_path):
    unit = np.array([[0.0, 1.0, 0.5, 0.25], [0.1, 0.8, 0.002, 0.998]], dtype=np.float32)
    p = tmp_path / "f.tiff"
    Image.fromarray(unit).save(p, "TIFF")
    assert Image.open(p).mode == "F"
    out = load_image(p)
    _check_rgb(out, 2, 4)
    # Float data is always taken as 0..255 (a fixed rule, not guessed from the values)
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 0, 0], [0, 1, 0, 1]])
    # and clipped
    wide = np.array([[-1.0, 2.0, 300.4, 100.6]], dtype=np.float32)
    Image.fromarray(wide).save(tmp_path / "wide.tiff", "TIFF")
    np.testing.assert_array_equal(load_image(tmp_path / "wide.tiff")[..., 2], [[0, 2, 255, 101]])


def test_16bit_rgb_png_from_opencv(tmp_path):
    """Pillow decodes 16-bit colour PNGs to 8-bit RGB (high byte), in RGB order."""
    rgb16 = np.zeros((3, 4, 3), dtype=np.uint16)
    rgb16[0, 0] = (65535, 0, 0)  # red
    rgb16[0, 1] = (0, 65535, 0)  # green
    rgb16[0, 2] = (0, 0, 65535)  # blue
    rgb16[1, 0] = (257 * 100, 257 * 50, 257 * 200)
    rgb16[2, 3] = (1000, 2000, 3000)
    p = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(p), rgb16[..., ::-1])  # OpenCV writes BGR
    out = load_image(p)
    _check_rgb(out, 3, 4)
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out[1, 0], [100, 50, 200])
    # same pixels as the camera path for the same uint16 data
    np.testing.assert_array_equal(out, frame_to_rgb(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), "bgr"))


def test_16bit_grey_and_colour_png_agree(tmp_path):
    """The same grey scene saved as 16-bit grey and as 16-bit colour gives the same pixels."""
    g = np.random.default_rng(5).integers(0, 65536, size=(8, 8), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "g.png"), g)
    assert cv2.imwrite(str(tmp_path / "c.png"), np.dstack([g, g, g]))
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), load_image(tmp_path / "c.png"))


def test_16bit_rgba_png_from_opencv(tmp_path):
    bgra = np.zeros((2, 2, 4), dtype=np.uint16)
    bgra[..., 3] = 65535
    bgra[0, 0, :3] = (0, 0, 65535)  # red in BGR
    bgra[1, 1] = (257 * 10, 257 * 20, 257 * 30, 0)  # fully transparent
    p = tmp_path / "rgba16.png"
    assert cv2.imwrite(str(p), bgra)
    out = load_image(p, SPEC_BG)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[1, 1], BG)
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])


def test_grayscale_jpeg(tmp_path):
    levels = [0, 40, 90, 128, 200, 255]
    g = _blocks([(v,) for v in levels])[..., 0]
    p = tmp_path / "g.jpg"
    Image.fromarray(g, "L").save(p, "JPEG", quality=95)
    assert Image.open(p).mode == "L"
    out = load_image(p)
    _check_rgb(out, 16, 16 * len(levels))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    _assert_close(_centres(out, len(levels))[:, 0], levels, 2)


def _quadrants(h: int = 32, w: int = 48) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)  # top-left red
    img[: h // 2, w // 2 :] = (0, 255, 0)  # top-right green
    img[h // 2 :, : w // 2] = (0, 0, 255)  # bottom-left blue
    img[h // 2 :, w // 2 :] = (255, 255, 255)  # bottom-right white
    return img


def test_exif_rotated_jpeg(tmp_path):
    stored = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    p = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(p, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    raw = np.asarray(Image.open(p).convert("RGB"))
    assert raw.shape == (32, 48, 3)
    out = load_image(p)
    _check_rgb(out, 48, 32)  # transposed
    np.testing.assert_array_equal(out, np.rot90(raw, k=-1))
    # after a clockwise turn the stored top-left (red) is at the top right, blue at the top left
    _assert_close(out[4, 28], (255, 0, 0), 4)
    _assert_close(out[4, 4], (0, 0, 255), 4)
    _assert_close(out[44, 28], (0, 255, 0), 4)
    # decode_image_bytes applies the same orientation
    np.testing.assert_array_equal(decode_image_bytes(p.read_bytes(), "rot.jpg"), out)


def test_decode_image_bytes_equals_load_image(tmp_path):
    rgb = np.random.default_rng(6).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    a = np.full((7, 5), 100, dtype=np.uint8)
    p = tmp_path / "x.png"
    Image.fromarray(np.dstack([rgb, a]), "RGBA").save(p)
    np.testing.assert_array_equal(decode_image_bytes(p.read_bytes(), spec=SPEC_BG), load_image(p, SPEC_BG))


def _encoded_in_every_mode() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    images = {
        "RGB": Image.fromarray(rgb), "RGBA": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "L": Image.fromarray(rgb[..., 0]), "LA": Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"),
        "P": Image.fromarray(rgb).quantize(16), "1": Image.fromarray(rgb[..., 0]).convert("1"),
        "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }
    out = []
    for mode, image in images.items():
        for fmt in ("PNG", "TIFF"):
            buf = io.BytesIO()
            image.save(buf, fmt)
            out.append((f"{mode}.{fmt}", buf.getvalue()))
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    out.append(("rotated.jpg", buf.getvalue()))
    return out


@pytest.mark.parametrize("resize_mode", ["squash", "shortest", "longest"])
def test_decode_resize_bytes_equals_the_two_steps(resize_mode):
    """The daemon's one-step decode + resize gives exactly resize_crop(decode_image_bytes(...)),
    and the frame it keeps is decode_image_bytes's, in every mode (RGB takes the direct path)."""
    spec = PreprocessSpec(image_size=24, resize_mode=resize_mode, alpha_background=BG)
    for name, data in _encoded_in_every_mode():
        rgb = decode_image_bytes(data, name, spec)
        x, kept, size = decode_resize_bytes(data, name, spec, keep_rgb=True)
        np.testing.assert_array_equal(x, resize_crop(rgb, spec), err_msg=name)
        np.testing.assert_array_equal(kept, rgb, err_msg=name)
        assert size == (rgb.shape[1], rgb.shape[0]), name
        assert x.shape == (24, 24, 3) and x.dtype == np.uint8 and x.flags["C_CONTIGUOUS"]
        assert decode_resize_bytes(data, name, spec)[1] is None


def test_decode_resize_bytes_errors_name_the_source():
    with pytest.raises(ImageDecodeError, match="cam7.png.*empty"):
        decode_resize_bytes(b"", "cam7.png")
    with pytest.raises(ImageDecodeError, match="cam7.png.*not a recognised image"):
        decode_resize_bytes(b"not an image at all", "cam7.png")


def test_multiframe_gif_uses_first_frame(tmp_path):
    f1 = _palette_image(IDX, PALETTE)
    f2 = _palette_image(3 - IDX, PALETTE)
    p = tmp_path / "anim.gif"
    f1.save(p, save_all=True, append_images=[f2])
    np.testing.assert_array_equal(load_image(p), np.array(PALETTE, dtype=np.uint8)[IDX])


# --------------------------------------------------------------------------- real images


def test_autovi_rgba_equals_dropping_alpha(shared_data):
    folder = shared_data / "autovi" / "pipe_staple"
    files = list_images(folder / "train" / "good")[:3] + list_images(folder / "test" / "missing")[:3]
    assert len(files) == 6
    for f in files:
        with Image.open(f) as im:
            assert im.mode == "RGBA"
            arr = np.asarray(im)
        assert (arr[..., 3] == 255).all()
        out = load_image(f, SPEC_BG)  # background irrelevant: nothing is transparent
        _check_rgb(out, arr.shape[0], arr.shape[1])
        np.testing.assert_array_equal(out, arr[..., :3])


def test_mvtec_bottle_rgb(bottle):
    f = bottle / "train" / "good" / "000.png"
    out = load_image(f)
    _check_rgb(out, 512, 512)
    with Image.open(f) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(out, np.asarray(im))


def test_brain_mri_mixed_files_all_decode(shared_data):
    folder = shared_data / "brain_mri"
    files = list_images(folder / "normal") + list_images(folder / "anomalous")
    assert len(files) > 200
    modes, sizes = set(), set()
    for i, f in enumerate(files):
        out = load_image(f)
        with Image.open(f) as im:
            mode, (w, h) = im.mode, im.size
            modes.add(mode)
            sizes.add((w, h))
            _check_rgb(out, h, w)
            if mode in ("L", "RGB") and i % 3:
                continue  # pixel values of every third grey/colour file are enough (time)
            if mode == "L":
                np.testing.assert_array_equal(out, _gray3(np.asarray(im)))
            elif mode == "RGB":
                np.testing.assert_array_equal(out, np.asarray(im))
            elif mode == "RGBA":
                arr = np.asarray(im)
                _assert_close(out, _blend(arr[..., :3], arr[..., 3], (0, 0, 0)), 1)
            elif mode == "P":
                _assert_close(out, np.asarray(im.convert("RGB")), 0)
    assert {"L", "RGB"} <= modes  # mixed grey and colour
    assert len(sizes) > 10  # mixed sizes
    # the PNGs disguised with a .jpg suffix decode by content
    assert any(f.suffix.lower() == ".jpg" and Image.open(f).format == "PNG" for f in files)


def test_brain_mri_partially_transparent_png(shared_data):
    f = shared_data / "brain_mri" / "normal" / "no.jpg"
    if not f.is_file():
        pytest.skip("no.jpg not in this copy of the data")
    with Image.open(f) as im:
        arr = np.asarray(im)
    if im.mode != "RGBA" or arr[..., 3].min() == 255:
        pytest.skip("no.jpg is not a partially transparent RGBA PNG here")
    for bg in [(0, 0, 0), (255, 255, 255)]:
        out = load_image(f, PreprocessSpec(alpha_background=bg))
        _assert_close(out, _blend(arr[..., :3], arr[..., 3], bg), 1)


# --------------------------------------------------------------------------- parity with open_clip


@pytest.fixture(scope="module")
def open_clip_transform():
    open_clip = pytest.importorskip("open_clip")

    def make(size=240, resize_mode="shortest", interpolation="bicubic"):
        return open_clip.image_transform(size, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                                         interpolation=interpolation, resize_mode=resize_mode, fill_color=0)

    return make


def _normalise(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(S, S, 3) uint8 -> (3, S, S) float32 exactly as ToTensor + Normalize compute it."""
    f = x.astype(np.float32) / np.float32(255.0)
    f = (f - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(f.transpose(2, 0, 1))


def _smooth_random(h: int, w: int, seed: int) -> np.ndarray:
    """Random image with real structure (a bicubic-upscaled random grid), not white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 9), max(2, w // 9), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    noise = rng.integers(-12, 13, size=img.shape)
    return np.clip(img.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def _parity_images(shared_data) -> list[tuple[str, Image.Image]]:
    imgs = []
    for rel in ["mvtec_ad/bottle/train/good/000.png", "mvtec_ad/bottle/test/broken_large/000.png",
                "brain_mri/anomalous/Y41.jpg", "brain_mri/normal/no 9.png", "brain_mri/normal/N15.jpg",
                "brain_mri/normal/no 96.jpg"]:
        p = shared_data / rel
        if p.is_file():
            imgs.append((rel, Image.open(p)))
    for h, w in [(301, 517), (517, 301), (37, 100), (240, 241), (239, 240)]:
        imgs.append((f"synthetic {h}x{w}", Image.fromarray(_smooth_random(h, w, h * 1000 + w))))
    return imgs


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_resize_matches_open_clip(shared_data, open_clip_transform, resize_mode):
    spec = PreprocessSpec(image_size=240, resize_mode=resize_mode)
    transform = open_clip_transform(240, resize_mode)
    images = _parity_images(shared_data)
    assert len(images) >= 9
    non_square = 0
    for name, pil in images:
        rgb = to_rgb(pil)  # our decode; feed open_clip the very same RGB image
        non_square += rgb.shape[0] != rgb.shape[1]
        ours = resize_crop(rgb, spec)
        _check_rgb(ours, 240, 240)
        theirs = transform(Image.fromarray(rgb)).numpy()
        assert theirs.shape == (3, 240, 240)
        diff = np.abs(theirs - _normalise(ours, spec)).max()
        assert diff < 1e-6, f"{name}: max abs difference {diff} from open_clip ({resize_mode})"
    assert non_square >= 5


def test_resize_matches_open_clip_on_raw_grey_image(shared_data, open_clip_transform):
    """open_clip converts to RGB after resizing; for grey images that order does not matter."""
    p = shared_data / "brain_mri" / "anomalous" / "Y41.jpg"
    with Image.open(p) as im:
        assert im.mode == "L"
        theirs = open_clip_transform()(im).numpy()
    spec = PreprocessSpec(resize_mode="shortest")
    assert np.abs(theirs - _normalise(preprocess_file(p, spec), spec)).max() < 1e-6


def test_resize_matches_open_clip_small_target_bilinear(open_clip_transform):
    spec = PreprocessSpec(image_size=64, resize_mode="shortest", interpolation="bilinear")
    rgb = _smooth_random(301, 517, 7)
    theirs = open_clip_transform(64, "shortest", "bilinear")(Image.fromarray(rgb)).numpy()
    assert np.abs(theirs - _normalise(resize_crop(rgb, spec), spec)).max() < 1e-6


# --------------------------------------------------------------------------- geometry


def test_shortest_is_centre_crop_of_resized():
    rgb = _smooth_random(100, 160, 1)
    spec = PreprocessSpec(image_size=50, resize_mode="shortest")
    out = resize_crop(rgb, spec)
    _check_rgb(out, 50, 50)
    full = np.asarray(Image.fromarray(rgb).resize((80, 50), Image.BICUBIC))
    np.testing.assert_array_equal(out, full[:, 15:65])


def test_shortest_keeps_exact_size_image_unchanged():
    rgb = _smooth_random(240, 240, 2)
    np.testing.assert_array_equal(resize_crop(rgb, PreprocessSpec(resize_mode="shortest")), rgb)


def test_squash_keeps_every_pixel_column():
    rgb = np.zeros((20, 100, 3), dtype=np.uint8)
    rgb[:, :10] = 255  # a white band at the far left survives squashing, unlike "shortest"
    spec = PreprocessSpec(image_size=16, resize_mode="squash", interpolation="nearest")
    out = resize_crop(rgb, spec)
    _check_rgb(out, 16, 16)
    assert (out[:, 0] == 255).all() and (out[:, -1] == 0).all()
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(rgb).resize((16, 16), Image.NEAREST)))
    shortest = resize_crop(rgb, PreprocessSpec(image_size=16, resize_mode="shortest", interpolation="nearest"))
    assert (shortest == 0).all()


@pytest.mark.parametrize("h, w", [(100, 50), (50, 100), (30, 31), (64, 64), (10, 300)])
def test_longest_keeps_aspect_and_pads(h, w):
    pad = (1, 2, 3)
    spec = PreprocessSpec(image_size=64, resize_mode="longest", pad_value=pad, interpolation="nearest")
    rgb = np.full((h, w, 3), 250, dtype=np.uint8)
    out = resize_crop(rgb, spec)
    _check_rgb(out, 64, 64)
    content = (out == 250).all(axis=2)
    padded = (out == np.array(pad, dtype=np.uint8)).all(axis=2)
    assert (content | padded).all()
    rows, cols = np.nonzero(content)
    ch, cw = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    scale = 64 / max(h, w)
    assert (ch, cw) == (max(1, round(h * scale)), max(1, round(w * scale)))
    assert max(ch, cw) == 64
    # centred: left/top padding is half the total, rounded down
    assert rows.min() == (64 - ch) // 2 and cols.min() == (64 - cw) // 2
    if h == w:
        assert not padded.any()


def test_resize_crop_dtype_and_shape_checks():
    with pytest.raises(FsacError, match="uint8"):
        resize_crop(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(FsacError, match=r"\(H, W, 3\)"):
        resize_crop(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(FsacError):
        resize_crop(np.zeros((10, 10, 4), dtype=np.uint8))


def test_resize_crop_non_contiguous_input():
    rgb = _smooth_random(90, 70, 3)
    view = rgb[:, ::-1]
    assert not view.flags["C_CONTIGUOUS"]
    for mode in ("shortest", "squash", "longest"):
        spec = PreprocessSpec(image_size=32, resize_mode=mode)
        np.testing.assert_array_equal(resize_crop(view, spec), resize_crop(np.ascontiguousarray(view), spec))


def test_preprocess_frame_and_stack():
    bgr = _smooth_random(50, 80, 4)
    spec = PreprocessSpec(image_size=32)
    x = preprocess_frame(bgr, spec)
    np.testing.assert_array_equal(x, resize_crop(np.ascontiguousarray(bgr[..., ::-1]), spec))
    batch = stack([x, x, x])
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8
    with pytest.raises(FsacError, match="no images"):
        stack([])


# --------------------------------------------------------------------------- corrupt input


def _assert_names(exc_info, source) -> None:
    assert isinstance(exc_info.value, ImageDecodeError)
    assert str(source) in str(exc_info.value)
    assert exc_info.value.source == str(source)


def test_truncated_png(tmp_path, bottle):
    data = (bottle / "train" / "good" / "000.png").read_bytes()
    p = tmp_path / "half.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated") as e:
        load_image(p)
    _assert_names(e, p)
    with pytest.raises(ImageDecodeError) as e:
        decode_image_bytes(data[: len(data) // 2], "cam1/frame-7.png")
    _assert_names(e, "cam1/frame-7.png")


def test_truncated_jpeg(tmp_path, shared_data):
    data = (shared_data / "brain_mri" / "anomalous" / "Y1.jpg").read_bytes()
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as e:
        load_image(p)
    _assert_names(e, p)


def test_png_with_broken_crc(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_smooth_random(20, 20, 9)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.find(b"IDAT")
    data[idat + 10] ^= 0xFF
    p = tmp_path / "crc.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError) as e:
        load_image(p)
    _assert_names(e, p)


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.png"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageDecodeError, match="not a recognised image format") as e:
        load_image(p)
    _assert_names(e, p)
    with pytest.raises(ImageDecodeError, match="not a recognised image format") as e:
        decode_image_bytes(p.read_bytes(), "mqtt:line3")
    _assert_names(e, "mqtt:line3")


def test_empty_missing_folder(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file") as e:
        load_image(empty)
    _assert_names(e, empty)
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageDecodeError, match="no such file") as e:
        load_image(missing)
    _assert_names(e, missing)
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    with pytest.raises(ImageDecodeError, match="folder") as e:
        load_image(folder)
    _assert_names(e, folder)
    with pytest.raises(ImageDecodeError, match="empty file") as e:
        decode_image_bytes(b"", "camera-2")
    _assert_names(e, "camera-2")
    with pytest.raises(ImageDecodeError, match="no such file"):
        preprocess_file(missing)


def test_unreadable_file(tmp_path, monkeypatch):
    p = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(p)

    def denied(fp, *a, **k):  # what open() raises for a chmod 000 file (root could read it anyway)
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(pp.Image, "open", denied)
    with pytest.raises(ImageDecodeError, match="permission denied") as e:
        load_image(p)
    _assert_names(e, p)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(40, 30), (100, 100)])  # 1.2x the limit (Pillow only warns), 10x
def test_decompression_bomb_refused(tmp_path, monkeypatch, size):
    monkeypatch.setattr(pp, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    p = tmp_path / "bomb.png"
    Image.new("L", size).save(p)
    with pytest.raises(ImageDecodeError, match="too large") as e:
        load_image(p)
    _assert_names(e, p)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image_bytes(p.read_bytes(), "bomb")
    ok = tmp_path / "ok.png"
    Image.new("L", (25, 40)).save(ok)  # exactly the limit: accepted
    assert load_image(ok).shape == (40, 25, 3)


# --------------------------------------------------------------------------- camera frames


def test_frame_bgr_to_rgb():
    frame = np.zeros((4, 5, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    out = frame_to_rgb(frame)
    _check_rgb(out, 4, 5)
    assert (out[..., 0] == 30).all() and (out[..., 1] == 20).all() and (out[..., 2] == 10).all()
    out_rgb = frame_to_rgb(frame, "rgb")
    np.testing.assert_array_equal(out_rgb, frame)


def test_frame_gray_and_single_channel():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for frame in (g, g[..., None]):
        out = frame_to_rgb(frame)
        _check_rgb(out, 3, 4)
        np.testing.assert_array_equal(out, _gray3(g))


def test_frame_bgra():
    frame = np.zeros((2, 3, 4), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2], frame[..., 3] = 1, 2, 3, 77
    out = frame_to_rgb(frame)
    _check_rgb(out, 2, 3)
    assert out[0, 0].tolist() == [3, 2, 1]
    np.testing.assert_array_equal(frame_to_rgb(frame, "rgb"), frame[..., :3])


def test_frame_uint16():
    frame = np.array([[[0, 65535, 25700], [1000, 256, 255]]], dtype=np.uint16)
    out = frame_to_rgb(frame)
    _check_rgb(out, 1, 2)
    assert out.tolist() == [[[100, 255, 0], [0, 1, 3]]]
    g16 = np.array([[65535, 0], [257 * 100, 65280]], dtype=np.uint16)
    np.testing.assert_array_equal(frame_to_rgb(g16), _gray3(np.array([[255, 0], [100, 255]])))


@pytest.mark.parametrize(
    "frame, match",
    [
        (np.zeros((4, 4, 2), np.uint8), "2 channels"),
        (np.zeros((4, 4, 5), np.uint8), "5 channels"),
        (np.zeros((16,), np.uint8), "shape"),
        (np.zeros((1, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.float32), "dtype float32"),
        (np.zeros((4, 4, 3), np.int16), "dtype int16"),
        (np.zeros((4, 4), bool), "dtype bool"),
        ([[1, 2], [3, 4]], "shape"),
        (None, "shape"),
    ],
)
def test_frame_errors_name_the_source(frame, match):
    with pytest.raises(ImageDecodeError, match=match) as e:
        frame_to_rgb(frame, source="camera-3 frame 17")
    _assert_names(e, "camera-3 frame 17")


def test_frame_bad_channel_order():
    for frame in (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8)):
        with pytest.raises(FsacError, match="channel_order"):
            frame_to_rgb(frame, "rgba")


# --------------------------------------------------------------------------- PreprocessSpec


def test_spec_defaults_squash_with_open_clip_vit_b_16_plus_240_sizes():
    spec = PreprocessSpec()
    assert spec.image_size == 240 and spec.resize_mode == "squash" and spec.interpolation == "bicubic"
    assert spec.mean == (0.48145466, 0.4578275, 0.40821073)
    assert spec.std == (0.26862954, 0.26130258, 0.27577711)
    assert spec.layout == "NHWC-uint8-RGB"


def test_spec_round_trip_through_json():
    spec = PreprocessSpec(image_size=224, resize_mode="longest", interpolation="bilinear", mean=(0.5, 0.25, 0.125),
                          std=(0.2, 0.3, 0.4), alpha_background=(255, 255, 255), pad_value=(114, 114, 114))
    d = spec.to_dict()
    assert d["layout"] == "NHWC-uint8-RGB" and d["mean"] == [0.5, 0.25, 0.125]
    text = json.dumps(d)
    back = PreprocessSpec.from_dict(json.loads(text))
    assert back == spec
    assert back.to_dict() == d
    assert PreprocessSpec.from_dict(json.loads(json.dumps(PreprocessSpec().to_dict()))) == PreprocessSpec()
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()
    assert PreprocessSpec.from_dict({"image_size": 240.0}).image_size == 240


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"resize_mode": "crop"}, "resize_mode"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"image_size": 8}, "image_size"),
        ({"image_size": 5000}, "image_size"),
        ({"image_size": 240.5}, "image_size"),
        ({"image_size": "240"}, "image_size"),
        ({"image_size": True}, "image_size"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"mean": (0.5, "x", 0.5)}, "mean"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"std": (0.2, -1.0, 0.2)}, "std"),
        ({"std": (0.2, float("nan"), 0.2)}, "std"),
        ({"mean": (0.2, float("inf"), 0.2)}, "mean"),
        ({"alpha_background": (256, 0, 0)}, "alpha_background"),
        ({"alpha_background": (0, 0)}, "alpha_background"),
        ({"pad_value": (0, -1, 0)}, "pad_value"),
        ({"pad_value": (0.5, 0, 0)}, "pad_value"),
    ],
)
def test_spec_bad_settings_name_the_setting(kwargs, setting):
    with pytest.raises(FsacError, match=f"preprocess.{setting}"):
        PreprocessSpec(**kwargs)


@pytest.mark.parametrize(
    "d, match",
    [
        ({"image_size": "abc"}, "preprocess.image_size"),
        ({"image_size": 240.5}, "preprocess.image_size"),
        ({"image_size": None}, "preprocess.image_size"),
        ({"mean": "abc"}, "preprocess.mean"),
        ({"mean": [1, 2, "x"]}, "preprocess.mean"),
        ({"std": 3}, "preprocess.std"),
        ({"alpha_background": [1, 2, "x"]}, "preprocess.alpha_background"),
        ({"pad_value": [0, 0, 300]}, "preprocess.pad_value"),
        ({"resize_mode": "fit"}, "preprocess.resize_mode"),
        ({"layout": "NCHW-float32"}, "layout"),
        ({"imagesize": 240}, "imagesize"),
        ({"image_size": 240, "foo": 1, "bar": 2}, r"\['bar', 'foo'\]"),
        ([["image_size", 240]], "mapping"),
        ("image_size=240", "mapping"),
    ],
)
def test_spec_from_dict_refuses(d, match):
    with pytest.raises(FsacError, match=match):
        PreprocessSpec.from_dict(d)


# --------------------------------------------------------------------------- list_images


def test_list_images(tmp_path):
    names = ["b.png", "A.JPG", "c.Jpeg", "d.bmp", "e.TIF", "f.tiff", "g.webp", "a.png"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    for n in ["notes.txt", "anim.gif", "noext", ".hidden"]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()  # a folder with an image suffix is not an image
    (tmp_path / "sub.png" / "inner.png").write_bytes(b"x")
    got = list_images(tmp_path)
    assert [p.name for p in got] == sorted(names)
    assert all(p.parent == tmp_path for p in got)
    assert all(p.suffix.lower() in IMAGE_SUFFIXES for p in got)


def test_list_images_errors(tmp_path):
    with pytest.raises(FsacError, match="folder not found") as e:
        list_images(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(FsacError, match="not a folder") as e:
        list_images(f)
    assert str(f) in str(e.value)


def test_list_images_real_folder(bottle):
    files = list_images(bottle / "train" / "good")
    assert len(files) == 209
    assert files == sorted(files)
    assert files[0].name == "000.png"


# --------------------------------------------------------------------------- dependencies


def test_import_does_not_pull_in_torch():
    code = ("import sys, fsac.preprocess; "
            "bad = [m for m in ('torch', 'torchvision', 'open_clip', 'cv2', 'onnx') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
