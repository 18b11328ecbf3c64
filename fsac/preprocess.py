"""The one image preprocessing implementation of fsac (torch-free).

Training, evaluation, the export parity check and the edge runtime all turn an image into
model input through this module, so a score computed on the workstation and a score
computed on the line see the same pixels:

    file / bytes / camera frame
      -> `to_rgb` / `load_image` / `decode_image_bytes` / `frame_to_rgb`  (H, W, 3) uint8 RGB
      -> `resize_crop`                                                  (S, S, 3) uint8 RGB
      -> model (normalisation by mean/std happens *inside* the model, in
         `fsac.train.model.PixelNormalize`, which is exported into the ONNX graph)

The default spec squashes the whole image to 240 x 240 (bicubic, OpenAI CLIP mean/std), as
WinCLIP re-implementations do: open_clip's own shortest-side + centre crop ("shortest")
cut on average 31 % (at most 64 %) of each image of a real set of variable-size inspection
images, so a defect at the border became invisible. `fsac.image_geometry.geometry_warnings`
says when squash distorts an image badly (use "longest", padding) or an image is much
smaller than the input. Decoding accepts every Pillow mode a camera or an image editor may
produce: 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, LAB, HSV, I;16*, I and F.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fsac.errors import FsacError, ImageDecodeError
from fsac.pixel_formats import CameraImage, camera_image_to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESIZE_MODES = ("shortest", "squash", "longest")
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Large but finite: refuse decompression bombs with a clear error instead of eating the RAM.
MAX_IMAGE_PIXELS = 200_000_000


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes an (S, S, 3) uint8 RGB array, plus the mean/std the model applies.

    resize_mode:
      - "squash" (default): scale both sides to S (keeps every pixel, distorts the aspect ratio).
      - "shortest": scale the shortest side to S, centre-crop S x S (open_clip's default;
        cuts the borders of non-square images).
      - "longest": scale the longest side to S and pad the rest with `pad_value`
        (keeps every pixel and the aspect ratio).
    alpha_background: colour that transparent pixels are composited onto.
    """

    image_size: int = 240
    resize_mode: str = "squash"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    alpha_background: tuple[int, int, int] = (0, 0, 0)
    pad_value: tuple[int, int, int] = (0, 0, 0)
    layout: str = field(default="NHWC-uint8-RGB", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.resize_mode, str) or self.resize_mode not in RESIZE_MODES:
            raise FsacError(f"preprocess.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise FsacError(
                f"preprocess.interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if not (isinstance(self.image_size, int) and not isinstance(self.image_size, bool)
                and 16 <= self.image_size <= 4096):
            raise FsacError(f"preprocess.image_size must be an integer in [16, 4096], got {self.image_size!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if not (_is_triple(v) and all(_is_real(x) and math.isfinite(x) for x in v)):
                raise FsacError(f"preprocess.{name} must be 3 finite numbers, got {v!r}")
        if any(x <= 0 for x in self.std):
            raise FsacError(f"preprocess.std must be > 0, got {self.std!r}")
        for name in ("alpha_background", "pad_value"):
            v = getattr(self, name)
            if not (_is_triple(v) and all(_is_int(x) and 0 <= x <= 255 for x in v)):
                raise FsacError(f"preprocess.{name} must be 3 integers in [0, 255] (an RGB colour), got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("mean", "std", "alpha_background", "pad_value"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        if not isinstance(d, dict):
            raise FsacError(f"preprocessing settings must be a mapping, got {type(d).__name__}")
        known = {"image_size", "resize_mode", "interpolation", "mean", "std", "alpha_background", "pad_value"}
        unknown = set(d) - known - {"layout"}
        if unknown:
            raise FsacError(f"unknown preprocessing settings: {sorted(unknown)}")
        if d.get("layout", "NHWC-uint8-RGB") != "NHWC-uint8-RGB":
            raise FsacError(f"unsupported preprocessing layout {d.get('layout')!r}")
        kw = {k: d[k] for k in known if k in d}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = _convert(k, kw[k], lambda v: tuple(float(x) for x in v))
        for k in ("alpha_background", "pad_value"):
            if k in kw:
                kw[k] = _convert(k, kw[k], lambda v: tuple(_as_int(x) for x in v))
        if "image_size" in kw:
            kw["image_size"] = _convert("image_size", kw["image_size"], _as_int)
        return cls(**kw)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_triple(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 3


def _as_int(x: Any) -> int:
    """int(x) for ints, integral floats and digit strings; refuses 240.5, True and "abc"."""
    if isinstance(x, bool):
        raise ValueError(f"{x!r} is not an integer")
    if isinstance(x, float) and not x.is_integer():
        raise ValueError(f"{x!r} is not an integer")
    return int(x)


def _convert(name: str, value: Any, fn) -> Any:
    if isinstance(value, (str, bytes)) and name != "image_size":
        raise FsacError(f"preprocess.{name} must be a list of 3 numbers, got {value!r}")
    try:
        return fn(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise FsacError(f"preprocess.{name}: bad value {value!r} ({e})") from None


# --------------------------------------------------------------------------- decoding


def to_rgb(image: Image.Image, alpha_background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Any Pillow image -> (H, W, 3) uint8 RGB.

    16-bit and 32-bit integer images are scaled by a fixed factor (65535 -> 255), never by
    their own min/max, so the same scene always gives the same pixels. The factor is "keep
    the high byte" (v >> 8), because that is what Pillow does when it decodes 16-bit RGB(A)
    PNGs (it has no 16-bit colour mode), so a 16-bit grey PNG, a 16-bit colour PNG and a
    uint16 camera frame (`frame_to_rgb`) of the same scene give the same 8-bit pixels.
    32-bit integer images ("I") are taken as 16-bit data; float images ("F") as 0..255 data,
    clipped. Neither rule looks at the image's own values: a guess from the content would
    make a dark frame and a bright frame of the same part come out on different scales.
    """
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(image).astype(np.int64)
        gray = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "1":
        image = image.convert("L")
        mode = "L"
    if mode == "LA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        bg = Image.new("RGB", image.size, tuple(int(c) for c in alpha_background))
        bg.paste(image, mask=image.getchannel("A"))
        image = bg
    elif mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _open(fp, source: str) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        image = Image.open(fp)
        # Pillow itself only raises above 2 * MAX_IMAGE_PIXELS (it merely warns above
        # MAX_IMAGE_PIXELS): check the header's size ourselves, before decoding anything.
        pixels = image.width * image.height
        if pixels > MAX_IMAGE_PIXELS:
            image.close()
            raise ImageDecodeError(
                source, f"image too large ({image.width}x{image.height} = {pixels} pixels, "
                f"limit {MAX_IMAGE_PIXELS}; possible decompression bomb)")
        image.load()  # Pillow decodes lazily: force it so truncation is caught here.
        # In place: without an orientation tag, exif_transpose would return a copy of every
        # frame (1 MB for a 512 x 512 RGB image) that nobody needs.
        ImageOps.exif_transpose(image, in_place=True)
    except FileNotFoundError:
        raise ImageDecodeError(source, "no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(source, "is a folder, not an image file") from None
    except PermissionError:
        raise ImageDecodeError(source, "permission denied (check the file's owner and mode)") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(source, "not a recognised image format (corrupt or not an image)") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(source, f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(source, f"corrupt or truncated image data ({e})") from None
    if image.width < 1 or image.height < 1:
        raise ImageDecodeError(source, "image has no pixels")
    return image


def load_image(path: str | os.PathLike, spec: PreprocessSpec | None = None) -> np.ndarray:
    """Decode an image file -> (H, W, 3) uint8 RGB. Raises ImageDecodeError naming the file."""
    spec = spec or PreprocessSpec()
    try:
        empty = os.path.isfile(path) and os.path.getsize(path) == 0
    except OSError:
        empty = False
    if empty:
        raise ImageDecodeError(str(path), "empty file")
    return _to_rgb_checked(_open(path, str(path)), str(path), spec)


def _to_rgb_checked(image: Image.Image, source: str, spec: PreprocessSpec) -> np.ndarray:
    try:
        return to_rgb(image, spec.alpha_background)
    except (OSError, ValueError) as e:
        raise ImageDecodeError(source, f"cannot convert mode {image.mode} to RGB ({e})") from None


def decode_image_bytes(data: bytes, source: str = "<bytes>", spec: PreprocessSpec | None = None) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) -> (H, W, 3) uint8 RGB."""
    spec = spec or PreprocessSpec()
    if not data:
        raise ImageDecodeError(source, "empty file")
    image = _open(io.BytesIO(data), source)
    return _to_rgb_checked(image, source, spec)


def frame_to_rgb(frame: "np.ndarray | CameraImage", channel_order: str = "bgr",
                 source: str = "<frame>") -> np.ndarray:
    """A decoded camera frame (OpenCV gives BGR) -> (H, W, 3) uint8 RGB.

    Accepts (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) arrays of uint8 or uint16 (uint16 is
    scaled like 16-bit image files: high byte). With 4 channels the 4th is ignored. A
    `CameraImage` (a GenICam camera's buffer) carries its own pixel format, so
    `channel_order` does not apply to it.
    """
    if isinstance(frame, CameraImage):
        return camera_image_to_rgb(frame, source)
    if channel_order not in ("bgr", "rgb"):
        raise FsacError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        shape = getattr(frame, "shape", None)
        raise ImageDecodeError(source, f"frame has shape {shape}; expected (H, W) or (H, W, C)")
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ImageDecodeError(source, f"frame dtype {frame.dtype} not supported (uint8 or uint16)")
    if frame.ndim == 2:
        frame = frame[..., None]
    channels = frame.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(frame, 3, axis=2))
    if channels not in (3, 4):
        raise ImageDecodeError(source, f"frame has {channels} channels; expected 1, 3 or 4")
    rgb = frame[..., 2::-1] if channel_order == "bgr" else frame[..., :3]
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------- geometry


def resize_crop(rgb: np.ndarray, spec: PreprocessSpec | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (S, S, 3) uint8 RGB, as `spec.resize_mode` says.

    "shortest" matches torchvision's Resize(S) + CenterCrop(S) on a PIL image exactly
    (same output size rounding, same crop offsets, same Pillow resampling).
    """
    spec = spec or PreprocessSpec()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise FsacError(f"resize_crop expects (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    return _resize_image(Image.fromarray(rgb), spec)


def _resize_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """`resize_crop` of a mode-RGB Pillow image, without going through an array first."""
    s = spec.image_size
    w, h = image.size
    resample = INTERPOLATIONS[spec.interpolation]
    if spec.resize_mode == "squash":
        if (w, h) != (s, s):
            image = image.resize((s, s), resample)
        return np.asarray(image, dtype=np.uint8)
    if spec.resize_mode == "longest":
        scale = s / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), resample)
        canvas = Image.new("RGB", (s, s), tuple(spec.pad_value))
        canvas.paste(image, ((s - nw) // 2, (s - nh) // 2))
        return np.asarray(canvas, dtype=np.uint8)
    # "shortest": torchvision's _compute_resized_output_size, then CenterCrop.
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = s, int(s * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), resample)
    top = int(round((nh - s) / 2.0))
    left = int(round((nw - s) / 2.0))
    arr = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(arr[top : top + s, left : left + s])


def decode_resize_bytes(data: bytes, source: str = "<bytes>", spec: PreprocessSpec | None = None,
                        keep_rgb: bool = False) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Encoded image bytes -> (model input (S, S, 3) uint8, the decoded (H, W, 3) RGB frame if
    `keep_rgb` else None, (width, height)). The same pixels as
    `resize_crop(decode_image_bytes(data))`, but an RGB image is resized as Pillow decoded it:
    the two copies through a NumPy array (Pillow keeps RGB as 4 bytes a pixel) cost about
    0.8 ms of a 6.7 ms 512 x 512 PNG decode + resize on the development machine."""
    spec = spec or PreprocessSpec()
    if not data:
        raise ImageDecodeError(source, "empty file")
    image = _rgb_image(_open(io.BytesIO(data), source), source, spec)
    rgb = np.asarray(image, dtype=np.uint8) if keep_rgb else None
    return _resize_image(image, spec), rgb, image.size


def _rgb_image(image: Image.Image, source: str, spec: PreprocessSpec) -> Image.Image:
    """A decoded image as a mode-RGB Pillow image with the pixels `to_rgb` gives."""
    if image.mode == "RGB":
        return image
    return Image.fromarray(_to_rgb_checked(image, source, spec))


def preprocess_file(path: str | os.PathLike, spec: PreprocessSpec | None = None) -> np.ndarray:
    """Image file -> (S, S, 3) uint8 RGB model input (= resize_crop(load_image(path)))."""
    spec = spec or PreprocessSpec()
    try:
        data = Path(path).read_bytes()
    except OSError:
        return resize_crop(load_image(path, spec), spec)  # load_image names the problem
    return decode_resize_bytes(data, str(path), spec)[0]


def preprocess_frame(frame: np.ndarray, spec: PreprocessSpec | None = None, channel_order: str = "bgr",
                     source: str = "<frame>") -> np.ndarray:
    """Camera frame -> (S, S, 3) uint8 RGB model input."""
    spec = spec or PreprocessSpec()
    return resize_crop(frame_to_rgb(frame, channel_order, source), spec)


def stack(images: Iterable[np.ndarray]) -> np.ndarray:
    """List of (S, S, 3) uint8 -> (N, S, S, 3) uint8 batch, the model's input layout."""
    images = list(images)
    if not images:
        raise FsacError("no images to stack")
    return np.ascontiguousarray(np.stack(images, axis=0))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name. Errors name the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise FsacError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise FsacError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return files
