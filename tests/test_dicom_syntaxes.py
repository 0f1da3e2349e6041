"""Every transfer syntax, colour model and VOI transformation the service reads, on both sides:
real files (pydicom's bundled ones and files real encoders write here), decoded by the worker
and checked against the uncompressed original, the standard's formulas, or pydicom's own VOI
and colour functions as an independent reference; the gateway accepts each at the door."""

import io
import struct
import tracemalloc

import numpy as np
import pytest
from dicom_codecs import (  # type: ignore[import-not-found]
    LOSSLESS,
    NEAR_LOSSLESS_ERROR,
    bundled_file,
    compressed,
)
from dicom_files import dicom_file  # type: ignore[import-not-found]
from method_checks import EPS32
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import apply_voi_lut
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)

from schemas.dicom import (
    DICOM_ENCAPSULATED_SYNTAXES,
    DICOM_TRANSFER_SYNTAXES,
    AppliedDicom,
    DicomOptions,
    DicomWindow,
)
from schemas.dicom_read import inflated_limit
from service.dicom import minimal_dicom
from service.errors import PayloadTooLarge, UnsupportedMedia
from service.images import inspect_image
from workers.decoded import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from workers.dicom import apply_window
from workers.images import decode_image

RNG = np.random.default_rng(29)
# A CT-like frame, 48 × 40 (JPEG 2000 needs 32 × 32 at least): smooth structure plus noise,
# signed 16-bit, as Hounsfield units + 1024 would be stored, windowed by the file.
_Y, _X = np.mgrid[0:48, 0:40]
CT = (np.round(600 * np.sin(_X / 7.0) * np.cos(_Y / 9.0)) + RNG.integers(-20, 20, _X.shape)).astype(
    np.int16
) + 1000
CT_ELEMENTS = {"RescaleSlope": 1, "RescaleIntercept": -1024, "WindowCenter": 0, "WindowWidth": 1800}
GREY8 = np.clip((CT - 380) // 5, 0, 255).astype(np.uint8)
UNSIGNED12 = (CT.astype(np.uint16) + 1024) & 0x0FFF


def ct_native(pixels: np.ndarray = CT, **elements: object) -> bytes:
    return dicom_file(pixels, sop_class=CTImageStorage, **(CT_ELEMENTS | elements))


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda uid: DICOM_TRANSFER_SYNTAXES[uid])
def test_each_lossless_syntax_decodes_to_the_uncompressed_originals_pixels(syntax: str) -> None:
    native = ct_native()
    data = compressed(native, syntax)

    decoded, original = decode_image(data), decode_image(native)

    assert dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(decoded.pixels, original.pixels)
    assert decoded.dicom == original.dicom
    # The gateway accepts it, and stores what the worker decodes the same way.
    header = inspect_image(data, 10_000)
    assert header.dicom is not None and header.dicom.rows == 48
    np.testing.assert_array_equal(decode_image(minimal_dicom(data)).pixels, original.pixels)


# Native originals for the lossy codecs, each with a linear window over its whole range (no value
# clips), and that range: a pixel difference × (width − 1) is a difference of stored values.
GREY8_FILE = dicom_file(GREY8, WindowCenter=128, WindowWidth=256)
UNSIGNED12_FILE = dicom_file(UNSIGNED12, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
LOSSY = {
    # JPEG-LS near-lossless bounds each sample's error by NEAR. The others are transform codecs
    # with no per-sample bound: their error is held to what an encoder at their quality keeps,
    # a PSNR of 40 dB of the range at least.
    "jpeg-ls-near-lossless": (JPEGLSNearLossless, ct_native(), 1800, NEAR_LOSSLESS_ERROR),
    "jpeg-baseline": (JPEGBaseline8Bit, GREY8_FILE, 256, None),
    "jpeg-extended-8-bit": (JPEGExtended12Bit, GREY8_FILE, 256, None),
    "jpeg-extended-12-bit": (JPEGExtended12Bit, UNSIGNED12_FILE, 4096, None),
    "jpeg-2000": (JPEG2000, ct_native(), 1800, None),
}


@pytest.mark.parametrize(("syntax", "native", "width", "max_error"), LOSSY.values(), ids=LOSSY)
def test_each_lossy_syntax_decodes_within_its_codecs_loss(
    syntax: str, native: bytes, width: int, max_error: int | None
) -> None:
    data = compressed(native, syntax)
    # DCMTK's lossy encoders rewrite the file's window: both are read through the original's.
    window = decode_image(native).dicom.window  # type: ignore[union-attr]
    options = DicomOptions(window=window)

    decoded, original = decode_image(data, dicom=options), decode_image(native, dicom=options)

    assert dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    error = np.abs(decoded.pixels.astype(np.float64) - original.pixels) * (width - 1)
    if max_error is not None:
        # Each pixel is within eps32 / 2 of its float64 value: × 4095 at most, 1e-3 of a unit.
        assert error.max() <= max_error + 1e-3
    else:
        psnr = 10 * np.log10((width - 1) ** 2 / max(float(np.mean(error**2)), 1e-12))
        assert psnr >= 40
    assert error.max() >= 1  # the codec was lossy indeed: the test compares across a loss
    assert inspect_image(data, 10_000).dicom is not None


# pydicom's bundled files and, for each, its uncompressed twin (same stored pixels), or None.
BUNDLED_LOSSLESS = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("693_J2KR.dcm", "693_UNCR.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),
    ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm"),
]


@pytest.mark.parametrize(("name", "twin"), BUNDLED_LOSSLESS, ids=[n for n, _ in BUNDLED_LOSSLESS])
def test_pydicoms_lossless_files_decode_like_their_uncompressed_twins(name: str, twin: str) -> None:
    decoded, original = decode_image(bundled_file(name)), decode_image(bundled_file(twin))

    np.testing.assert_array_equal(decoded.pixels, original.pixels)
    np.testing.assert_array_equal(decoded.display, original.display)


@pytest.mark.parametrize(
    ("name", "shape", "syntax"),
    [
        ("JPEG2000.dcm", (1024, 256, 1), JPEG2000),
        ("693_J2KI.dcm", (512, 512, 1), JPEG2000),
        ("JPEG-LL.dcm", (1024, 256, 1), "1.2.840.10008.1.2.4.70"),
        ("JPEGLSNearLossless_16.dcm", (50, 10, 1), JPEGLSNearLossless),
        ("SC_rgb_jpeg_dcmtk.dcm", (100, 100, 3), JPEGBaseline8Bit),
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", (100, 100, 3), JPEGBaseline8Bit),
        ("US1_J2KI.dcm", (480, 640, 3), JPEG2000),
        ("GDCMJ2K_TextGBR.dcm", (400, 400, 3), "1.2.840.10008.1.2.4.90"),
        ("image_dfl.dcm", (512, 512, 1), DeflatedExplicitVRLittleEndian),
    ],
    ids=lambda value: value if isinstance(value, str) and value.endswith(".dcm") else "",
)
def test_pydicoms_files_of_each_syntax_decode_at_their_size(
    name: str, shape: tuple[int, ...], syntax: str
) -> None:
    data = bundled_file(name)

    decoded = decode_image(data)

    assert dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    assert decoded.pixels.shape == shape
    assert decoded.display.shape == (*shape[:2], 3)
    assert 0 <= decoded.pixels.min() < decoded.pixels.max() <= 1
    assert inspect_image(data, 10_000_000).dicom is not None


def test_pydicoms_lossy_colour_jpegs_are_the_rgb_original_within_the_codecs_loss() -> None:
    original = decode_image(bundled_file("SC_rgb.dcm")).display.astype(np.int64)
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"):  # YBR_FULL, _422
        decoded = decode_image(bundled_file(name)).display.astype(np.int64)
        # The image is flat colour bands: JPEG's loss is ringing at their edges, a few
        # levels on average.
        assert np.abs(decoded - original).mean() < 4


def ybr_full(rgb: np.ndarray) -> np.ndarray:
    """RGB to YBR_FULL by the standard's equations (PS3.3 C.7.6.3.1.2), rounded to 8 bits."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


def test_ybr_full_becomes_its_rgb() -> None:
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)

    decoded = decode_image(dicom_file(ybr_full(rgb), photometric="YBR_FULL"))

    # Rounding Y, Cb, Cr to integers moves R, G, B by at most 0.5 + 1.772 × 0.5 < 1.4 levels,
    # and pydicom rounds the result to an integer: within one level.
    assert np.abs(decoded.display.astype(int) - rgb).max() <= 1
    assert decoded.dicom == AppliedDicom(frame=0)


def test_ybr_full_422_becomes_its_rgb() -> None:
    # Each horizontal pair shares its colour, so subsampling the chroma loses nothing.
    pairs = RNG.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    rgb = np.repeat(pairs, 2, axis=1)
    ybr = ybr_full(rgb)
    dataset = dcmread(io.BytesIO(dicom_file(ybr, photometric="YBR_FULL")))
    y = ybr[..., 0].reshape(6, 4, 2)
    packed = np.concatenate([y, ybr[:, ::2, 1:]], axis=-1)  # Y1 Y2 Cb Cr per pair
    dataset.PhotometricInterpretation = "YBR_FULL_422"
    dataset.PixelData = packed.tobytes()
    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)

    decoded = decode_image(out.getvalue())

    assert np.abs(decoded.display.astype(int) - rgb).max() <= 1  # as for YBR_FULL


@pytest.mark.parametrize("bits", [8, 16])
def test_palette_colour_goes_through_the_files_tables(bits: int) -> None:
    indices = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    dtype = np.uint8 if bits == 8 else np.uint16
    tables = [RNG.integers(0, 2**bits, 256).astype(dtype) for _ in range(3)]
    elements: dict[str, object] = {}
    for colour, table in zip(("Red", "Green", "Blue"), tables, strict=True):
        elements[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, bits]
        # 8-bit entries travel in 16-bit words too (PS3.3 C.7.6.3.1.6).
        elements[f"{colour}PaletteColorLookupTableData"] = table.astype("<u2").tobytes()

    decoded = decode_image(dicom_file(indices, photometric="PALETTE COLOR", **elements))

    expected = np.stack([table[indices] for table in tables], axis=-1) / (2**bits - 1)
    # entry / full scale in float64, rounded once to float32.
    np.testing.assert_allclose(decoded.pixels, expected, rtol=EPS32 / 2, atol=0)
    assert decoded.dicom == AppliedDicom(frame=0)


def test_linear_exact_and_sigmoid_follow_the_standards_formulas() -> None:
    values = np.array([-200.0, -160.0, 40.0, 140.0, 240.0, 300.0])

    exact = apply_window(values, DicomWindow(center=40, width=400, function="LINEAR_EXACT"))
    sigmoid = apply_window(values, DicomWindow(center=40, width=400, function="SIGMOID"))

    # C.11.2.1.3.2: x ≤ c − w/2 → 0, x > c + w/2 → 1, else (x − c)/w + 0.5; the divisions by 400
    # are exact in binary for these x (multiples of 100 over 400 are quarters).
    np.testing.assert_array_equal(exact, [0, 0, 0.5, 0.75, 1, 1])
    # C.11.2.1.3.1: 1 / (1 + exp(−4 (x − c) / w)); at c it is 1/2, at c + w/4 1 / (1 + e⁻¹).
    expected = 1 / (1 + np.exp(-4 * (values - 40) / 400))
    np.testing.assert_allclose(sigmoid, expected, rtol=1e-15, atol=0)
    assert sigmoid[2] == 0.5
    np.testing.assert_allclose(sigmoid[3], 1 / (1 + np.exp(-1)), rtol=1e-15)


def pydicom_voi(stored: np.ndarray, **elements: object) -> np.ndarray:
    """pydicom's VOI on rescale-free unsigned values, onto [0, 1] (its output range is that of
    16-bit unsigned values when no modality transformation is present)."""
    dataset = Dataset()
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsStored, dataset.PixelRepresentation = 16, 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return apply_voi_lut(stored, dataset).astype(np.float64) / 65535


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_the_files_voi_lut_function_is_honoured_as_pydicom_applies_it(function: str) -> None:
    stored = RNG.integers(0, 4096, (6, 9)).astype(np.uint16)
    window = {"WindowCenter": 1900, "WindowWidth": 1700, "VOILUTFunction": function}

    decoded = decode_image(dicom_file(stored, bits_stored=12, **window))

    reference = pydicom_voi(stored, **window)
    # pydicom maps onto 0…65535 in float64: its values / 65535 agree with ours to float64
    # rounding, then ours round once to float32.
    np.testing.assert_allclose(decoded.pixels[:, :, 0], reference, rtol=0, atol=EPS32)
    assert decoded.dicom is not None and decoded.dicom.window == DicomWindow(
        center=1900, width=1700, function=function
    )


def voi_lut_item(entries: np.ndarray, first: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(entries), first, 16]
    item.add_new("LUTData", "US", [int(entry) for entry in entries])
    return item


def test_a_voi_lut_sequence_is_honoured_when_the_request_gives_no_window() -> None:
    stored = RNG.integers(0, 400, (6, 9)).astype(np.uint16)
    # A LUT over 100…299: values below take its first entry, values above its last.
    entries = np.sort(RNG.integers(0, 65536, 200)).astype(np.uint16)
    lut = {"VOILUTSequence": [voi_lut_item(entries, 100)]}
    data = dicom_file(stored, WindowCenter=200, WindowWidth=100, **lut)

    decoded = decode_image(data)
    windowed = decode_image(data, dicom=DicomOptions(window=DicomWindow(center=50, width=20)))

    reference = pydicom_voi(stored, **lut)
    # entry / 65535 in float64, rounded once to float32.
    np.testing.assert_allclose(decoded.pixels[:, :, 0], reference, rtol=EPS32 / 2, atol=0)
    low = decoded.pixels[:, :, 0][stored < 100]
    assert low.size and (low == np.float32(entries[0] / 65535)).all()
    assert decoded.dicom == AppliedDicom(frame=0, voi_lut=True)
    assert windowed.dicom == AppliedDicom(frame=0, window=DicomWindow(center=50, width=20))


def zeros_deflated(rows: int, columns: int) -> bytes:
    """A deflated file of zeros: a few kilobytes that inflate to 2 × rows × columns bytes."""
    return compressed(
        dicom_file(np.zeros((rows, columns), np.uint16)), DeflatedExplicitVRLittleEndian
    )


def test_a_deflate_bomb_is_refused_on_both_sides_without_inflating_it_whole() -> None:
    data = zeros_deflated(2048, 2048)  # 8 MiB inflated
    max_pixels = 64 * 64
    assert len(data) < 100_000 and inflated_limit(max_pixels) < 2 * 2048 * 2048

    tracemalloc.start()
    with pytest.raises(ImageTooLargeError, match="inflates to more than"):
        decode_image(data, max_pixels)
    with pytest.raises(PayloadTooLarge, match="inflates to more than"):
        inspect_image(data, max_pixels)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # At most the bounded inflation (limit + 1 bytes) and the file, a few times over for copies.
    assert peak < 4 * (inflated_limit(max_pixels) + len(data))


def test_a_deflated_file_within_bounds_but_over_the_pixel_limit_is_refused_by_its_header() -> None:
    data = zeros_deflated(100, 100)

    with pytest.raises(ImageTooLargeError, match="100×100"):
        decode_image(data, 100 * 100 - 1)
    with pytest.raises(PayloadTooLarge, match="100×100"):
        inspect_image(data, 100 * 100 - 1)
    stored = dcmread(io.BytesIO(minimal_dicom(data)))
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


@pytest.mark.parametrize(
    "syntax", list(DICOM_ENCAPSULATED_SYNTAXES), ids=list(DICOM_ENCAPSULATED_SYNTAXES.values())
)
def test_a_compressed_frame_over_the_pixel_limit_is_refused_from_its_header(syntax: str) -> None:
    data = compressed(dicom_file(GREY8), syntax)
    limit = GREY8.size - 1

    with pytest.raises(ImageTooLargeError, match="40×48"):
        decode_image(data, limit)
    with pytest.raises(PayloadTooLarge, match="40×48"):
        inspect_image(data, limit)


def declaring(data: bytes, lines: int, samples: int) -> bytes:
    """The compressed file `data` with its frame's codestream rewritten to declare `lines` ×
    `samples` (its start-of-frame or SIZ segment patched in place), the DICOM header untouched."""
    dataset = dcmread(io.BytesIO(data))
    frame = bytearray(get_frame(dataset.PixelData, 0, number_of_frames=1))
    siz = frame.find(b"\xff\x4f\xff\x51")
    if siz >= 0:  # JPEG 2000: Xsiz, Ysiz after SOC, SIZ, Lsiz and Rsiz; the offsets are 0
        frame[siz + 8 : siz + 16] = struct.pack(">II", samples, lines)
    else:  # JPEG and JPEG-LS: lines and samples follow the SOF marker, its length and precision
        sof = next(
            i for i in range(len(frame) - 1) if frame[i] == 0xFF and frame[i + 1] in SOF_MARKERS
        )
        frame[sof + 5 : sof + 9] = struct.pack(">HH", lines, samples)
    dataset.PixelData = encapsulate([bytes(frame)])
    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()


SOF_MARKERS = (0xC0, 0xC1, 0xC3, 0xF7)  # baseline, extended, lossless, JPEG-LS
CODESTREAM_SYNTAXES = [
    syntax for syntax in DICOM_ENCAPSULATED_SYNTAXES if syntax != "1.2.840.10008.1.2.5"
]


@pytest.mark.parametrize(
    "syntax", CODESTREAM_SYNTAXES, ids=[DICOM_TRANSFER_SYNTAXES[s] for s in CODESTREAM_SYNTAXES]
)
def test_a_frame_whose_codestream_declares_another_size_is_refused_before_decoding(
    syntax: str,
) -> None:
    data = compressed(dicom_file(GREY8), syntax)
    assert decode_image(data).pixels.shape == (48, 40, 1)  # its true size, 48 × 40, decodes

    # 60000 × 60000 would be 7 GB of samples: refused from the codestream's header. A decoder
    # given it would allocate that before finding the data short.
    for lines, samples in ((60000, 60000), (48, 41), (24, 40)):
        with pytest.raises(ImageDecodeError, match="declares another size than the header's"):
            decode_image(declaring(data, lines, samples))


def test_jpeg_2000s_colour_transforms_outside_jpeg_2000_are_refused_on_both_sides() -> None:
    data = dicom_file(RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8), photometric="YBR_ICT")

    with pytest.raises(UnsupportedImageError, match="YBR_ICT is supported in JPEG 2000"):
        decode_image(data)
    with pytest.raises(UnsupportedMedia, match="YBR_ICT is supported in JPEG 2000"):
        inspect_image(data, 10_000)


@pytest.mark.parametrize(
    "name",
    ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"],
)
def test_each_frame_of_a_compressed_multi_frame_file_is_its_uncompressed_twins(name: str) -> None:
    data, twin = bundled_file(name), bundled_file("emri_small.dcm")

    for frame in (0, 7, 9):
        options = DicomOptions(frame=frame)
        decoded, original = decode_image(data, dicom=options), decode_image(twin, dicom=options)
        np.testing.assert_array_equal(decoded.pixels, original.pixels)
    first, last = (decode_image(data, dicom=DicomOptions(frame=f)).pixels for f in (0, 9))
    assert not np.array_equal(first, last)  # the frames are told apart
