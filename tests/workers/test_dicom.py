"""Decoding real DICOM files (written by pydicom) against pixels computed here with numpy."""

import tracemalloc

import numpy as np
import pytest
from dicom_codecs import compressed  # type: ignore[import-not-found]
from dicom_files import (  # type: ignore[import-not-found]
    PLANTED_VALUES,
    ct_file,
    dicom_file,
    short_rle_file,
    unsupported_syntax_file,
)
from method_checks import EPS32
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from schemas.dicom import AppliedDicom, DicomOptions, DicomWindow
from workers.decoded import (
    DecodedImage,
    DicomOptionError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from workers.dicom import apply_window
from workers.images import decode_image

# Compressed files whose bytes the mutation test damages: each decoder must answer with an error.
MUTATED_CODECS = (JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless)
RNG = np.random.default_rng(3)
CT = RNG.integers(-2000, 3000, (6, 9)).astype(np.int16)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear window, written out: black up to c − w/2, white above c + w/2 − 1."""
    low = center - width / 2
    return np.clip((values - low) / (width - 1), 0.0, 1.0)


def assert_grey(decoded: DecodedImage, expected: np.ndarray) -> None:
    assert decoded.pixels.dtype == np.float32
    assert decoded.pixels.shape == (*expected.shape, 1)
    # Windowed in float64 (errors ~1e-16) and rounded once to float32: within eps32 / 2 of a value
    # no larger than 1, so eps32 bounds it.
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, rtol=0, atol=EPS32)
    levels = np.rint(expected * 255).astype(np.uint8)
    np.testing.assert_array_equal(decoded.display, np.repeat(levels[:, :, None], 3, axis=2))


def test_signed_16_bit_monochrome2_is_rescaled_and_windowed_by_the_file() -> None:
    data = dicom_file(
        CT,
        RescaleSlope=0.5,
        RescaleIntercept=-1024,
        WindowCenter=[40, -600],
        WindowWidth=[400, 1500],
    )

    decoded = decode_image(data)

    hounsfield = CT.astype(np.float64) * 0.5 - 1024
    assert_grey(decoded, windowed(hounsfield, 40, 400))
    assert decoded.dicom == AppliedDicom(frame=0, window=DicomWindow(center=40, width=400))
    inside = (decoded.pixels > 0) & (decoded.pixels < 1)
    assert (decoded.pixels == 0).any() and (decoded.pixels == 1).any() and inside.any()


def test_the_requests_window_overrides_the_files() -> None:
    data = dicom_file(
        CT, RescaleSlope=0.5, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    window = DicomWindow(center=-600, width=1500)

    decoded = decode_image(data, dicom=DicomOptions(window=window))

    assert_grey(decoded, windowed(CT * 0.5 - 1024.0, -600, 1500))
    assert decoded.dicom is not None and decoded.dicom.window == window


def test_monochrome1_is_inverted() -> None:
    stored = RNG.integers(0, 4096, (6, 9)).astype(np.uint16)
    data = dicom_file(
        stored, photometric="MONOCHROME1", bits_stored=12, WindowCenter=2000, WindowWidth=3000
    )

    decoded = decode_image(data)

    assert_grey(decoded, 1.0 - windowed(stored.astype(np.float64), 2000, 3000))


def test_without_a_window_the_full_range_of_the_rescaled_values_is_used() -> None:
    stored = RNG.integers(10, 200, (6, 9)).astype(np.uint8)
    data = dicom_file(stored, RescaleSlope=2, RescaleIntercept=-100)

    decoded = decode_image(data)

    values = stored * 2.0 - 100
    assert_grey(decoded, (values - values.min()) / (values.max() - values.min()))
    assert decoded.pixels.min() == 0 and decoded.pixels.max() == 1
    applied = decoded.dicom.window if decoded.dicom else None
    assert applied is not None
    again = decode_image(data, dicom=DicomOptions(window=applied))
    # The reported window holds the same values up to float64 rounding: at most one float32 step
    # apart after the cast, eps32 / 2 for values up to 1.
    np.testing.assert_allclose(again.pixels, decoded.pixels, rtol=0, atol=EPS32 / 2)
    unusable = dicom_file(
        stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=40, WindowWidth=0
    )
    np.testing.assert_array_equal(decode_image(unusable).pixels, decoded.pixels)


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_8_bit_keeps_its_colours(planar: int) -> None:
    decoded = decode_image(dicom_file(RGB, photometric="RGB", planar=planar))

    # level / 255 in float64, rounded once to float32: within eps32 / 2 of its value.
    np.testing.assert_allclose(decoded.pixels, RGB / 255.0, rtol=EPS32 / 2, atol=0)
    np.testing.assert_array_equal(decoded.display, RGB)
    assert decoded.dicom == AppliedDicom(frame=0, window=None)


def test_a_multi_frame_file_gives_the_requested_frame() -> None:
    frames = RNG.integers(0, 1000, (3, 6, 9)).astype(np.uint16)
    data = dicom_file(frames)

    decoded = decode_image(data, dicom=DicomOptions(frame=2))

    picked = frames[2].astype(np.float64)
    assert_grey(decoded, (picked - picked.min()) / (picked.max() - picked.min()))
    assert decoded.dicom is not None and decoded.dicom.frame == 2


@pytest.mark.parametrize(
    ("dtype", "bits_stored"),
    [(np.uint8, 8), (np.int8, 8), (np.uint16, 16), (np.int16, 16), (np.int16, 12)],
)
def test_8_and_16_bit_values_signed_or_unsigned(dtype: type, bits_stored: int) -> None:
    signed = np.iinfo(dtype).min < 0
    low = -(2 ** (bits_stored - 1)) if signed else 0
    high = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
    stored = RNG.integers(low, high, (6, 9), endpoint=True).astype(dtype)
    stored[0, :2] = low, high
    window = DicomWindow(center=(low + high) / 2, width=(high - low) / 2)

    decoded = decode_image(
        dicom_file(stored, bits_stored=bits_stored), dicom=DicomOptions(window=window)
    )

    assert_grey(decoded, windowed(stored.astype(np.float64), window.center, window.width))


@pytest.mark.parametrize(
    "syntax",
    [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless],
    ids=lambda syntax: syntax.name,
)
def test_native_encodings_and_rle_decode_alike(syntax: str) -> None:
    reference = decode_image(dicom_file(CT))

    decoded = decode_image(dicom_file(CT, transfer_syntax=syntax))

    np.testing.assert_array_equal(decoded.pixels, reference.pixels)


def test_a_frame_the_file_lacks_is_refused_with_its_frame_count() -> None:
    data = dicom_file(np.zeros((3, 4, 4), np.uint8))

    with pytest.raises(DicomOptionError, match="3 frame"):
        decode_image(data, dicom=DicomOptions(frame=3))


def test_a_window_on_an_rgb_image_is_refused() -> None:
    options = DicomOptions(window=DicomWindow(center=40, width=400))

    with pytest.raises(DicomOptionError, match="MONOCHROME"):
        decode_image(dicom_file(RGB, photometric="RGB"), dicom=options)


def test_huge_rows_and_columns_are_refused_before_decoding() -> None:
    bomb = dicom_file(np.zeros((4, 4), np.uint16), Rows=60000, Columns=60000)

    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError):
            decode_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_the_pixel_limit_counts_every_frame() -> None:
    data = dicom_file(np.zeros((5, 10, 10), np.uint8))

    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=499)
    assert decode_image(data, max_pixels=500).pixels.shape == (10, 10, 1)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (unsupported_syntax_file(CT), "High-Throughput JPEG 2000"),
        (dicom_file(RGB, photometric="YBR_PARTIAL_422"), "YBR_PARTIAL_422"),
        (dicom_file(CT.astype(np.int32)), "32 bits"),
    ],
    ids=["htj2k", "ybr-partial", "32-bit"],
)
def test_encodings_and_layouts_it_does_not_read_are_unsupported(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedImageError, match=named) as refused:
        decode_image(data)
    assert not any(value in str(refused.value) for value in PLANTED_VALUES)


@pytest.mark.parametrize(
    "data",
    [
        dicom_file(CT)[:-7],
        dicom_file(CT)[:400],
        short_rle_file(CT),
        bytes(128) + b"DICM" + bytes(RNG.integers(0, 256, 300, dtype=np.uint8)),
        dicom_file(CT, Rows=0),
    ],
    ids=["pixel-data-cut", "header-only", "rle-frame-cut", "garbage", "no-rows"],
)
def test_malformed_files_are_undecodable(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(data)
    assert not any(value in str(refused.value) for value in PLANTED_VALUES)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of what it reads past
def test_mutated_files_decode_or_fail_as_a_decoding_error() -> None:
    originals = [
        dicom_file(CT, WindowCenter=40, WindowWidth=400, RescaleSlope=0.5),
        dicom_file(RGB, photometric="RGB"),
        dicom_file(CT, transfer_syntax=RLELossless),
        # JPEG 2000 needs a frame of at least 32 × 32 for its default resolution levels.
        *(compressed(dicom_file(np.resize(CT, (32, 32))), s) for s in MUTATED_CODECS),
    ]
    refusals = (ImageDecodeError, UnsupportedImageError, ImageTooLargeError, DicomOptionError)
    rng = np.random.default_rng(13)
    for trial in range(300):
        data = bytearray(originals[trial % len(originals)])
        for position in rng.integers(132, len(data), int(rng.integers(1, 8))):
            data[position] = int(rng.integers(0, 256))
        try:
            decoded = decode_image(bytes(data))
        except refusals as refused:
            assert not any(value in str(refused) for value in PLANTED_VALUES)
        else:
            assert decoded.pixels.min() >= 0 and decoded.pixels.max() <= 1


def test_the_window_follows_dicoms_linear_function() -> None:
    values = np.array([-161.0, -160.0, -159.0, 39.5, 238.0, 239.0, 240.0])

    mapped = apply_window(values, DicomWindow(center=40, width=400))

    # PS3.3 C.11.2.1.2.1: x ≤ c − 0.5 − (w − 1)/2 → 0; x > c − 0.5 + (w − 1)/2 → 1.
    # Float64: x − 39.5 is exact, the division by 399 and the + 0.5 round within eps64 / 2 of
    # values up to 1 each (2.2e-16 in all; 1e-15 keeps every 1/399 step apart).
    np.testing.assert_allclose(mapped, [0, 0, 1 / 399, 0.5, 398 / 399, 1, 1], rtol=0, atol=1e-15)
    threshold = apply_window(values, DicomWindow(center=40, width=1))
    np.testing.assert_array_equal(threshold, [0, 0, 0, 0, 1, 1, 1])


def test_the_ct_fixture_maps_back_onto_its_grey_levels() -> None:
    image = RNG.random((8, 8))

    decoded = decode_image(ct_file(image))

    # (4 L - 510) / 1020 + 0.5 in float64 is within 2^-53 of L / 255, whose binary digits repeat
    # L's 8 bits and so never sit that close to a float32 rounding midpoint (L = 0 and 255 are
    # exact): the cast rounds to float32(L) / 255, the PNG's pixel, for every level.
    expected = np.round(image * 255).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], expected)
    levels = np.arange(256).reshape(16, 16)
    every = decode_image(ct_file(levels / 255)).pixels[:, :, 0]
    np.testing.assert_array_equal(every, levels.astype(np.float32) / np.float32(255))
