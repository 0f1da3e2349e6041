"""The layout rules of a DICOM image, checked once: the gateway runs them before a file is queued
and the worker before it decodes one, so the two cannot disagree.

The check is pure: each side reads the header with its own reader and hands the elements' values
over by keyword. A refusal names only the image's own layout, never another header value.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from schemas import problems
from schemas.dicom import (
    DICOM_BITS_ALLOCATED,
    DICOM_ENCAPSULATED_SYNTAXES,
    DICOM_MONOCHROME,
    DICOM_PHOTOMETRIC_INTERPRETATIONS,
    DICOM_PHOTOMETRIC_TERMS,
    DICOM_TRANSFER_SYNTAXES,
    DicomOptions,
)
from schemas.problems import ProblemKind

DICOM_PREAMBLE_BYTES = 128
DICOM_MAGIC = b"DICM"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
ONE_SAMPLE = (*DICOM_MONOCHROME, "PALETTE COLOR")
JPEG_2000_COLOUR = ("YBR_ICT", "YBR_RCT")
JPEG_2000_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
DICOM_LAYOUT_ELEMENTS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PixelData",
)
"""The data elements the layout rules read, by keyword; besides them, the file meta's
TransferSyntaxUID."""
DICOM_UNREADABLE = "The DICOM file is malformed."
"""What either side says of a file whose header its reader cannot parse."""


@dataclass(frozen=True)
class DicomLayout:
    """How a DICOM file's pixels are laid out, once the rules have passed them."""

    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    transfer_syntax: str


class DicomLayoutError(ValueError):
    """A header the service does not read; `kind` is the problem it is answered with: 415 for an
    encoding, colour model or bit depth, 413 for too many pixels, 400 for a malformed header, 422
    for request options that do not fit the file."""

    def __init__(self, kind: ProblemKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def is_dicom(data: bytes) -> bool:
    """A DICOM file (PS3.10): a 128-byte preamble, then `DICM`."""
    return data[DICOM_PREAMBLE_BYTES : DICOM_PREAMBLE_BYTES + 4] == DICOM_MAGIC


def check_dicom_layout(
    elements: Mapping[str, object], max_pixels: int, *, transfer_syntax_name: str | None
) -> DicomLayout:
    """The layout of a header whose pixels the service reads, else a `DicomLayoutError`.

    `elements` holds the value of each of `DICOM_LAYOUT_ELEMENTS` and `TransferSyntaxUID` by
    keyword, None where the header lacks it; `transfer_syntax_name` is the standard's name of
    that transfer syntax, None where the standard defines none by that UID. Rows × Columns ×
    frames above `max_pixels` is refused before the pixel data's length is looked at.
    """
    syntax = _transfer_syntax(elements["TransferSyntaxUID"], transfer_syntax_name)
    photometric = _photometric(elements["PhotometricInterpretation"])
    if photometric in JPEG_2000_COLOUR and syntax not in JPEG_2000_SYNTAXES:
        # Only a JPEG 2000 decoder undoes these transforms; elsewhere the standard forbids them.
        raise _unsupported(f"DICOM {photometric} is supported in JPEG 2000 files only.")
    bits = _number(elements, "BitsAllocated")
    if bits not in DICOM_BITS_ALLOCATED:
        raise _unsupported(f"DICOM pixels of {bits} bits are not supported; send 8 or 16.")
    layout = DicomLayout(
        rows=_number(elements, "Rows"),
        columns=_number(elements, "Columns"),
        frames=_number(elements, "NumberOfFrames", default=1),
        samples_per_pixel=_number(elements, "SamplesPerPixel"),
        bits_allocated=bits,
        bits_stored=_number(elements, "BitsStored"),
        pixel_representation=_number(elements, "PixelRepresentation"),
        photometric=photometric,
        transfer_syntax=syntax,
    )
    expected_samples = 1 if photometric in ONE_SAMPLE else 3
    if min(layout.rows, layout.columns, layout.frames) < 1 or (
        layout.samples_per_pixel != expected_samples
    ):
        raise _malformed("The DICOM image's dimensions or samples per pixel are invalid.")
    if not 1 <= layout.bits_stored <= bits or layout.pixel_representation not in (0, 1):
        raise _malformed("The DICOM image's Bits Stored or Pixel Representation is invalid.")
    if layout.rows * layout.columns * layout.frames > max_pixels:
        raise DicomLayoutError(
            problems.TOO_LARGE,
            f"The DICOM image is {layout.columns}×{layout.rows} with {layout.frames} frame(s); "
            f"at most {max_pixels} pixels are accepted.",
        )
    _check_pixel_data(elements["PixelData"], layout)
    return layout


def check_dicom_options(options: DicomOptions, layout: DicomLayout) -> None:
    """The request's `dicom` options must fit the file: an existing frame, and a window only on a
    monochrome image; else a `DicomLayoutError` of kind 422."""
    if options.frame >= layout.frames:
        raise DicomLayoutError(
            problems.INVALID_REQUEST,
            f"dicom.frame {options.frame} is out of range: the file has {layout.frames} "
            f"frame(s) (0–{layout.frames - 1}).",
        )
    if options.window is not None and layout.photometric not in DICOM_MONOCHROME:
        raise DicomLayoutError(
            problems.INVALID_REQUEST,
            f"dicom.window applies to MONOCHROME images, not to {layout.photometric} ones.",
        )


def _transfer_syntax(syntax: object, name: str | None) -> str:
    if not isinstance(syntax, str) or not syntax:
        raise _malformed("The DICOM file names no TransferSyntaxUID.")
    if syntax not in DICOM_TRANSFER_SYNTAXES:
        # Only a standard name is quoted: a malformed file can put any bytes in the UID's place.
        raise _unsupported(
            f"DICOM transfer syntax {name or '(unrecognised)'} is not supported; send "
            f"{', '.join(DICOM_TRANSFER_SYNTAXES.values())}."
        )
    return syntax


def _photometric(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _malformed("The DICOM file has no PhotometricInterpretation.")
    photometric = value.strip().upper()
    if photometric not in DICOM_PHOTOMETRIC_INTERPRETATIONS:
        named = photometric if photometric in DICOM_PHOTOMETRIC_TERMS else "(unrecognised)"
        raise _unsupported(
            f"DICOM photometric interpretation {named} is not supported; "
            f"send {', '.join(DICOM_PHOTOMETRIC_INTERPRETATIONS)}."
        )
    return photometric


def _number(elements: Mapping[str, object], keyword: str, default: int | None = None) -> int:
    value = elements[keyword]
    if value is None or value == "":
        if default is None:
            raise _malformed(f"The DICOM file has no {keyword}.")
        return default
    if not isinstance(value, int | str):
        raise _malformed(f"The DICOM file's {keyword} is not one number.")
    try:
        return int(value)
    except ValueError as exc:
        raise _malformed(f"The DICOM file's {keyword} is not a number.") from exc


def _check_pixel_data(pixel_data: object, layout: DicomLayout) -> None:
    if not isinstance(pixel_data, bytes) or not pixel_data:
        raise _malformed("The DICOM file has no PixelData.")
    # Compressed frames: only decoding them can tell whether one is short.
    if layout.transfer_syntax in DICOM_ENCAPSULATED_SYNTAXES:
        return
    # Native YBR_FULL_422 holds two luminance samples and one pair of chroma per two pixels.
    samples = 2 if layout.photometric == "YBR_FULL_422" else layout.samples_per_pixel
    frame_bytes = layout.rows * layout.columns * samples * layout.bits_allocated
    if len(pixel_data) < layout.frames * frame_bytes // 8:
        raise _malformed("The DICOM file's pixel data is shorter than its header says.")


def _malformed(detail: str) -> DicomLayoutError:
    return DicomLayoutError(problems.BAD_IMAGE, detail)


def _unsupported(detail: str) -> DicomLayoutError:
    return DicomLayoutError(problems.UNSUPPORTED_MEDIA, detail)
