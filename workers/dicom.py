"""DICOM bytes to the picture that is explained: one frame, rescaled, windowed, upright grey.

Only the elements that describe the pixels are parsed; patient and study elements are skipped
unread, so none of them can reach a result, an error or a log.
"""

import io
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array
from pydicom.uid import UID

from schemas.dicom import DICOM_DECODING_ELEMENTS, DicomOptions, DicomWindow
from schemas.dicom_layout import (
    DICOM_LAYOUT_ELEMENTS,
    DICOM_UNREADABLE,
    DicomLayout,
    DicomLayoutError,
    check_dicom_layout,
    check_dicom_options,
)
from schemas.problems import ProblemKind
from workers.decoded import (
    DecodedImage,
    DicomOptionError,
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    display_of,
)

# The worker's error for each kind of problem the layout rules name.
_REFUSALS: dict[ProblemKind, type[ImageError]] = {
    refusal.kind: refusal
    for refusal in (ImageDecodeError, UnsupportedImageError, ImageTooLargeError, DicomOptionError)
}


def decode_dicom(
    data: bytes, options: DicomOptions, max_pixels: int, frames: Sequence[int] | None = None
) -> DecodedImage:
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

    With `frames` (for a model of N channels), those frames of a MONOCHROME file become the N
    channels of `pixels`, in order, rescaled and windowed alike (the full-range window spans
    them all); `display` shows the middle one, and `DecodedImage.dicom.frame` is the first.
    """
    dataset = _read_image_elements(data)
    layout = _checked_layout(dataset, options, max_pixels)
    if frames is not None:
        return _decode_frames(dataset, layout, options, frames)
    try:
        with pydicom.config.disable_value_validation():
            stored = pixel_array(dataset, index=options.frame)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed pixel data
        raise ImageDecodeError("the DICOM pixel data cannot be decoded") from exc
    if layout.photometric == "RGB":
        full_scale = 2**layout.bits_stored - 1
        pixels = np.clip(stored.astype(np.float64) / full_scale, 0.0, 1.0)
        return _decoded(pixels, DicomOptions(frame=options.frame))
    values = stored.astype(np.float64) * _decimal(dataset, "RescaleSlope", 1.0) + _decimal(
        dataset, "RescaleIntercept", 0.0
    )
    window = options.window or _file_window(dataset) or full_range_window(values)
    pixels = apply_window(values, window)
    if layout.photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return _decoded(pixels[:, :, None], DicomOptions(frame=options.frame, window=window))


def _decode_frames(
    dataset: Dataset, layout: DicomLayout, options: DicomOptions, frames: Sequence[int]
) -> DecodedImage:
    """Frames of a MONOCHROME file as channels: float32 H×W×len(frames) in [0, 1]."""
    wanted = f"the model takes frames {', '.join(map(str, frames))} as its {len(frames)} channels"
    if layout.photometric == "RGB":
        raise DicomOptionError(f"{wanted}, from a MONOCHROME image; this one is RGB")
    if max(frames) >= layout.frames:
        raise DicomOptionError(f"{wanted}; the file has {layout.frames} frame(s)")
    try:
        with pydicom.config.disable_value_validation():
            stored = np.stack([pixel_array(dataset, index=frame) for frame in frames], axis=-1)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed pixel data
        raise ImageDecodeError("the DICOM pixel data cannot be decoded") from exc
    values = stored.astype(np.float64) * _decimal(dataset, "RescaleSlope", 1.0) + _decimal(
        dataset, "RescaleIntercept", 0.0
    )
    window = options.window or _file_window(dataset) or full_range_window(values)
    pixels = apply_window(values, window)
    if layout.photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    channels = np.ascontiguousarray(pixels, dtype=np.float32)
    middle = len(frames) // 2
    return DecodedImage(
        pixels=channels,
        display=display_of(channels[:, :, middle : middle + 1]),
        dicom=DicomOptions(frame=frames[0], window=window),
    )


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
        raise ImageDecodeError(DICOM_UNREADABLE) from exc
    return dataset


def _checked_layout(dataset: Dataset, options: DicomOptions, max_pixels: int) -> DicomLayout:
    """The layout rules the gateway applied before queueing, applied again to what was stored."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    elements = {keyword: dataset.get(keyword) for keyword in DICOM_LAYOUT_ELEMENTS}
    elements["TransferSyntaxUID"] = syntax
    # pydicom knows the standard's names; an unknown or private UID has none to quote.
    name = syntax.name if isinstance(syntax, UID) and syntax.is_transfer_syntax else None
    try:
        layout = check_dicom_layout(elements, max_pixels, transfer_syntax_name=name)
        check_dicom_options(options, layout)
    except DicomLayoutError as refused:
        raise _REFUSALS[refused.kind](refused.detail) from refused
    return layout


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


def _decoded(pixels: np.ndarray, applied: DicomOptions) -> DecodedImage:
    grey_or_rgb = np.ascontiguousarray(pixels, dtype=np.float32)
    return DecodedImage(pixels=grey_or_rgb, display=display_of(grey_or_rgb), dicom=applied)
