"""GenICam pixel formats -> RGB (fsac.pixel_formats) on synthetic buffers."""

from __future__ import annotations

import numpy as np
import pytest

from fsac.errors import FsacError, ImageDecodeError
from fsac.pixel_formats import CameraImage, camera_image_to_rgb, demosaic_bilinear
from fsac.preprocess import frame_to_rgb

# PFNC: the colours of the top-left 2x2 cell, row by row.
CELLS = {"BayerRG8": ("R", "G", "G", "B"), "BayerGR8": ("G", "R", "B", "G"), "BayerGB8": ("G", "B", "R", "G"),
         "BayerBG8": ("B", "G", "G", "R")}


def mosaic_of(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """What a sensor with that colour filter array records of an RGB scene."""
    h, w, _ = rgb.shape
    out = np.empty((h, w), dtype=np.uint8)
    for i, colour in enumerate(CELLS[fmt]):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(colour)]
    return out


@pytest.mark.parametrize("fmt", sorted(CELLS))
def test_bayer_flat_colour_comes_back_exactly_everywhere_including_the_border(fmt):
    scene = np.empty((6, 8, 3), dtype=np.uint8)
    scene[...] = (200, 100, 50)
    raw = mosaic_of(scene, fmt)
    rgb = camera_image_to_rgb(CameraImage(raw.tobytes(), 8, 6, fmt))
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert (rgb == (200, 100, 50)).all()


def test_bayer_pattern_names_follow_pfnc_not_opencv():
    # An RG mosaic decoded as BG swaps red and blue: the classic OpenCV naming mix-up.
    scene = np.full((4, 4, 3), (200, 100, 50), dtype=np.uint8)
    raw = mosaic_of(scene, "BayerRG8").tobytes()
    assert (camera_image_to_rgb(CameraImage(raw, 4, 4, "BayerBG8")) == (50, 100, 200)).all()


def test_bayer_bilinear_values_at_each_site():
    # RGGB, 4x4, distinct raw values: check the interpolation rule at interior sites.
    raw = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    rgb = demosaic_bilinear(raw, "RGGB")
    # (1, 1) is a blue site: B is its own sample, G the mean of its 4 greens, R of its 4 diagonal reds.
    assert rgb[1, 1, 2] == raw[1, 1]
    assert rgb[1, 1, 1] == round((raw[0, 1] + raw[1, 0] + raw[1, 2] + raw[2, 1]) / 4)
    assert rgb[1, 1, 0] == round((raw[0, 0] + raw[0, 2] + raw[2, 0] + raw[2, 2]) / 4)
    # (2, 1) is a green site in a red row: R from its left/right neighbours, B from above/below.
    assert rgb[2, 1, 1] == raw[2, 1]
    assert rgb[2, 1, 0] == round((raw[2, 0] + raw[2, 2]) / 2)
    assert rgb[2, 1, 2] == round((raw[1, 1] + raw[3, 1]) / 2)
    # (0, 0), a red corner: only the samples inside the image count.
    assert rgb[0, 0, 0] == raw[0, 0]
    assert rgb[0, 0, 1] == round((raw[0, 1] + raw[1, 0]) / 2)
    assert rgb[0, 0, 2] == raw[1, 1]


def test_mono8_mono16_rgb8_bgr8():
    gray = np.array([[0, 17], [128, 255]], dtype=np.uint8)
    rgb = camera_image_to_rgb(CameraImage(gray.tobytes(), 2, 2, "Mono8"))
    assert (rgb == gray[..., None]).all() and rgb.shape == (2, 2, 3)
    # Mono16 is little-endian on the wire and scaled by its high byte (v >> 8), like 16-bit PNGs.
    mono16 = np.array([[0, 255], [256, 65535]], dtype="<u2")
    rgb = camera_image_to_rgb(CameraImage(mono16.tobytes(), 2, 2, "Mono16"))
    assert rgb[..., 0].tolist() == [[0, 0], [1, 255]] and (rgb[..., 0] == rgb[..., 2]).all()
    colours = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    assert (camera_image_to_rgb(CameraImage(colours.tobytes(), 2, 2, "RGB8")) == colours).all()
    bgr = colours[..., ::-1].copy()
    assert (camera_image_to_rgb(CameraImage(bgr.tobytes(), 2, 2, "BGR8")) == colours).all()
    # The daemon's raw-frame path (frame_to_rgb) takes a CameraImage whatever channel_order says.
    assert (frame_to_rgb(CameraImage(bgr.tobytes(), 2, 2, "BGR8"), "bgr") == colours).all()


def test_short_buffers_and_unknown_formats_are_decode_errors():
    with pytest.raises(ImageDecodeError, match="needs 12"):
        camera_image_to_rgb(CameraImage(b"\0" * 11, 2, 2, "RGB8"), "cam#7")
    with pytest.raises(ImageDecodeError, match="Mono12 is not supported"):
        camera_image_to_rgb(CameraImage(b"\0" * 8, 2, 2, "Mono12"))
    with pytest.raises(FsacError, match="at least 2x2"):
        camera_image_to_rgb(CameraImage(b"\0" * 3, 3, 1, "BayerRG8"))
