"""Decoding real PNG and JPEG files, refusing bad and oversized ones, and batching for a model."""

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from method_checks import EPS32
from PIL import Image

from schemas.models import InputSpec
from workers.decoded import (
    DecodedImage,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    display_of,
)
from workers.images import decode_image, to_model_input


def encode(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def handmade_png(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written chunk by chunk, for the layouts Pillow cannot write itself."""
    height, width = samples.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def with_claimed_size(png: bytes, width: int, height: int) -> bytes:
    """`png` with its IHDR rewritten to claim another size, CRC included, so Pillow trusts it."""
    header = bytearray(png[16:29])
    header[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(header)))
    return png[:16] + bytes(header) + crc + png[33:]


RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def test_grey_8_bit_png() -> None:
    decoded = decode_image(encode(Image.fromarray(GREY8, "L")))

    assert decoded.pixels.shape == (5, 7, 1)
    assert decoded.pixels.dtype == np.float32
    # level / 255 in float32 is one correctly rounded division: within eps32 / 2 of its value.
    np.testing.assert_allclose(decoded.pixels[:, :, 0], GREY8 / 255, rtol=EPS32 / 2, atol=0)
    assert decoded.display.shape == (5, 7, 3)
    assert decoded.display.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(decoded.display[:, :, channel], GREY8)


def test_grey_16_bit_png_keeps_its_precision() -> None:
    samples = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    image = Image.fromarray(samples)
    assert image.mode == "I;16"

    decoded = decode_image(encode(image))

    assert decoded.pixels.shape == (5, 7, 1)
    # One correctly rounded float32 division per sample, so all 16 bits survive.
    np.testing.assert_allclose(decoded.pixels[:, :, 0], samples / 65535, rtol=EPS32 / 2, atol=0)
    np.testing.assert_array_equal(decoded.display[:, :, 0], np.rint(samples / 65535 * 255))


def test_grey_with_alpha_is_composited_on_black() -> None:
    alpha = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    image = Image.fromarray(np.stack([GREY8, alpha], axis=2), "LA")

    decoded = decode_image(encode(image))

    assert decoded.pixels.shape == (5, 7, 1)
    # Two divisions and a product, each rounded to float32: 3 · eps32 / 2 relative, and more.
    expected = GREY8 / 255 * alpha / 255
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, rtol=2 * EPS32, atol=0)


def test_grey_16_bit_with_alpha_stays_grey() -> None:
    samples = RNG.integers(0, 65536, (4, 3, 2), dtype=np.uint16)

    decoded = decode_image(handmade_png(samples, colour_type=4))

    # Pillow reads this layout at 8 bits per sample.
    expected = (samples[:, :, 0] >> 8) / 255 * (samples[:, :, 1] >> 8) / 255
    assert decoded.pixels.shape == (4, 3, 1)
    # Two divisions and a product, each rounded to float32: 3 · eps32 / 2 relative, and more.
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, rtol=2 * EPS32, atol=0)


def test_rgb_png() -> None:
    decoded = decode_image(encode(Image.fromarray(RGB8, "RGB")))

    assert decoded.pixels.shape == (5, 7, 3)
    # One correctly rounded float32 division per sample: within eps32 / 2 of its value.
    np.testing.assert_allclose(decoded.pixels, RGB8 / 255, rtol=EPS32 / 2, atol=0)
    np.testing.assert_array_equal(decoded.display, RGB8)


def test_rgb_16_bit_png() -> None:
    samples = RNG.integers(0, 65536, (4, 3, 3), dtype=np.uint16)

    decoded = decode_image(handmade_png(samples, colour_type=2))

    assert decoded.pixels.shape == (4, 3, 3)
    # Pillow reads this layout at 8 bits per sample, keeping the high byte h of v = 256 h + l:
    # h / 255 is then (h - l) / 65535 from v / 65535, at most 255 / 65535 = 1/257, rounded once.
    np.testing.assert_allclose(decoded.pixels, (samples >> 8) / 255, rtol=EPS32 / 2, atol=0)
    np.testing.assert_allclose(decoded.pixels, samples / 65535, atol=1 / 257 + EPS32)


def test_rgba_png_is_composited_on_black() -> None:
    alpha = np.array([[0, 255, 128, 64, 0, 255, 10]] * 5, dtype=np.uint8)
    image = Image.fromarray(np.concatenate([RGB8, alpha[:, :, None]], axis=2), "RGBA")

    decoded = decode_image(encode(image))

    assert decoded.pixels.shape == (5, 7, 3)
    # Two divisions and a product, each rounded to float32: 3 · eps32 / 2 relative, and more.
    expected = RGB8 / 255 * alpha[:, :, None] / 255
    np.testing.assert_allclose(decoded.pixels, expected, rtol=2 * EPS32, atol=0)
    assert not decoded.display[:, 0].any()
    np.testing.assert_array_equal(decoded.display[:, 1], RGB8[:, 1])


def test_palette_png_with_a_transparent_entry() -> None:
    palette = [10, 20, 30, 200, 150, 100, 255, 255, 255]
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)

    decoded = decode_image(encode(image, transparency=2))

    colours = np.array(palette, dtype=np.uint8).reshape(3, 3)[indices]
    colours[indices == 2] = 0
    assert decoded.pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(decoded.display, colours)


def test_a_transparent_colour_key_turns_black() -> None:
    grey = np.array([[5, 6], [7, 5]], dtype=np.uint8)

    decoded = decode_image(encode(Image.fromarray(grey, "L"), transparency=5))

    np.testing.assert_array_equal(decoded.display[:, :, 0], [[0, 6], [7, 0]])


def test_grey_jpeg() -> None:
    flat = np.full((16, 16), 77, dtype=np.uint8)

    decoded = decode_image(encode(Image.fromarray(flat, "L"), "JPEG", quality=95))

    assert decoded.pixels.shape == (16, 16, 1)
    # A flat block keeps only its DC coefficient, quantised in steps of 2 at quality 95: at most
    # 1/8 level after the IDCT's 1/8 scale, so the decoder's rounding lands within one level.
    np.testing.assert_allclose(decoded.pixels, 77 / 255, atol=1 / 255 + EPS32)


def test_rgb_jpeg() -> None:
    flat = np.zeros((16, 24, 3), dtype=np.uint8)
    flat[:] = (200, 40, 90)

    decoded = decode_image(encode(Image.fromarray(flat, "RGB"), "JPEG", quality=95))

    assert decoded.pixels.shape == (16, 24, 3)
    assert decoded.display.shape == (16, 24, 3)
    # Y, Cb and Cr each err by at most 1/2 (RGB to YCbCr rounding) + 1/8 (DC step 2, as for grey)
    # + 1/2 (IDCT rounding); B = Y + 1.772 Cb turns that into 2.772 · 1.125 + 1/2 ≈ 3.6 levels.
    np.testing.assert_allclose(decoded.display, flat, atol=3)


def test_jpeg_exif_orientation_is_applied() -> None:
    image = Image.fromarray(np.zeros((8, 16, 3), dtype=np.uint8), "RGB")
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90° clockwise for display

    decoded = decode_image(encode(image, "JPEG", exif=exif))

    assert decoded.pixels.shape == (16, 8, 3)


@pytest.mark.parametrize("data", [b"GIF89a" + bytes(32), bytes(RNG.integers(0, 256, 64))])
def test_other_formats_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImageError):
        decode_image(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n" + bytes(RNG.integers(0, 256, 64)),
        encode(Image.fromarray(RGB8, "RGB"))[:60],
        b"\xff\xd8\xff" + bytes(RNG.integers(0, 256, 64)),
        encode(Image.fromarray(RGB8, "RGB"), "JPEG")[:200],
    ],
    ids=["empty", "png-garbage", "png-truncated", "jpeg-garbage", "jpeg-truncated"],
)
def test_broken_files_are_undecodable(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


@pytest.mark.parametrize("side", [8500, 100_000])
def test_a_huge_claimed_size_is_refused_before_decoding(side: int) -> None:
    bomb = with_claimed_size(encode(Image.fromarray(GREY8, "L")), side, side)

    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError):
            decode_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_the_pixel_limit_is_an_argument() -> None:
    png = encode(Image.fromarray(GREY8, "L"))

    with pytest.raises(ImageTooLargeError):
        decode_image(png, max_pixels=34)
    assert decode_image(png, max_pixels=35).pixels.shape == (5, 7, 1)


def decoded(pixels: np.ndarray) -> DecodedImage:
    display = np.repeat(np.rint(pixels * 255).astype(np.uint8), 4 - pixels.shape[2], axis=2)
    return DecodedImage(pixels=pixels.astype(np.float32), display=display[:, :, :3])


def test_to_model_input_normalises() -> None:
    grey = decoded(np.full((4, 4, 1), 0.5))

    batch = to_model_input(
        [grey, grey], InputSpec(channels=1, height=4, width=4, mean=[0.25], std=[0.5])
    )

    assert batch.shape == (2, 1, 4, 4)
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch, torch.full((2, 1, 4, 4), 0.5))


def test_to_model_input_resizes_each_image_to_the_model_size() -> None:
    small = decoded(RNG.random((6, 9, 3)))
    large = decoded(RNG.random((40, 30, 3)))

    batch = to_model_input(
        [small, large], InputSpec(channels=3, height=8, width=8, mean=[0.0] * 3, std=[1.0] * 3)
    )

    assert batch.shape == (2, 3, 8, 8)
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0


def test_to_model_input_keeps_a_constant_image_constant_through_resizing() -> None:
    flat = decoded(np.full((33, 17, 3), 0.25))

    batch = to_model_input(
        [flat], InputSpec(channels=3, height=8, width=8, mean=[0.0] * 3, std=[1.0] * 3)
    )

    torch.testing.assert_close(batch, torch.full((1, 3, 8, 8), 0.25))


def test_rgb_becomes_bt601_luma_for_a_grey_model() -> None:
    rgb = decoded(np.broadcast_to(np.array([1.0, 0.5, 0.25]), (2, 2, 3)).copy())

    batch = to_model_input([rgb], InputSpec(channels=1, height=2, width=2, mean=[0.0], std=[1.0]))

    luma = 0.299 * 1.0 + 0.587 * 0.5 + 0.114 * 0.25
    torch.testing.assert_close(batch, torch.full((1, 1, 2, 2), luma))


def test_grey_is_repeated_for_an_rgb_model() -> None:
    grey = decoded(RNG.random((3, 3, 1)))

    batch = to_model_input(
        [grey], InputSpec(channels=3, height=3, width=3, mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 4.0])
    )

    source = torch.from_numpy(grey.pixels[:, :, 0])
    for channel, (mean, std) in enumerate([(0.1, 1.0), (0.2, 2.0), (0.3, 4.0)]):
        torch.testing.assert_close(batch[0, channel], (source - mean) / std)


def test_mean_and_std_must_match_the_channels() -> None:
    grey = decoded(np.zeros((2, 2, 1)))
    with pytest.raises(ValueError, match="mean and std"):
        to_model_input([grey], InputSpec(channels=3, height=2, width=2, mean=[0.0], std=[1.0]))


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(RNG.integers(0, 256, (300, 360), dtype=np.uint8), "L"),
        Image.fromarray(RNG.integers(0, 256, (300, 360, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(RNG.integers(0, 256, (300, 360, 2), dtype=np.uint8), "LA"),
        Image.fromarray(RNG.integers(0, 256, (300, 360), dtype=np.uint8), "L").convert("P"),
    ],
)
def test_reduction_keeps_the_display_and_feeds_the_model_the_same_picture(
    image: Image.Image,
) -> None:
    png = encode(image)
    full = decode_image(png)

    reduced = decode_image(png, reduce_to=(16, 16))

    # The largest whole factor that keeps 300 × 360 at least 4 × 16 on each side is 4.
    assert reduced.pixels.shape[:2] == (75, 90)
    np.testing.assert_array_equal(reduced.display, full.display)
    np.testing.assert_array_equal(full.display, display_of(full.pixels))
    channels = full.pixels.shape[2]
    as_model = [
        to_model_input(
            [decoded],
            InputSpec(
                channels=channels, height=16, width=16, mean=[0.0] * channels, std=[1.0] * channels
            ),
        )
        for decoded in (full, reduced)
    ]
    # Box averaging by 4, then an antialiased resize, against the antialiased resize alone, on
    # noise (the hardest case): within half a grey level (1/255) on average.
    assert float((as_model[0] - as_model[1]).abs().mean()) < 0.5 / 255


def test_a_small_file_claiming_many_pixels_costs_its_display_not_float_copies() -> None:
    side = 4000
    png = encode(Image.new("L", (side, side)))
    assert len(png) < 30_000

    tracemalloc.start()
    try:
        decoded = decode_image(png, reduce_to=(128, 128))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Reduced by 7, the largest factor keeping 4 × 128: ceil(4000 / 7) = 572 pixels a side.
    assert decoded.pixels.shape == (572, 572, 1)
    assert decoded.display.shape == (side, side, 3)
    # The display's 3 bytes per pixel and two 1-byte copies of its grey source (about 5 bytes);
    # unreduced, the float pixels and their copies came to about 13.
    assert peak < 6 * side * side
