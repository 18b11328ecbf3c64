"""GenICam pixel formats -> RGB: what a GigE Vision / USB3 Vision camera sends, converted
in the daemon's decode workers (`fsac.preprocess.frame_to_rgb` dispatches here).

    rgb = camera_image_to_rgb(CameraImage(data, width, height, "BayerRG8"))   # (H, W, 3) uint8
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsac.errors import FsacError, ImageDecodeError

# Names as in the GenICam Pixel Format Naming Convention (PFNC), which GigE Vision cameras use.
CAMERA_PIXEL_FORMATS = ("Mono8", "Mono16", "BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8", "RGB8", "BGR8")
_BYTES_PER_PIXEL = {"Mono8": 1, "Mono16": 2, "RGB8": 3, "BGR8": 3}
# The colour of the top-left 2x2 cell of each Bayer mosaic, row by row (PFNC: "BayerRG" = R G / G B).
_BAYER_CELLS = {"BayerRG8": "RGGB", "BayerGR8": "GRBG", "BayerGB8": "GBRG", "BayerBG8": "BGGR"}


@dataclass(frozen=True)
class CameraImage:
    """An uncompressed frame as a GenICam camera sends it: bytes in the camera's pixel format.

    The camera source hands this over as is, so that the conversion below runs in the
    daemon's decode workers (beside inference), not in the thread reading the camera."""

    data: bytes
    width: int
    height: int
    pixel_format: str


def camera_image_to_rgb(image: CameraImage, source: str = "<frame>") -> np.ndarray:
    """A GenICam buffer -> (H, W, 3) uint8 RGB.

    Mono8: grey. Mono16 (little-endian, as GigE Vision sends it): the high byte, v >> 8, the
    rule 16-bit image files follow (`to_rgb`), so the same scene gives the same pixels as a
    16-bit PNG of it; a sensor that only fills the low 12 bits comes out 16x darker (pick
    Mono8 on such a camera). Bayer 8-bit: bilinear demosaicing (`demosaic_bilinear`). RGB8,
    BGR8: the channels, reordered for BGR8.
    """
    fmt, w, h = image.pixel_format, int(image.width), int(image.height)
    if fmt not in CAMERA_PIXEL_FORMATS:
        raise ImageDecodeError(source, f"pixel format {fmt} is not supported ({', '.join(CAMERA_PIXEL_FORMATS)})")
    if w < 1 or h < 1:
        raise ImageDecodeError(source, f"camera frame has no pixels ({w}x{h})")
    need = w * h * _BYTES_PER_PIXEL.get(fmt, 1)
    if len(image.data) < need:
        raise ImageDecodeError(source, f"camera frame is {len(image.data)} bytes, {fmt} {w}x{h} needs {need} "
                               "(incomplete buffer)")
    if fmt == "Mono16":
        mono = (np.frombuffer(image.data, dtype="<u2", count=w * h).reshape(h, w) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(mono[..., None], 3, axis=2))
    raw = np.frombuffer(image.data, dtype=np.uint8, count=need)
    if fmt == "Mono8":
        return np.ascontiguousarray(np.repeat(raw.reshape(h, w)[..., None], 3, axis=2))
    if fmt in ("RGB8", "BGR8"):
        rgb = raw.reshape(h, w, 3)
        return np.ascontiguousarray(rgb[..., ::-1] if fmt == "BGR8" else rgb)
    return demosaic_bilinear(raw.reshape(h, w), _BAYER_CELLS[fmt])


def _sum3x3(a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Correlation of `a` with a 3x3 integer kernel, zeros outside the image."""
    h, w = a.shape
    pad = np.zeros((h + 2, w + 2), dtype=np.int32)
    pad[1:-1, 1:-1] = a
    out = np.zeros((h, w), dtype=np.int32)
    for dy in range(3):
        for dx in range(3):
            if weights[dy, dx]:
                out += int(weights[dy, dx]) * pad[dy:dy + h, dx:dx + w]
    return out


_KERNEL_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.int32)
_KERNEL_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.int32)


def demosaic_bilinear(mosaic: np.ndarray, cell: str) -> np.ndarray:
    """(H, W) uint8 Bayer mosaic -> (H, W, 3) uint8 RGB by bilinear interpolation.

    `cell`: the colours of the top-left 2x2 cell, row by row ("RGGB" for BayerRG8). Each
    channel is the weighted mean of the samples of that colour in the 3x3 neighbourhood
    (normalised convolution): a sample keeps its own value, a missing green is the mean of
    its 4 neighbours, a missing red or blue the mean of its 2 or 4 nearest. At the border
    only the samples inside the image count, so a flat colour stays exactly flat. Done in
    numpy, not OpenCV: the core must not need OpenCV, and OpenCV names Bayer patterns after
    the second row (its "BayerBG" is PFNC's BayerRG), a classic source of swapped colours.
    """
    if mosaic.ndim != 2 or mosaic.dtype != np.uint8:
        raise FsacError(f"demosaic_bilinear expects an (H, W) uint8 mosaic, got {mosaic.shape} {mosaic.dtype}")
    if sorted(cell) != sorted("RGGB"):
        raise FsacError(f"Bayer cell must be a 2x2 arrangement of R, G, G, B, got {cell!r}")
    h, w = mosaic.shape
    if h < 2 or w < 2:  # smaller than one 2x2 cell: some colour has no sample at all
        raise FsacError(f"a Bayer mosaic needs at least 2x2 pixels, got {w}x{h}")
    rows, cols = np.indices((h, w))
    site = (rows % 2) * 2 + (cols % 2)  # 0 1 / 2 3 within each 2x2 cell
    out = np.empty((h, w, 3), dtype=np.uint8)
    for channel, colour in enumerate("RGB"):
        mask = np.isin(site, [i for i, c in enumerate(cell) if c == colour])
        kernel = _KERNEL_G if colour == "G" else _KERNEL_RB
        num = _sum3x3(np.where(mask, mosaic, 0), kernel)
        den = _sum3x3(mask.astype(np.int32), kernel)
        out[..., channel] = ((2 * num + den) // (2 * den)).astype(np.uint8)  # rounded mean
    return out
