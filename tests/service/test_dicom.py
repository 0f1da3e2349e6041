"""The gateway's DICOM header check on real files written by pydicom: format, size, options."""

import io
import subprocess
import sys

import numpy as np
import pytest
from dicom_files import (  # type: ignore[import-not-found]
    PLANTED_VALUES,
    dicom_file,
    jpeg_dicom_file,
    short_rle_file,
)
from model_infos import small_model_info  # type: ignore[import-not-found]
from PIL import Image
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from schemas.dicom import (
    DICOM_DECODING_ELEMENTS,
    DICOM_DERIVED_ELEMENTS,
    DicomOptions,
    DicomWindow,
)
from schemas.dicom_layout import DicomLayout
from schemas.explain import ExplainOptions
from service.admission import Caller, prepare_job
from service.auth import Principal
from service.config import Settings
from service.dicom import check_dicom_options, inspect_dicom, minimal_dicom
from service.errors import ApiError, BadImage, InvalidRequest, PayloadTooLarge, UnsupportedMedia
from service.images import inspect_image, sniff_format
from workers.dicom import decode_dicom

MAX_PIXELS = 64_000_000
RNG = np.random.default_rng(5)
CT = RNG.integers(-1000, 2000, (12, 10)).astype(np.int16)
FRAMES = RNG.integers(0, 255, (3, 8, 6), dtype=np.uint8)
RGB = RNG.integers(0, 255, (4, 5, 3), dtype=np.uint8)


def layout(  # noqa: PLR0913 - one keyword default per DicomLayout field the tests vary
    rows: int,
    columns: int,
    *,
    frames: int = 1,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    signed: bool = False,
    syntax: str = ExplicitVRLittleEndian,
) -> DicomLayout:
    """The layout of what `dicom_file` writes for these pixels and options."""
    return DicomLayout(
        rows=rows,
        columns=columns,
        frames=frames,
        samples_per_pixel=3 if photometric == "RGB" else 1,
        bits_allocated=bits,
        bits_stored=bits,
        pixel_representation=int(signed),
        photometric=photometric,
        transfer_syntax=syntax,
    )


def assert_no_planted_value(error: BaseException) -> None:
    assert not any(value in str(error) for value in PLANTED_VALUES)


def test_dicom_is_sniffed_by_dicm_after_the_128_byte_preamble() -> None:
    data = dicom_file(CT)
    assert data[128:132] == b"DICM"

    assert sniff_format(data) == "dicom"
    with pytest.raises(UnsupportedMedia, match="DICOM"):
        sniff_format(b"DICM" + data[132:])
    with pytest.raises(UnsupportedMedia):
        sniff_format(data[:128] + b"DICN" + data[132:])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (dicom_file(CT), layout(12, 10, bits=16, signed=True)),
        (dicom_file(FRAMES), layout(8, 6, frames=3)),
        (
            dicom_file(RGB, photometric="RGB", transfer_syntax=RLELossless),
            layout(4, 5, photometric="RGB", syntax=RLELossless),
        ),
        (dicom_file(FRAMES[0], photometric="MONOCHROME1"), layout(8, 6, photometric="MONOCHROME1")),
    ],
    ids=["ct", "multi-frame", "rgb-rle", "monochrome1"],
)
def test_the_header_gives_the_image_layout(data: bytes, expected: DicomLayout) -> None:
    header = inspect_image(data, MAX_PIXELS)

    assert header.format == "dicom"
    assert (header.width, header.height) == (expected.columns, expected.rows)
    assert header.dicom == expected


def test_rows_columns_and_frames_together_are_held_to_the_pixel_limit() -> None:
    data = dicom_file(FRAMES)  # 3 × 8 × 6 = 144 pixels

    with pytest.raises(PayloadTooLarge, match="3 frame"):
        inspect_dicom(data, max_pixels=143)
    assert inspect_dicom(data, max_pixels=144).frames == 3


def test_huge_claimed_dimensions_are_too_large_not_short_of_pixel_data() -> None:
    bomb = dicom_file(np.zeros((4, 4), np.uint16), Rows=65535, Columns=65535)

    with pytest.raises(PayloadTooLarge):
        inspect_image(bomb, MAX_PIXELS)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (jpeg_dicom_file(FRAMES[0]), "JPEG Baseline"),
        (dicom_file(CT, transfer_syntax=DeflatedExplicitVRLittleEndian), "Deflated"),
        (dicom_file(RGB, photometric="YBR_FULL"), "YBR_FULL"),
        (dicom_file(CT.astype(np.int32)), "32 bits"),
    ],
    ids=["jpeg-baseline", "deflated", "ybr-full", "32-bit"],
)
def test_encodings_and_layouts_it_does_not_read_are_unsupported(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedMedia, match=named) as refused:
        inspect_image(data, MAX_PIXELS)
    assert_no_planted_value(refused.value)


@pytest.mark.parametrize(
    "data",
    [
        dicom_file(CT)[:-7],
        dicom_file(CT)[:400],
        bytes(128) + b"DICM" + bytes(RNG.integers(0, 256, 300, dtype=np.uint8)),
        dicom_file(CT, Rows=0),
        dicom_file(RGB, photometric="RGB", SamplesPerPixel=1),
        dicom_file(CT, BitsStored=17),
    ],
    ids=["pixel-data-cut", "header-only", "garbage", "no-rows", "rgb-one-sample", "bits-stored"],
)
def test_malformed_files_are_bad_images(data: bytes) -> None:
    with pytest.raises(BadImage) as refused:
        inspect_image(data, MAX_PIXELS)
    assert_no_planted_value(refused.value)


def test_a_corrupt_rle_frame_passes_the_door_for_the_worker_to_refuse() -> None:
    assert inspect_image(short_rle_file(CT), MAX_PIXELS).format == "dicom"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of what it reads past
def test_mutated_files_are_refused_as_client_errors_never_anything_else() -> None:
    originals = [dicom_file(CT), dicom_file(RGB, photometric="RGB"), dicom_file(FRAMES)]
    rng = np.random.default_rng(11)
    for trial in range(300):
        data = bytearray(originals[trial % len(originals)])
        for position in rng.integers(132, len(data), int(rng.integers(1, 8))):
            data[position] = int(rng.integers(0, 256))
        try:
            inspect_image(bytes(data), MAX_PIXELS)
        except ApiError as refused:
            assert refused.status in (400, 413, 415)
            assert_no_planted_value(refused)


def test_frame_and_window_must_fit_the_file() -> None:
    grey = layout(8, 6, frames=3)
    colour = layout(8, 6, photometric="RGB")
    window = DicomWindow(center=40, width=400)

    check_dicom_options(None, None)
    check_dicom_options(DicomOptions(frame=2, window=window), grey)
    check_dicom_options(DicomOptions(), colour)
    with pytest.raises(InvalidRequest, match=r"3 frame\(s\) \(0–2\)"):
        check_dicom_options(DicomOptions(frame=3), grey)
    with pytest.raises(InvalidRequest, match="MONOCHROME"):
        check_dicom_options(DicomOptions(window=window), colour)
    with pytest.raises(InvalidRequest, match="only to DICOM"):
        check_dicom_options(DicomOptions(), None)


def test_the_gateway_loads_pydicom_only_for_a_dicom_upload() -> None:
    code = (
        "import sys; from service.app import create_app; create_app(); "
        "print('pydicom' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "data",
    [
        dicom_file(CT, RescaleSlope=0.5, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400),
        dicom_file(CT, transfer_syntax=ExplicitVRBigEndian),
        dicom_file(FRAMES, transfer_syntax=ImplicitVRLittleEndian),
        dicom_file(RGB, photometric="RGB", transfer_syntax=RLELossless, planar=1),
        dicom_file(FRAMES[0], photometric="MONOCHROME1"),
    ],
    ids=["ct-windowed", "big-endian", "implicit-multi-frame", "rgb-rle-planar", "monochrome1"],
)
def test_the_stored_file_keeps_only_what_decoding_needs_and_decodes_alike(data: bytes) -> None:
    stored = minimal_dicom(data)

    assert not any(value.encode() in stored for value in PLANTED_VALUES)
    assert any(value.encode() in data for value in PLANTED_VALUES)  # they were there to drop
    kept = dcmread(io.BytesIO(stored))
    assert {element.keyword for element in kept} <= set(DICOM_DECODING_ELEMENTS)
    assert [element.keyword for element in kept.file_meta] == ["TransferSyntaxUID"]
    assert inspect_image(stored, MAX_PIXELS) == inspect_image(data, MAX_PIXELS)
    frames = inspect_dicom(data, MAX_PIXELS).frames
    for frame in range(frames):
        original = decode_dicom(data, DicomOptions(frame=frame), MAX_PIXELS)
        rewritten = decode_dicom(stored, DicomOptions(frame=frame), MAX_PIXELS)
        assert np.array_equal(original.pixels, rewritten.pixels)
        assert original.dicom == rewritten.dicom


def test_a_job_for_derived_objects_also_keeps_what_they_copy() -> None:
    data = dicom_file(CT, FrameOfReferenceUID="1.2.3", PixelSpacing=[0.5, 0.5], Modality="CT")
    options = ExplainOptions(model="m", methods=["gradcam"], output={"dicom": ["segmentation"]})
    caller = Caller(Principal("k", frozenset({"explain"})))

    _, stored = prepare_job(options, data, small_model_info(), caller, Settings())

    kept, source = dcmread(io.BytesIO(stored)), dcmread(io.BytesIO(data))
    assert {element.keyword for element in kept} <= set(
        DICOM_DECODING_ELEMENTS + DICOM_DERIVED_ELEMENTS
    )
    for keyword in ("PatientName", "PatientID", "InstitutionName", "StudyInstanceUID"):
        assert kept[keyword].value == source[keyword].value
    assert (kept.FrameOfReferenceUID, kept.PixelSpacing) == ("1.2.3", [0.5, 0.5])
    assert np.array_equal(
        decode_dicom(stored, DicomOptions(), MAX_PIXELS).pixels,
        decode_dicom(data, DicomOptions(), MAX_PIXELS).pixels,
    )


def test_derived_objects_of_a_png_are_refused_at_the_door() -> None:
    options = ExplainOptions(model="m", methods=["gradcam"], output={"dicom": ["segmentation"]})
    caller = Caller(Principal("k", frozenset({"explain"})))
    png = io.BytesIO()
    Image.fromarray(FRAMES[0]).save(png, format="PNG")

    with pytest.raises(InvalidRequest, match="output.dicom"):
        prepare_job(options, png.getvalue(), small_model_info(), caller, Settings())


def test_a_job_stores_the_rewritten_dicom() -> None:
    data = dicom_file(CT, InstitutionName="INST-PLANTED-Wq4z")
    options = ExplainOptions(model="m", methods=["gradcam"])
    info = small_model_info()

    caller = Caller(Principal("k", frozenset({"explain"})))
    _, stored = prepare_job(options, data, info, caller, Settings())

    assert stored == minimal_dicom(data)
