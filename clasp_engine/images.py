"""Decode, orient, convert to RGB and resize images to the backbone's patch grid.

`load_image` turns whatever it is handed (a path, encoded bytes, a PIL image or
a numpy array) into one canonical form: an (H, W, 3) uint8 RGB array,
C-contiguous, with EXIF orientation applied. Every failure is an
`InvalidImageError(source, reason)` whose reason says what to do.

`resize_to_grid` scales an image so its long side is `max_side` and both sides
are whole multiples of the patch size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import stat
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clasp_engine.errors import InvalidImageError

__all__ = ["SpecialFileError", "load_image", "read_regular_file", "resize_to_grid", "source_name"]

DEFAULT_MAX_PIXELS = 100_000_000

log = logging.getLogger(__name__)

# Modes whose alpha channel is composited over white.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# 16-bit integer modes: values span 0..65535.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def special_file_kind(mode: int) -> str | None:
    """What a non-regular file is ("a directory", "a FIFO (named pipe)" ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def read_regular_file(path: str | os.PathLike, limit: int = -1) -> bytes:
    """At most `limit` bytes (all if negative) of a regular file.

    Anything else (a directory, FIFO, socket or device) raises `SpecialFileError`
    naming what it is, at once, never blocking; other failures raise OSError.

    The type is checked with stat before opening, and the file is opened with
    O_NONBLOCK (so a FIFO or device swapped in after the check cannot block the
    open) and checked again with fstat on the open descriptor.
    """
    kind = special_file_kind(os.stat(path).st_mode)
    if kind is not None:
        raise _special(path, kind)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = special_file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise _special(path, kind)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    finally:
        os.close(fd)


class SpecialFileError(OSError):
    """A path names a directory, FIFO, socket or device instead of an image file."""


def _special(path: str | os.PathLike, kind: str) -> SpecialFileError:
    return SpecialFileError(f"is {kind}, not a regular image file; only regular files are read")


def source_name(source: Any) -> str:
    """How an input is named in error messages: the path, "<bytes>", "<array>" or "<PIL image>"."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or ""
        return str(name) if name else "<PIL image>"
    return f"<{type(source).__name__}>"


def load_image(
    source: Any,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_side: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Decode `source` into an (H, W, 3) uint8 RGB array (C-contiguous).

    source: a path (str or Path), encoded bytes, a PIL image or a numpy array.

    - EXIF orientation is applied (PIL.ImageOps.exif_transpose).
    - Modes: 1 / L / P / CMYK / YCbCr ... convert to RGB; RGBA, LA, PA and
      palette transparency are composited over white; 16-bit modes (I;16*) and
      "I" are scaled by the 16-bit range (v / 257), "F" is read as [0, 1]
      (scaling is by the type's range, never by the image's min/max).
    - Arrays: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, uint16
      (scaled by /257), bool (0/255) or float with values in [0, 1].
    - max_pixels: refuse images with more pixels than this (checked from the
      header, before decoding: decompression bombs). None disables this check;
      PIL's own `Image.MAX_IMAGE_PIXELS` guard still applies and is reported
      the same way.

    - draft_side: decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) whose
      long side is still at least this many pixels (PIL `Image.draft`): the
      engine works at `max_side`, so a 9000x9000 JPEG decodes to 1125x1125
      (3.8 MB) instead of 243 MB. None (the default) decodes at full size.
      Other formats decode at full size.
    - name: how the input is named in errors and warnings (default:
      `source_name(source)`; pass the URI when handing over bytes).
    - Animated images: the first frame is used, with a warning naming the input;
      unreadable EXIF: no orientation is applied, with a warning naming the input.

    Raises InvalidImageError(source_name, reason) for a missing file, a
    directory, data that is not an image, a truncated or corrupt file, a
    zero-size or too-large image, an array of the wrong shape or dtype, or an
    unsupported input type.
    """
    name = name or source_name(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, name, max_pixels)
    if isinstance(source, Image.Image):
        return _from_pil(source, name, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InvalidImageError(name, "file not found; check the path (relative paths are resolved "
                                          f"from {os.getcwd()})")
        if path.is_dir():
            raise InvalidImageError(name, "is a directory; pass an image file (e.g. a .jpg or .png) inside it")
        try:
            data = read_regular_file(path)  # FIFOs, sockets and devices fail here at once
        except SpecialFileError as exc:
            raise InvalidImageError(name, f"{exc}; pass an image file") from exc
        except PermissionError as exc:
            raise InvalidImageError(name, f"cannot read the file ({exc.strerror}); check its permissions") from exc
        if not data:
            raise InvalidImageError(name, "the file is empty (0 bytes); re-export or re-download the image")
        return _decode(io.BytesIO(data), name, max_pixels, draft_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InvalidImageError(name, "no data (0 bytes); pass the encoded image file's contents")
        return _decode(io.BytesIO(data), name, max_pixels, draft_side)
    raise InvalidImageError(
        name,
        f"unsupported input type {type(source).__name__}; pass a file path, encoded bytes, "
        "a PIL.Image.Image or a numpy array (H, W[, 1|3|4])",
    )


def resize_to_grid(image: np.ndarray, max_side: int, patch_size: int) -> np.ndarray:
    """Resize so the long side is about `max_side` and both sides are multiples of `patch_size`.

    The image is scaled (up or down) so its long side is `max_side`, then each
    side is rounded to the nearest multiple of `patch_size` (at least one
    patch), which keeps the aspect ratio as closely as the grid allows. Uses PIL
    bicubic resampling, which is antialiased when shrinking. Returns a new
    (H', W', 3) uint8 C-contiguous array (the input itself when it already has
    the target size).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"resize_to_grid expects (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if max_side < 1 or patch_size < 1:
        raise ValueError(f"max_side={max_side} and patch_size={patch_size} must be positive")
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    rows = max(1, int(round(h * scale / patch_size)))
    cols = max(1, int(round(w * scale / patch_size)))
    new_h, new_w = rows * patch_size, cols * patch_size
    if (new_h, new_w) == (h, w):
        return np.ascontiguousarray(image)
    resized = Image.fromarray(image).resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


# --------------------------------------------------------------------------- decoding


def _check_size(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(name, f"zero-size image ({width}x{height}); pass an image with pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise InvalidImageError(
            name,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb); downscale the image or raise max_pixels",
        )


def _too_many_pixels(name: str, exc: Exception) -> InvalidImageError:
    return InvalidImageError(
        name, f"too many pixels, refused as a possible decompression bomb ({exc}); downscale the image"
    )


def draft_size(width: int, height: int, draft_side: int | None) -> tuple[int, int] | None:
    """The size to ask `Image.draft` for so the long side stays >= draft_side, or None (no reduction)."""
    if not draft_side or max(width, height) <= draft_side:
        return None
    scale = draft_side / max(width, height)
    # floor: PIL picks the largest 1/2^k with size // request >= 2^k, and the decoded
    # size ceil(size / 2^k) stays >= the request, whose long side is draft_side exactly.
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def decoded_pixels(data: bytes, draft_side: int | None = None) -> int:
    """Pixels `load_image(data, draft_side=...)` will decode, read from the header only (0 if unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            _apply_draft(img, draft_side)
            return int(img.width) * int(img.height)
    except Exception:  # noqa: BLE001 - decoding reports the real error later
        return 0


def _apply_draft(img: Image.Image, draft_side: int | None) -> None:
    if img.format != "JPEG":
        return
    size = draft_size(img.width, img.height, draft_side)
    if size is not None:
        img.draft(None, size)  # DCT scaling: never smaller than `size`


def _decode(fh: Any, name: str, max_pixels: int | None, draft_side: int | None = None) -> np.ndarray:
    """Open an encoded image (header only), then check its size and decode it fully (`_from_pil`)."""
    with _named_warnings(name):
        # PIL warns (and above twice its limit raises) for huge images; treat both as errors.
        try:
            img = Image.open(fh)
        except UnidentifiedImageError as exc:
            raise InvalidImageError(
                name, "not a recognised image format; pass a JPEG, PNG, TIFF, BMP, GIF or WebP file"
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(name, exc) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidImageError(name, f"cannot open the image ({exc}); the file may be corrupt") from exc
        with img:
            _check_size(name, img.width, img.height, max_pixels)  # the full size, before any draft
            if getattr(img, "n_frames", 1) > 1:
                log.warning("%s: animated image with %d frames; only the first frame is used", name, img.n_frames)
            _apply_draft(img, draft_side)
            return _from_pil(img, name, max_pixels)


def _from_pil(img: Image.Image, name: str, max_pixels: int | None) -> np.ndarray:
    _check_size(name, img.width, img.height, max_pixels)  # from the header, before decoding
    with _named_warnings(name):
        try:
            img.load()  # a full decode: truncated or corrupt data fails here, not later
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(name, exc) from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidImageError(
                name, f"truncated or corrupt image data ({exc}); re-export or re-download the file"
            ) from exc
    img = _oriented(img, name)
    return _pil_to_rgb(img, name)


def _oriented(img: Image.Image, name: str) -> Image.Image:
    """EXIF orientation applied; unreadable EXIF is a warning naming the input, not a failure."""
    with _named_warnings(name):
        try:
            out = ImageOps.exif_transpose(img)
        except Exception as exc:  # noqa: BLE001 - corrupt EXIF: keep the pixels, say so
            log.warning("%s: corrupt EXIF data (%s); orientation not applied", name, exc)
            return img
    return out if out is not None else img


@contextlib.contextmanager
def _named_warnings(name: str) -> Iterator[None]:
    """PIL's warnings (corrupt EXIF, skipped tags ...) logged with the input's name; a
    decompression-bomb warning raised as an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            for w in caught:
                log.warning("%s: %s", name, str(w.message).strip())


def _pil_to_rgb(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if (mode == "P" and "transparency" in img.info) or mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        return _over_white(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    if mode in _UINT16_MODES or mode == "I":
        # "I" (int32) almost always carries 16-bit samples (PNG/TIFF); scale by the 16-bit range.
        values = np.asarray(img).astype(np.float64)
        return _gray_to_rgb(_to_uint8(np.clip(values, 0, 65535) / 65535.0))
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise InvalidImageError(name, "float image contains NaN or infinity; clean it before segmenting")
        return _gray_to_rgb(_to_uint8(np.clip(values, 0.0, 1.0)))
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InvalidImageError(name, f"cannot convert PIL mode {mode!r} to RGB ({exc}); save it as RGB") from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _from_array(arr: np.ndarray, name: str, max_pixels: int | None) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InvalidImageError(
            name, f"array of shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA"
        )
    _check_size(name, arr.shape[1], arr.shape[0], max_pixels)
    if arr.dtype == np.uint8:
        u8 = arr
    elif arr.dtype == np.bool_:
        u8 = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        u8 = _to_uint8(arr.astype(np.float64) / 65535.0)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidImageError(name, "float array contains NaN or infinity; clean it before segmenting")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidImageError(
                name,
                f"float array values span [{lo:g}, {hi:g}]; floats must lie in [0, 1] "
                "(divide 0..255 data by 255, or pass uint8)",
            )
        u8 = _to_uint8(arr.astype(np.float64))
    else:
        raise InvalidImageError(
            name, f"unsupported array dtype {arr.dtype}; use uint8, uint16, bool or float in [0, 1] "
                  "(e.g. arr.astype(np.uint8) for 0..255 integers)"
        )
    if u8.ndim == 2:
        return _gray_to_rgb(u8)
    if u8.shape[2] == 4:
        return _over_white(u8)
    return np.ascontiguousarray(u8)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 0..255, rounded."""
    return np.rint(unit * 255.0).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an (H, W, 4) uint8 RGBA image over a white background."""
    rgb = rgba[:, :, :3].astype(np.float32)
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.ascontiguousarray(np.rint(out).astype(np.uint8))
