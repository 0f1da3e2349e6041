"""The gateway (before queueing) and the worker (before decoding) refuse the same DICOM headers,
with the same problem and the same words, since both hand their reader's values to one check."""

import numpy as np
import pytest
from dicom_files import (  # type: ignore[import-not-found]
    PLANTED_VALUES,
    dicom_file,
    unsupported_syntax_file,
    without,
)
from pydicom.uid import ExplicitVRLittleEndian

from schemas import problems
from schemas.dicom import DicomOptions, DicomWindow
from schemas.problems import ProblemKind
from service.dicom import check_dicom_options
from service.errors import ApiError
from service.images import inspect_image
from workers.decoded import ImageError
from workers.images import decode_image

MAX_PIXELS = 10_000
RNG = np.random.default_rng(17)
CT = RNG.integers(-1000, 2000, (12, 10)).astype(np.int16)
GREY = RNG.integers(0, 256, (3, 8, 6), dtype=np.uint8)
RGB = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)


def private_transfer_syntax(data: bytes) -> bytes:
    """The Explicit VR Little Endian file `data` under a private transfer syntax UID of the same
    length, which pydicom will not write itself."""
    explicit, private = ExplicitVRLittleEndian.encode() + b"\0", b"1.2.826.0.1.3680043\0"
    assert len(explicit) == len(private) and data.count(explicit) == 1
    return data.replace(explicit, private)


MALFORMED_HEADERS = {
    # Encodings, colour models and bit depths neither side reads: 415.
    "htj2k": (unsupported_syntax_file(CT), problems.UNSUPPORTED_MEDIA),
    "private-transfer-syntax": (
        private_transfer_syntax(dicom_file(CT)),
        problems.UNSUPPORTED_MEDIA,
    ),
    "ybr-partial": (dicom_file(RGB, photometric="YBR_PARTIAL_422"), problems.UNSUPPORTED_MEDIA),
    "unknown-photometric": (
        dicom_file(CT, PhotometricInterpretation="PLANTED"),
        problems.UNSUPPORTED_MEDIA,
    ),
    "32-bit": (dicom_file(CT.astype(np.int32)), problems.UNSUPPORTED_MEDIA),
    # Rows × Columns × frames past the limit, decided before the (short) pixel data is looked at.
    "too-many-pixels": (dicom_file(CT, Rows=101, Columns=100), problems.TOO_LARGE),
    "too-many-frames": (dicom_file(GREY, NumberOfFrames=209), problems.TOO_LARGE),
    # Headers that contradict themselves or their pixel data: 400.
    "no-transfer-syntax": (
        without(dicom_file(CT), file_meta=("TransferSyntaxUID",)),
        problems.BAD_IMAGE,
    ),
    "no-photometric": (without(dicom_file(CT), "PhotometricInterpretation"), problems.BAD_IMAGE),
    "two-photometrics": (
        dicom_file(CT, PhotometricInterpretation=["MONOCHROME2", "RGB"]),
        problems.BAD_IMAGE,
    ),
    "no-bits-allocated": (without(dicom_file(CT), "BitsAllocated"), problems.BAD_IMAGE),
    "no-samples-per-pixel": (without(dicom_file(CT), "SamplesPerPixel"), problems.BAD_IMAGE),
    "no-rows": (dicom_file(CT, Rows=0), problems.BAD_IMAGE),
    "no-frames": (dicom_file(CT, NumberOfFrames=0), problems.BAD_IMAGE),
    "two-frame-counts": (dicom_file(CT, NumberOfFrames=["1", "2"]), problems.BAD_IMAGE),
    "rgb-one-sample": (dicom_file(RGB, photometric="RGB", SamplesPerPixel=1), problems.BAD_IMAGE),
    "grey-three-samples": (dicom_file(CT, SamplesPerPixel=3), problems.BAD_IMAGE),
    "bits-stored-above-allocated": (dicom_file(CT, BitsStored=17), problems.BAD_IMAGE),
    "no-bits-stored": (dicom_file(CT, BitsStored=0), problems.BAD_IMAGE),
    "pixel-representation-2": (dicom_file(CT, PixelRepresentation=2), problems.BAD_IMAGE),
    "no-pixel-data": (without(dicom_file(CT), "PixelData"), problems.BAD_IMAGE),
    "pixel-data-short": (dicom_file(CT, Rows=13), problems.BAD_IMAGE),
    "frames-short": (dicom_file(GREY, NumberOfFrames=4), problems.BAD_IMAGE),
    "pixel-data-cut": (dicom_file(CT)[:-7], problems.BAD_IMAGE),
    "header-only": (dicom_file(CT)[:400], problems.BAD_IMAGE),
    "garbage": (
        bytes(128) + b"DICM" + bytes(RNG.integers(0, 256, 300, dtype=np.uint8)),
        problems.BAD_IMAGE,
    ),
}


def refusals(data: bytes, options: DicomOptions | None = None) -> tuple[ApiError, ImageError]:
    """What the gateway raises at the door and what the worker raises decoding, for one file."""
    with pytest.raises(ApiError) as gateway:
        header = inspect_image(data, MAX_PIXELS)
        check_dicom_options(options, header.dicom)
    with pytest.raises(ImageError) as worker:
        decode_image(data, MAX_PIXELS, options)
    return gateway.value, worker.value


@pytest.mark.parametrize(("data", "kind"), MALFORMED_HEADERS.values(), ids=MALFORMED_HEADERS.keys())
def test_both_sides_refuse_a_bad_header_alike(data: bytes, kind: ProblemKind) -> None:
    gateway, worker = refusals(data)

    assert gateway.kind == worker.kind == kind
    assert gateway.detail == str(worker)
    assert not any(value in gateway.detail for value in PLANTED_VALUES)


@pytest.mark.parametrize(
    ("data", "options"),
    [
        (dicom_file(GREY), DicomOptions(frame=3)),
        (dicom_file(RGB, photometric="RGB"), DicomOptions(window=DicomWindow(center=0, width=9))),
    ],
    ids=["frame-it-lacks", "window-on-rgb"],
)
def test_both_sides_refuse_options_that_do_not_fit_alike(
    data: bytes, options: DicomOptions
) -> None:
    gateway, worker = refusals(data, options)

    assert gateway.kind == worker.kind == problems.INVALID_REQUEST
    assert gateway.detail == str(worker)


@pytest.mark.parametrize(
    "data",
    [
        dicom_file(np.zeros((100, 100), np.uint8)),
        dicom_file(GREY, Rows=7),
        dicom_file(CT.astype(np.uint16) % 4096, bits_stored=12),
        dicom_file(CT, BitsStored=1),
        dicom_file(RGB, photometric="RGB", planar=1),
    ],
    ids=["at-the-pixel-limit", "pixel-data-longer", "12-of-16-bits", "1-bit-stored", "rgb-planar"],
)
@pytest.mark.filterwarnings("ignore:The pixel data is")  # pydicom's note of the padding it drops
def test_both_sides_accept_a_header_at_the_edge_of_a_rule(data: bytes) -> None:
    header = inspect_image(data, MAX_PIXELS)
    decoded = decode_image(data, MAX_PIXELS)

    assert header.dicom is not None
    assert decoded.pixels.shape[:2] == (header.height, header.width)
