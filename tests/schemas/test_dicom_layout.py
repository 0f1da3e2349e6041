"""The DICOM layout rules on plain header values, as either side's reader hands them over."""

import subprocess
import sys

import pytest

from schemas import problems
from schemas.dicom import DICOM_DECODING_ELEMENTS, DicomOptions, DicomWindow
from schemas.dicom_layout import (
    DICOM_LAYOUT_ELEMENTS,
    DicomLayout,
    DicomLayoutError,
    check_dicom_layout,
    check_dicom_options,
    is_dicom,
)
from schemas.problems import ProblemKind

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
MAX_PIXELS = 1_000


def ct_header(**changed: object) -> dict[str, object]:
    """A sound 16-bit signed 4 × 5 grey header with two frames, with `changed` values."""
    elements: dict[str, object] = {
        "TransferSyntaxUID": EXPLICIT_LITTLE,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "NumberOfFrames": "2",
        "Rows": 4,
        "Columns": 5,
        "BitsAllocated": 16,
        "BitsStored": 12,
        "PixelRepresentation": 1,
        "PixelData": bytes(2 * 4 * 5 * 2),
    }
    return {**elements, **changed}


def layout_of(elements: dict[str, object], name: str | None = None) -> DicomLayout:
    return check_dicom_layout(elements, MAX_PIXELS, transfer_syntax_name=name)


def test_a_sound_header_gives_its_layout() -> None:
    assert layout_of(ct_header()) == DicomLayout(
        rows=4,
        columns=5,
        frames=2,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=12,
        pixel_representation=1,
        photometric="MONOCHROME2",
        transfer_syntax=EXPLICIT_LITTLE,
    )


def test_values_are_read_as_a_lenient_reader_leaves_them() -> None:
    layout = layout_of(
        ct_header(PhotometricInterpretation=" monochrome1 ", NumberOfFrames=None, Rows="4")
    )

    assert (layout.photometric, layout.frames, layout.rows) == ("MONOCHROME1", 1, 4)


def test_rgb_takes_three_samples_and_their_bytes() -> None:
    rgb = ct_header(
        PhotometricInterpretation="RGB",
        SamplesPerPixel=3,
        BitsAllocated=8,
        BitsStored=8,
        PixelRepresentation=0,
        PixelData=bytes(2 * 4 * 5 * 3),
    )

    assert layout_of(rgb).samples_per_pixel == 3
    with pytest.raises(DicomLayoutError, match="shorter"):
        layout_of({**rgb, "PixelData": bytes(2 * 4 * 5 * 3 - 1)})


@pytest.mark.parametrize(
    ("changed", "name", "kind", "detail"),
    [
        ({"TransferSyntaxUID": None}, None, problems.BAD_IMAGE, "names no TransferSyntaxUID"),
        (
            {"TransferSyntaxUID": HTJ2K_LOSSLESS},
            "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
            problems.UNSUPPORTED_MEDIA,
            r"\(Lossless Only\) is not",
        ),
        ({"TransferSyntaxUID": "1.2.3.4"}, None, problems.UNSUPPORTED_MEDIA, r"\(unrecognised\)"),
        ({"PhotometricInterpretation": " "}, None, problems.BAD_IMAGE, "no Photometric"),
        ({"PhotometricInterpretation": ["RGB"]}, None, problems.BAD_IMAGE, "no Photometric"),
        (
            {"PhotometricInterpretation": "YBR_PARTIAL_422"},
            None,
            problems.UNSUPPORTED_MEDIA,
            "YBR_PARTIAL_422",
        ),
        (
            {"PhotometricInterpretation": "Q9"},
            None,
            problems.UNSUPPORTED_MEDIA,
            r"\(unrecognised\)",
        ),
        ({"BitsAllocated": 32}, None, problems.UNSUPPORTED_MEDIA, "32 bits"),
        ({"BitsAllocated": 1}, None, problems.UNSUPPORTED_MEDIA, "1 bits"),
        ({"BitsAllocated": None}, None, problems.BAD_IMAGE, "no BitsAllocated"),
        ({"BitsAllocated": "16x"}, None, problems.BAD_IMAGE, "BitsAllocated is not a number"),
        ({"Rows": [4, 4]}, None, problems.BAD_IMAGE, "Rows is not one number"),
        ({"Rows": ""}, None, problems.BAD_IMAGE, "no Rows"),
        ({"Rows": 0}, None, problems.BAD_IMAGE, "dimensions"),
        ({"Columns": -5}, None, problems.BAD_IMAGE, "dimensions"),
        ({"NumberOfFrames": "0"}, None, problems.BAD_IMAGE, "dimensions"),
        ({"SamplesPerPixel": 3}, None, problems.BAD_IMAGE, "samples per pixel"),
        ({"BitsStored": 17}, None, problems.BAD_IMAGE, "Bits Stored"),
        ({"BitsStored": 0}, None, problems.BAD_IMAGE, "Bits Stored"),
        ({"PixelRepresentation": 2}, None, problems.BAD_IMAGE, "Pixel Representation"),
        ({"Rows": 200}, None, problems.TOO_LARGE, r"5×200 with 2 frame\(s\); at most 1000"),
        ({"NumberOfFrames": 51}, None, problems.TOO_LARGE, "51 frame"),
        ({"PixelData": None}, None, problems.BAD_IMAGE, "no PixelData"),
        ({"PixelData": b""}, None, problems.BAD_IMAGE, "no PixelData"),
        ({"PixelData": bytes(79)}, None, problems.BAD_IMAGE, "shorter than its header says"),
    ],
)
def test_each_rule_refuses_with_its_kind_of_problem(
    changed: dict[str, object], name: str | None, kind: ProblemKind, detail: str
) -> None:
    with pytest.raises(DicomLayoutError, match=detail) as refused:
        layout_of(ct_header(**changed), name)

    assert refused.value.kind == kind
    assert str(refused.value) == refused.value.detail


def test_a_refused_value_is_named_only_when_the_standard_defines_it() -> None:
    planted = "PLANTED^Dcm7Q2x"
    for changed in ({"TransferSyntaxUID": planted}, {"PhotometricInterpretation": planted}):
        with pytest.raises(DicomLayoutError) as refused:
            layout_of(ct_header(**changed))
        assert "dcm7q2x" not in refused.value.detail.lower()


def test_the_pixel_limit_comes_before_the_pixel_data_is_counted() -> None:
    at_the_limit = ct_header(Rows=100, PixelData=bytes(2 * 100 * 5 * 2))
    assert layout_of(at_the_limit).rows == 100

    with pytest.raises(DicomLayoutError) as refused:
        layout_of(ct_header(Rows=101, PixelData=b"\0\0"))
    assert refused.value.kind == problems.TOO_LARGE


def test_rle_frames_are_left_for_decoding_to_measure() -> None:
    compressed = ct_header(TransferSyntaxUID=RLE_LOSSLESS, PixelData=b"\0\0")

    assert layout_of(compressed).transfer_syntax == RLE_LOSSLESS


def test_options_must_fit_the_layout() -> None:
    grey = layout_of(ct_header())
    colour = layout_of(
        ct_header(
            PhotometricInterpretation="RGB",
            SamplesPerPixel=3,
            PixelData=bytes(2 * 4 * 5 * 3 * 2),
        )
    )
    window = DicomWindow(center=40, width=400)

    check_dicom_options(DicomOptions(frame=1, window=window), grey)
    check_dicom_options(DicomOptions(), colour)
    with pytest.raises(DicomLayoutError, match=r"2 frame\(s\) \(0–1\)") as out_of_range:
        check_dicom_options(DicomOptions(frame=2), grey)
    with pytest.raises(DicomLayoutError, match="MONOCHROME") as window_on_colour:
        check_dicom_options(DicomOptions(window=window), colour)
    assert out_of_range.value.kind == window_on_colour.value.kind == problems.INVALID_REQUEST


def test_the_stored_file_keeps_every_element_the_rules_read() -> None:
    assert set(DICOM_LAYOUT_ELEMENTS) <= set(DICOM_DECODING_ELEMENTS)


def test_a_dicom_file_is_its_preamble_then_dicm() -> None:
    assert is_dicom(bytes(128) + b"DICM")
    assert not is_dicom(b"DICM" + bytes(128))
    assert not is_dicom(bytes(128) + b"DICN")


def test_the_rules_load_neither_pydicom_nor_numpy() -> None:
    code = (
        "import sys, schemas.dicom_layout; print(sorted({'pydicom', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
