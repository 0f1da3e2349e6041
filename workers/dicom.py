"""DICOM bytes to the picture that is explained: one frame, rescaled, windowed, upright grey.

Only the elements that describe the pixels are parsed; patient and study elements are skipped
unread, so none of them can reach a result, an error or a log.
"""

from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import UID

from schemas.dicom import (
    DICOM_DECODING_ELEMENTS,
    DICOM_ENCAPSULATED_SYNTAXES,
    DICOM_MONOCHROME,
    AppliedDicom,
    DicomOptions,
    DicomWindow,
)
from schemas.dicom_layout import (
    DICOM_LAYOUT_ELEMENTS,
    DICOM_UNREADABLE,
    DicomLayout,
    DicomLayoutError,
    check_dicom_layout,
    check_dicom_options,
)
from schemas.dicom_read import read_dicom
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
from workers.dicom_codecs import decoding_plugin
from workers.dicom_frames import check_frame_size
from workers.dicom_voi import (
    apply_lut,
    apply_window,
    file_voi_function,
    full_range_window,
    voi_lut,
)

__all__ = ["apply_window", "decode_dicom", "full_range_window"]

# The worker's error for each kind of problem the layout rules name.
_REFUSALS: dict[ProblemKind, type[ImageError]] = {
    refusal.kind: refusal
    for refusal in (ImageDecodeError, UnsupportedImageError, ImageTooLargeError, DicomOptionError)
}


def decode_dicom(
    data: bytes, options: DicomOptions, max_pixels: int, frames: Sequence[int] | None = None
) -> DecodedImage:
    """Decode one frame of a DICOM file in any of `DICOM_TRANSFER_SYNTAXES` (8 or 16 bits,
    signed or unsigned), monochrome or colour.

    Monochrome values are rescaled (slope, intercept) and mapped to [0, 1]: by the request's
    window, else the file's first VOI LUT, else its first Window Center/Width with its VOI LUT
    Function, else the full range of the frame's values; MONOCHROME1 is inverted so that high
    values show bright. Colour becomes RGB (YBR by the standard's equations, palette colour
    through the file's tables), scaled by its bit depth. `DecodedImage.dicom` holds the frame
    and the VOI transformation as applied.

    Raises `UnsupportedImageError` for other encodings, colour models and bit depths,
    `ImageTooLargeError` when Rows × Columns × frames exceeds `max_pixels` (from the header,
    before any pixel is decoded), `DicomOptionError` for a frame the file lacks or a window on a
    colour image, and `ImageDecodeError` for malformed files.

    With `frames` (for a model of N channels), those frames of a MONOCHROME file become the N
    channels of `pixels`, in order, rescaled and windowed alike (the full-range window spans
    them all); `display` shows the middle one, and `DecodedImage.dicom.frame` is the first.
    """
    dataset = _read_image_elements(data, max_pixels)
    layout = _checked_layout(dataset, options, max_pixels)
    if frames is not None:
        return _decode_frames(dataset, layout, options, frames)
    _check_compressed_frame(dataset, layout, options.frame)
    try:
        with pydicom.config.disable_value_validation():
            stored = pixel_array(
                dataset,
                index=options.frame,
                decoding_plugin=decoding_plugin(layout.transfer_syntax, layout.bits_stored),
            )
            if layout.photometric == "PALETTE COLOR":
                return _decoded(_palette_rgb(stored, dataset), AppliedDicom(frame=options.frame))
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed pixel data
        raise ImageDecodeError("the DICOM pixel data cannot be decoded") from exc
    if layout.photometric not in DICOM_MONOCHROME:
        full_scale = 2**layout.bits_stored - 1
        pixels = np.clip(stored.astype(np.float64) / full_scale, 0.0, 1.0)
        return _decoded(pixels, AppliedDicom(frame=options.frame))
    values = stored.astype(np.float64) * _decimal(dataset, "RescaleSlope", 1.0) + _decimal(
        dataset, "RescaleIntercept", 0.0
    )
    pixels, applied = _voi(values, dataset, options)
    if layout.photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return _decoded(pixels[:, :, None], applied)


def _check_compressed_frame(dataset: Dataset, layout: DicomLayout, index: int) -> None:
    """The frame's codestream must declare the header's size (`workers.dicom_frames`)."""
    if layout.transfer_syntax not in DICOM_ENCAPSULATED_SYNTAXES:
        return
    try:
        frame = get_frame(dataset.PixelData, index, number_of_frames=layout.frames)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed fragments
        raise ImageDecodeError("the DICOM pixel data cannot be decoded") from exc
    check_frame_size(frame, layout.transfer_syntax, layout.rows, layout.columns)


def _decode_frames(
    dataset: Dataset, layout: DicomLayout, options: DicomOptions, frames: Sequence[int]
) -> DecodedImage:
    """Frames of a MONOCHROME file as channels: float32 H×W×len(frames) in [0, 1]."""
    wanted = f"the model takes frames {', '.join(map(str, frames))} as its {len(frames)} channels"
    if layout.photometric not in DICOM_MONOCHROME:
        raise DicomOptionError(
            f"{wanted}, from a MONOCHROME image; this one is {layout.photometric}"
        )
    if max(frames) >= layout.frames:
        raise DicomOptionError(f"{wanted}; the file has {layout.frames} frame(s)")
    for frame in frames:
        _check_compressed_frame(dataset, layout, frame)
    plugin = decoding_plugin(layout.transfer_syntax, layout.bits_stored)
    try:
        with pydicom.config.disable_value_validation():
            stored = np.stack(
                [pixel_array(dataset, index=f, decoding_plugin=plugin) for f in frames], axis=-1
            )
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed pixel data
        raise ImageDecodeError("the DICOM pixel data cannot be decoded") from exc
    values = stored.astype(np.float64) * _decimal(dataset, "RescaleSlope", 1.0) + _decimal(
        dataset, "RescaleIntercept", 0.0
    )
    pixels, applied = _voi(values, dataset, options.model_copy(update={"frame": frames[0]}))
    if layout.photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    channels = np.ascontiguousarray(pixels, dtype=np.float32)
    middle = len(frames) // 2
    return DecodedImage(
        pixels=channels,
        display=display_of(channels[:, :, middle : middle + 1]),
        dicom=applied,
    )


def _voi(
    values: np.ndarray, dataset: Dataset, options: DicomOptions
) -> tuple[np.ndarray, AppliedDicom]:
    """The VOI transformation of the rescaled values, and what was applied."""
    if options.window is None and (lut := voi_lut(dataset)) is not None:
        return apply_lut(values, lut), AppliedDicom(frame=options.frame, voi_lut=True)
    window = options.window or _file_window(dataset) or full_range_window(values)
    return apply_window(values, window), AppliedDicom(frame=options.frame, window=window)


def _palette_rgb(indices: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Palette colour indices through the file's red, green and blue tables, onto [0, 1]."""
    rgb = apply_color_lut(indices, dataset)
    # The tables' entries have the bit depth their descriptors' third value gives (8 or 16).
    bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
    return np.clip(rgb.astype(np.float64) / (2**bits - 1), 0.0, 1.0)


def _read_image_elements(data: bytes, max_pixels: int) -> Dataset:
    try:
        # pydicom's validation warnings quote element values into the log; none is validated.
        with pydicom.config.disable_value_validation():
            dataset = read_dicom(data, DICOM_DECODING_ELEMENTS, max_pixels)
            for keyword in DICOM_DECODING_ELEMENTS:
                dataset.get(keyword)  # converts the raw value here, where errors are caught
    except DicomLayoutError as refused:
        raise _REFUSALS[refused.kind](refused.detail) from refused
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
    return DicomWindow(center=center, width=width, function=file_voi_function(dataset))


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


def _decoded(pixels: np.ndarray, applied: AppliedDicom) -> DecodedImage:
    grey_or_rgb = np.ascontiguousarray(pixels, dtype=np.float32)
    return DecodedImage(pixels=grey_or_rgb, display=display_of(grey_or_rgb), dicom=applied)
