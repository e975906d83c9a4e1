"""clasp_engine.images: decoding, modes, orientation, errors and the patch grid."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clasp_engine.errors import InvalidImageError
from clasp_engine.images import load_image, resize_to_grid


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb_image(w: int = 40, h: int = 30) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (200, 30, 40)
    arr[:, w // 2 :] = (20, 60, 220)
    return Image.fromarray(arr)


def _check_canonical(out: np.ndarray, h: int, w: int) -> None:
    assert out.shape == (h, w, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous


# ----------------------------------------------------------------------------- sources


def test_path_str_path_bytes_and_pil_agree(tmp_path: Path) -> None:
    img = _rgb_image()
    p = tmp_path / "a.png"
    img.save(p)
    ref = np.asarray(img)
    for src in (p, str(p), p.read_bytes(), bytearray(p.read_bytes()), Image.open(p), ref):
        out = load_image(src)
        _check_canonical(out, 30, 40)
        np.testing.assert_array_equal(out, ref)


def test_jpeg_decodes(tmp_path: Path) -> None:
    out = load_image(_encode(_rgb_image(), "JPEG", quality=95))
    _check_canonical(out, 30, 40)
    assert abs(int(out[15, 5, 0]) - 200) < 12 and abs(int(out[15, 35, 2]) - 220) < 12


# ----------------------------------------------------------------------------- modes


def test_grayscale_and_bilevel() -> None:
    gray = Image.fromarray(np.array([[0, 128, 255]], np.uint8))
    out = load_image(_encode(gray, "PNG"))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])
    bilevel = Image.fromarray(np.array([[False, True]]))
    assert bilevel.mode == "1"
    out = load_image(_encode(bilevel, "PNG"))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [255, 255, 255]])


def test_palette_with_and_without_transparency() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    out = load_image(_encode(pal, "PNG"))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [200, 100, 50]])
    # index 0 fully transparent -> white after compositing
    out = load_image(_encode(pal, "PNG", transparency=0))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [200, 100, 50]])


def test_rgba_and_la_composited_over_white() -> None:
    rgba = np.array([[[100, 0, 0, 255], [100, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)
    out = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(out[0, 0], [100, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [127, 127, 127])  # 255 * (1 - 128/255) = 127
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
    out = load_image(_encode(la, "PNG"))
    np.testing.assert_array_equal(out[0], [[50, 50, 50], [255, 255, 255]])
    np.testing.assert_array_equal(load_image(rgba), load_image(Image.fromarray(rgba, "RGBA")))


def test_cmyk_converts() -> None:
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # no black, full magenta+yellow = red
    out = load_image(_encode(cmyk, "JPEG", quality=100))
    assert out[0, 0, 0] > 240 and out[0, 0, 1] < 15 and out[0, 0, 2] < 15
    out = load_image(cmyk)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


def test_16bit_scaled_by_type_range_not_min_max() -> None:
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    img16 = Image.fromarray(values)  # mode I;16
    assert img16.mode.startswith("I;16")
    out = load_image(_encode(img16, "PNG"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255])
    # A dim 16-bit image stays dim (no min/max stretch).
    dim = Image.fromarray(np.array([[0, 257 * 10]], np.uint16))
    np.testing.assert_array_equal(load_image(dim)[0, :, 1], [0, 10])
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([0, 257 * 50], ">u2").tobytes())
    np.testing.assert_array_equal(load_image(big_endian)[0, :, 2], [0, 50])
    mode_i = Image.fromarray(np.array([[0, 257 * 200]], np.int32), "I")
    np.testing.assert_array_equal(load_image(mode_i)[0, :, 0], [0, 200])
    mode_f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    np.testing.assert_array_equal(load_image(mode_f)[0, :, 0], [0, 128, 255])


def test_arrays_of_every_supported_layout() -> None:
    g = np.array([[0, 255]], np.uint8)
    expected = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(load_image(g), expected)
    np.testing.assert_array_equal(load_image(g[:, :, None]), expected)
    np.testing.assert_array_equal(load_image(np.array([[False, True]])), expected)
    np.testing.assert_array_equal(load_image(g.astype(np.uint16) * 257), expected)
    np.testing.assert_array_equal(load_image(g / 255.0), expected)
    np.testing.assert_array_equal(load_image((g / 255.0).astype(np.float32)), expected)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = load_image(rgb[:, ::-1])  # a non-contiguous view
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb[:, ::-1])
    opaque = np.concatenate([rgb, np.full((5, 7, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(opaque), rgb)


# ----------------------------------------------------------------------------- orientation


def test_exif_orientation_applied() -> None:
    img = _rgb_image(40, 20)  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    _check_canonical(out, 40, 20)
    assert out[5, 10, 0] > 150 and out[5, 10, 2] < 100  # top is now red
    assert out[35, 10, 2] > 150 and out[35, 10, 0] < 100  # bottom is blue


# ----------------------------------------------------------------------------- errors


def _expect_error(src, match: str, name: str | None = None, **kw) -> InvalidImageError:
    with pytest.raises(InvalidImageError, match=match) as info:
        load_image(src, **kw)
    err = info.value
    expected = name if name is not None else str(src)
    assert err.source == expected
    assert expected in str(err)
    return err


def test_missing_file_and_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.jpg", "not found")
    _expect_error(tmp_path, "directory")


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("hello, not a picture\n")
    _expect_error(p, "not a recognised image")
    _expect_error(b"plain text", "not a recognised image", name="<bytes>")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _expect_error(empty, "empty")
    _expect_error(b"", "no data", name="<bytes>")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noisy), fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    _expect_error(p, "truncated or corrupt")
    _expect_error(data[: len(data) // 2], "truncated or corrupt", name="<bytes>")


def test_corrupt_png_crc(tmp_path: Path) -> None:
    data = bytearray(_encode(_rgb_image(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # flip bits inside the compressed data
    _expect_error(bytes(data), "corrupt", name="<bytes>")


def test_too_many_pixels_checked_before_decoding(tmp_path: Path) -> None:
    data = _encode(_rgb_image(40, 30), "PNG")
    _expect_error(data, "exceeds the limit", name="<bytes>", max_pixels=1000)
    # Header size refused even though the data is truncated (no decode happened).
    _expect_error(data[:60], "exceeds the limit", name="<bytes>", max_pixels=1000)
    _expect_error(np.zeros((40, 30), np.uint8), "exceeds the limit", name="<array>", max_pixels=1000)
    assert load_image(data, max_pixels=None).shape == (30, 40, 3)


def test_pil_decompression_bomb_becomes_invalid_image(monkeypatch) -> None:
    data = _encode(_rgb_image(40, 30), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # warns above 500, raises above 1000
    _expect_error(data, "decompression bomb", name="<bytes>", max_pixels=None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _expect_error(data, "decompression bomb", name="<bytes>", max_pixels=None)


def test_zero_size_inputs() -> None:
    _expect_error(np.zeros((0, 5, 3), np.uint8), "zero-size", name="<array>")
    _expect_error(Image.new("RGB", (0, 0)), "zero-size", name="<PIL image>")


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4, 3, 1), np.uint8), "shape"),
        (np.zeros(4, np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (np.zeros((4, 4, 3), np.complex64), "dtype"),
        (np.full((4, 4), 2.0), r"\[0, 1\]"),
        (np.full((4, 4), np.nan), "NaN"),
    ],
)
def test_bad_arrays(arr: np.ndarray, match: str) -> None:
    _expect_error(arr, match, name="<array>")


def test_unsupported_type() -> None:
    _expect_error(12345, "unsupported input type", name="<int>")
    _expect_error([[1, 2]], "unsupported input type", name="<list>")


# ----------------------------------------------------------------------------- resize_to_grid


@pytest.mark.parametrize(
    "hw, max_side, patch, expected",
    [
        ((480, 640), 448, 16, (336, 448)),
        ((640, 480), 448, 8, (448, 336)),
        ((100, 100), 448, 14, (448, 448)),  # upscales
        ((375, 500), 448, 14, (336, 448)),  # 448*0.75 = 336 = 24*14
        ((10, 1000), 448, 16, (16, 448)),  # at least one patch
        ((333, 500), 224, 16, (144, 224)),  # 149.2 -> 9 patches
    ],
)
def test_resize_to_grid_shapes(hw, max_side, patch, expected) -> None:
    img = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    out = resize_to_grid(img, max_side, patch)
    assert out.shape == (*expected, 3)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.shape[0] % patch == 0 and out.shape[1] % patch == 0


def test_resize_to_grid_keeps_content_and_identity() -> None:
    img = np.zeros((64, 96, 3), np.uint8)
    img[:, 48:] = 255
    assert resize_to_grid(img, 96, 16) is img or np.array_equal(resize_to_grid(img, 96, 16), img)
    small = resize_to_grid(img, 48, 8)
    assert small.shape == (32, 48, 3)
    assert small[:, :20].max() < 10 and small[:, 28:].min() > 245
    with pytest.raises(ValueError):
        resize_to_grid(img[:, :, 0], 48, 8)


def test_fifo_fails_at_once_instead_of_blocking(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    box = {}

    def target():
        try:
            load_image(fifo)
        except InvalidImageError as exc:
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # unblock the reader
        pytest.fail("load_image blocked on a FIFO")
    assert "FIFO" in box["exc"].reason and str(fifo) in str(box["exc"])
    with pytest.raises(InvalidImageError, match="character device"):
        load_image("/dev/zero")


def _smooth_jpeg(w: int, h: int) -> bytes:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=2).astype(np.uint8)
    return _encode(Image.fromarray(rgb), "JPEG", quality=85)


@pytest.mark.parametrize(
    "draft_side, expected_hw",
    [(300, (375, 500)), (250, (188, 250)), (600, (750, 1000)), (1999, (1500, 2000)), (None, (1500, 2000))],
)
def test_draft_decodes_large_jpegs_at_the_nearest_scale_at_or_above_the_working_size(draft_side, expected_hw) -> None:
    from clasp_engine.images import decoded_pixels

    data = _smooth_jpeg(2000, 1500)
    out = load_image(data, draft_side=draft_side)
    _check_canonical(out, *expected_hw)
    assert max(out.shape[:2]) >= (draft_side or 0)
    assert decoded_pixels(data, draft_side) == expected_hw[0] * expected_hw[1]
    full = load_image(data).astype(int)  # the reduced decode shows the same picture
    h, w = expected_hw
    small = np.asarray(Image.fromarray(full.astype(np.uint8)).resize((w, h), Image.Resampling.BOX), dtype=int)
    assert np.abs(out.astype(int) - small).mean() < 3


def test_draft_leaves_other_formats_and_the_pixel_cap_alone() -> None:
    png = _encode(Image.fromarray(np.zeros((300, 400, 3), np.uint8)), "PNG")
    _check_canonical(load_image(png, draft_side=50), 300, 400)
    with pytest.raises(InvalidImageError, match="exceeds the limit"):  # checked on the full size
        load_image(_smooth_jpeg(2000, 1500), draft_side=100, max_pixels=1_000_000)


def test_animated_images_and_corrupt_exif_are_reported_with_the_name(caplog) -> None:
    frames = [Image.new("RGB", (12, 10), c) for c in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING", logger="clasp_engine.images"):
        _check_canonical(load_image(buf.getvalue(), name="s3://b/party.gif"), 10, 12)
    assert "s3://b/party.gif: animated image with 3 frames" in caplog.text
    caplog.clear()
    bad_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\xff\xff\xff\xff\x00\x06\x00\x00"
    data = _encode(_rgb_image(), "JPEG", exif=bad_exif)
    with caplog.at_level("WARNING", logger="clasp_engine.images"):
        _check_canonical(load_image(data, name="photos/broken-exif.jpg"), 30, 40)
    assert "photos/broken-exif.jpg:" in caplog.text and "EXIF" in caplog.text
