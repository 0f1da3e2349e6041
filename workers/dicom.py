"""DICOM bytes to the picture that is explained: one frame, rescaled, windowed, upright grey.

Only the elements that describe the pixels are parsed; patient and study elements are skipped
unread, so none of them can reach a result, an error or a log.
"""

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array

from schemas.dicom import (
    DICOM_BITS_ALLOCATED,
    DICOM_DECODING_ELEMENTS,
    DICOM_PHOTOMETRIC_INTERPRETATIONS,
    DICOM_PHOTOMETRIC_TERMS,
    DICOM_TRANSFER_SYNTAXES,
    DicomOptions,
    DicomWindow,
)
from workers.images import (
    DecodedImage,
    DicomOptionError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    display_of,
)


def decode_dicom(data: bytes, options: DicomOptions, max_pixels: int) -> DecodedImage:
    """Decode one frame of a MONOCHROME1, MONOCHROME2 or RGB DICOM file (8 or 16 bits, signed
    or unsigned) in an uncompressed or RLE transfer syntax.

    Monochrome values are rescaled (slope, intercept) and windowed: with the request's window,
    else the file's first Window Center/Width, else the full range of the frame's values;
    MONOCHROME1 is inverted so that high values show bright. RGB values are scaled by their
    bit depth. `DecodedImage.dicom` holds the frame and the window as applied.

    Raises `UnsupportedImageError` for other encodings, colour models and bit depths,
    `ImageTooLargeError` when Rows × Columns × frames exceeds `max_pixels` (from the header,
    before any pixel is decoded), `DicomOptionError` for a frame the file lacks or a window on an
    RGB image, and `ImageDecodeError` for malformed files.
    """
    dataset = _read_image_elements(data)
    photometric = _check_layout(dataset, max_pixels)
    frames = _number(dataset, "NumberOfFrames", default=1)
    if options.frame >= frames:
        raise DicomOptionError(
            f"dicom.frame {options.frame} is out of range: the file has {frames} frame(s)"
        )
    if options.window is not None and photometric == "RGB":
        raise DicomOptionError("dicom.window applies to MONOCHROME images, not to RGB ones")
    try:
        with pydicom.config.disable_value_validation():
            stored = pixel_array(dataset, index=options.frame)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed pixel data
        raise ImageDecodeError("the DICOM pixel data cannot be decoded") from exc
    if photometric == "RGB":
        full_scale = 2 ** _number(dataset, "BitsStored") - 1
        pixels = np.clip(stored.astype(np.float64) / full_scale, 0.0, 1.0)
        return _decoded(pixels, DicomOptions(frame=options.frame))
    values = stored.astype(np.float64) * _decimal(dataset, "RescaleSlope", 1.0) + _decimal(
        dataset, "RescaleIntercept", 0.0
    )
    window = options.window or _file_window(dataset) or full_range_window(values)
    pixels = apply_window(values, window)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return _decoded(pixels[:, :, None], DicomOptions(frame=options.frame, window=window))


def apply_window(values: np.ndarray, window: DicomWindow) -> np.ndarray:
    """DICOM's linear VOI function (PS3.3 C.11.2.1.2.1) onto [0, 1]."""
    if window.width == 1:
        return (values > window.center - 0.5).astype(np.float64)
    scaled = (values - (window.center - 0.5)) / (window.width - 1) + 0.5
    return np.clip(scaled, 0.0, 1.0)


def full_range_window(values: np.ndarray) -> DicomWindow:
    """The window that maps the lowest value to 0 and the highest to 1."""
    low, high = float(values.min()), float(values.max())
    return DicomWindow(center=low + 0.5 + (high - low) / 2, width=high - low + 1)


def _read_image_elements(data: bytes) -> Dataset:
    try:
        # pydicom's validation warnings quote element values into the log; none is validated.
        with pydicom.config.disable_value_validation():
            dataset = pydicom.dcmread(io.BytesIO(data), specific_tags=list(DICOM_DECODING_ELEMENTS))
            for keyword in DICOM_DECODING_ELEMENTS:
                dataset.get(keyword)  # converts the raw value here, where errors are caught
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed files
        raise ImageDecodeError("the DICOM file is malformed") from exc
    return dataset


def _check_layout(dataset: Dataset, max_pixels: int) -> str:
    """What the pixel decoder relies on; returns the photometric interpretation."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if not syntax:
        raise ImageDecodeError("the DICOM file has no TransferSyntaxUID")
    if syntax not in DICOM_TRANSFER_SYNTAXES:
        # pydicom's UID names the standard ones; a malformed file can put any bytes in its place.
        standard = getattr(syntax, "is_transfer_syntax", False)
        name = getattr(syntax, "name", "") if standard else "(unrecognised)"
        raise UnsupportedImageError(
            f"DICOM transfer syntax {name} is not supported; "
            f"expected {', '.join(DICOM_TRANSFER_SYNTAXES.values())}"
        )
    photometric = str(dataset.get("PhotometricInterpretation") or "").strip().upper()
    if not photometric:
        raise ImageDecodeError("the DICOM file has no PhotometricInterpretation")
    if photometric not in DICOM_PHOTOMETRIC_INTERPRETATIONS:
        named = photometric if photometric in DICOM_PHOTOMETRIC_TERMS else "(unrecognised)"
        raise UnsupportedImageError(
            f"DICOM photometric interpretation {named} is not supported; expected "
            f"{', '.join(DICOM_PHOTOMETRIC_INTERPRETATIONS)}"
        )
    bits = _number(dataset, "BitsAllocated")
    if bits not in DICOM_BITS_ALLOCATED:
        raise UnsupportedImageError(f"DICOM pixels of {bits} bits are not supported")
    if _number(dataset, "SamplesPerPixel") != (3 if photometric == "RGB" else 1):
        raise ImageDecodeError(f"a {photometric} DICOM image has the wrong samples per pixel")
    rows, columns = _number(dataset, "Rows"), _number(dataset, "Columns")
    frames = _number(dataset, "NumberOfFrames", default=1)
    if rows * columns * frames > max_pixels:
        raise ImageTooLargeError(
            f"the DICOM image is {columns}×{rows} with {frames} frame(s); "
            f"at most {max_pixels} pixels are accepted"
        )
    return photometric


def _file_window(dataset: Dataset) -> DicomWindow | None:
    """The file's first window, if it has a usable one."""
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if center is None or width is None or not np.isfinite([center, width]).all() or width < 1:
        return None
    return DicomWindow(center=center, width=width)


def _first(value: object) -> float | None:
    """A number, or the first of several; None when there is none."""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    try:
        return float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        return None


def _decimal(dataset: Dataset, keyword: str, default: float) -> float:
    value = dataset.get(keyword)
    if value is None or value == "":
        return default
    number = _first(value)
    if number is None or not np.isfinite(number):
        raise ImageDecodeError(f"the DICOM file's {keyword} is not a number")
    return number


def _number(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    value = dataset.get(keyword)
    if value is None or value == "":
        if default is None:
            raise ImageDecodeError(f"the DICOM file has no {keyword}")
        return default
    if not isinstance(value, int | str):
        raise ImageDecodeError(f"the DICOM file's {keyword} is not one number")
    try:
        number = int(value)
    except ValueError as exc:
        raise ImageDecodeError(f"the DICOM file's {keyword} is not a number") from exc
    if number < 1:
        raise ImageDecodeError(f"the DICOM file's {keyword} is {number}")
    return number


def _decoded(pixels: np.ndarray, applied: DicomOptions) -> DecodedImage:
    grey_or_rgb = np.ascontiguousarray(pixels, dtype=np.float32)
    return DecodedImage(pixels=grey_or_rgb, display=display_of(grey_or_rgb), dicom=applied)
