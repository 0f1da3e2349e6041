"""Checks a DICOM upload's header at the door (encoding, image layout, frames and size), and
rewrites it with only the elements decoding needs before it is stored.

Only the elements that describe the pixels are parsed; patient and study elements are skipped
unread, and no error names a header value other than the image's own layout.
"""

import io
from dataclasses import dataclass

from schemas.dicom import (
    DICOM_BITS_ALLOCATED,
    DICOM_DECODING_ELEMENTS,
    DICOM_PHOTOMETRIC_INTERPRETATIONS,
    DICOM_PHOTOMETRIC_TERMS,
    DICOM_TRANSFER_SYNTAXES,
    DicomOptions,
)
from service.errors import BadImage, InvalidRequest, PayloadTooLarge, UnsupportedMedia

DICOM_PREAMBLE_BYTES = 128
DICOM_MAGIC = b"DICM"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
_IMAGE_ELEMENTS = (
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


@dataclass(frozen=True)
class DicomHeader:
    rows: int
    columns: int
    frames: int
    photometric: str


def is_dicom(data: bytes) -> bool:
    """A DICOM file (PS3.10): a 128-byte preamble, then `DICM`."""
    return data[DICOM_PREAMBLE_BYTES : DICOM_PREAMBLE_BYTES + 4] == DICOM_MAGIC


def inspect_dicom(data: bytes, max_pixels: int) -> DicomHeader:
    """The image layout of a DICOM file, refused when the service cannot read its pixels:
    UnsupportedMedia for an encoding, colour model or bit depth it does not read, PayloadTooLarge
    when Rows × Columns × frames exceeds `max_pixels` (decided before any pixel is decoded),
    BadImage when the file is malformed or its pixel data is short."""
    elements = _read_image_elements(data)
    syntax = _transfer_syntax(elements)
    photometric = _text(elements, "PhotometricInterpretation")
    if photometric not in DICOM_PHOTOMETRIC_INTERPRETATIONS:
        named = photometric if photometric in DICOM_PHOTOMETRIC_TERMS else "(unrecognised)"
        raise UnsupportedMedia(
            f"DICOM photometric interpretation {named} is not supported; "
            f"send {', '.join(DICOM_PHOTOMETRIC_INTERPRETATIONS)}."
        )
    bits = _number(elements, "BitsAllocated")
    if bits not in DICOM_BITS_ALLOCATED:
        raise UnsupportedMedia(f"DICOM pixels of {bits} bits are not supported; send 8 or 16.")
    rows, columns = _number(elements, "Rows"), _number(elements, "Columns")
    frames = _number(elements, "NumberOfFrames", default=1)
    samples = _number(elements, "SamplesPerPixel")
    stored = _number(elements, "BitsStored")
    if min(rows, columns, frames) < 1 or samples != (3 if photometric == "RGB" else 1):
        raise BadImage("The DICOM image's dimensions or samples per pixel are invalid.")
    if not 1 <= stored <= bits or _number(elements, "PixelRepresentation") not in (0, 1):
        raise BadImage("The DICOM image's Bits Stored or Pixel Representation is invalid.")
    if rows * columns * frames > max_pixels:
        raise PayloadTooLarge(
            f"The DICOM image is {columns}×{rows} with {frames} frame(s); "
            f"at most {max_pixels} pixels are accepted."
        )
    pixel_data = elements["PixelData"]
    if not isinstance(pixel_data, bytes) or not pixel_data:
        raise BadImage("The DICOM file has no PixelData.")
    expected = rows * columns * frames * samples * bits // 8
    if syntax != RLE_LOSSLESS and len(pixel_data) < expected:
        raise BadImage("The DICOM file's pixel data is shorter than its header says.")
    return DicomHeader(rows=rows, columns=columns, frames=frames, photometric=photometric)


def minimal_dicom(data: bytes) -> bytes:
    """The file rewritten with only `DICOM_DECODING_ELEMENTS` and, in its file meta, the transfer
    syntax: what the worker decodes the same way, without a patient, study or equipment element.
    Pixel data is copied as it is (encapsulated frames stay encapsulated). BadImage for a file
    whose kept elements cannot be read back."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    kept = Dataset()
    kept.file_meta = FileMetaDataset()
    kept.preamble = bytes(DICOM_PREAMBLE_BYTES)
    try:
        with pydicom.config.disable_value_validation():
            source = pydicom.dcmread(io.BytesIO(data), specific_tags=list(DICOM_DECODING_ELEMENTS))
            for keyword in DICOM_DECODING_ELEMENTS:
                if keyword in source:
                    # Unconverted: the value's bytes are copied, never parsed.
                    kept[keyword] = source.get_item(keyword)
            kept.file_meta.TransferSyntaxUID = source.file_meta.TransferSyntaxUID
            out = io.BytesIO()
            pydicom.dcmwrite(out, kept, enforce_file_format=False)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed files
        raise BadImage("The DICOM file is malformed.") from exc
    return out.getvalue()


def check_dicom_options(options: DicomOptions | None, header: DicomHeader | None) -> None:
    """The request's `dicom` options must fit the file: a DICOM image, an existing frame, and a
    window only on a monochrome image."""
    if options is None:
        return
    if header is None:
        raise InvalidRequest("`dicom` options apply only to DICOM images.")
    if options.frame >= header.frames:
        raise InvalidRequest(
            f"dicom.frame {options.frame} is out of range: the file has {header.frames} "
            f"frame(s) (0–{header.frames - 1})."
        )
    if options.window is not None and header.photometric == "RGB":
        raise InvalidRequest("dicom.window applies to MONOCHROME images, not to RGB ones.")


def _read_image_elements(data: bytes) -> dict[str, object]:
    """The transfer syntax and the image elements' values, parsed; every other element skipped."""
    # pydicom and numpy under it add a third of a second to start-up; only DICOM uploads need it.
    import pydicom

    try:
        # pydicom's validation warnings quote element values into the log; none is validated.
        with pydicom.config.disable_value_validation():
            dataset = pydicom.dcmread(io.BytesIO(data), specific_tags=list(_IMAGE_ELEMENTS))
            elements = {keyword: dataset.get(keyword) for keyword in _IMAGE_ELEMENTS}
            elements["TransferSyntaxUID"] = dataset.file_meta.get("TransferSyntaxUID")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed files
        raise BadImage("The DICOM file is malformed.") from exc
    return elements


def _transfer_syntax(elements: dict[str, object]) -> str:
    syntax = elements["TransferSyntaxUID"]
    if not isinstance(syntax, str) or not syntax:
        raise BadImage("The DICOM file names no TransferSyntaxUID.")
    if syntax not in DICOM_TRANSFER_SYNTAXES:
        # pydicom's UID names the standard ones; a malformed file can put any bytes in its place.
        standard = getattr(syntax, "is_transfer_syntax", False)
        name = getattr(syntax, "name", "") if standard else "(unrecognised)"
        raise UnsupportedMedia(
            f"DICOM transfer syntax {name} is not supported; send "
            f"{', '.join(DICOM_TRANSFER_SYNTAXES.values())}."
        )
    return syntax


def _number(elements: dict[str, object], keyword: str, default: int | None = None) -> int:
    value = elements[keyword]
    if value is None or value == "":
        if default is None:
            raise BadImage(f"The DICOM file has no {keyword}.")
        return default
    if not isinstance(value, int | str):
        raise BadImage(f"The DICOM file's {keyword} is not one number.")
    try:
        return int(value)
    except ValueError as exc:
        raise BadImage(f"The DICOM file's {keyword} is not a number.") from exc


def _text(elements: dict[str, object], keyword: str) -> str:
    value = elements[keyword]
    if not isinstance(value, str) or not value.strip():
        raise BadImage(f"The DICOM file has no {keyword}.")
    return value.strip().upper()
