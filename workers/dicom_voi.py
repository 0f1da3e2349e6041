"""DICOM's VOI transformations (PS3.3 C.11.2) onto [0, 1]: the three VOI LUT Functions of a
window, and a VOI LUT Sequence's lookup table."""

from typing import get_args

import numpy as np
from pydicom.dataset import Dataset

from schemas.dicom import DicomWindow, VoiFunction
from workers.decoded import ImageDecodeError

VOI_FUNCTIONS: tuple[str, ...] = get_args(VoiFunction)
_LUT_ENTRIES_WHEN_ZERO = 65536


def apply_window(values: np.ndarray, window: DicomWindow) -> np.ndarray:
    """The window's VOI LUT Function on `values`, in float64, onto [0, 1]."""
    center, width = window.center, window.width
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if window.function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    scaled = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(scaled, 0.0, 1.0)


def full_range_window(values: np.ndarray) -> DicomWindow:
    """The linear window that maps the lowest value to 0 and the highest to 1."""
    low, high = float(values.min()), float(values.max())
    return DicomWindow(center=low + 0.5 + (high - low) / 2, width=high - low + 1)


def file_voi_function(dataset: Dataset) -> VoiFunction:
    """The file's VOI LUT Function; LINEAR, the standard's default, when it names none or one
    the standard does not define."""
    value = dataset.get("VOILUTFunction")
    named = value.strip().upper() if isinstance(value, str) else ""
    return named if named in VOI_FUNCTIONS else "LINEAR"  # type: ignore[return-value]


def voi_lut(dataset: Dataset) -> tuple[np.ndarray, int, int] | None:
    """The file's first VOI LUT: its entries, the value mapped to the first entry, and the
    entries' bit depth; None when the file has none."""
    sequence = dataset.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    try:
        entries, first, bits = (int(number) for number in item.LUTDescriptor)
        data = item.LUTData
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ImageDecodeError("the DICOM file's VOI LUT is malformed") from exc
    if isinstance(data, bytes):
        order = "<" if dataset.original_encoding[1] is not False else ">"
        table = np.frombuffer(data, dtype=np.dtype(f"{order}u2"))
    else:
        table = np.asarray(data if isinstance(data, list | tuple) else [data], dtype=np.int64)
    entries = entries or _LUT_ENTRIES_WHEN_ZERO
    if not 8 <= bits <= 16 or table.size < entries:
        raise ImageDecodeError("the DICOM file's VOI LUT is malformed")
    return table[:entries].astype(np.float64), first, bits


def apply_lut(values: np.ndarray, lut: tuple[np.ndarray, int, int]) -> np.ndarray:
    """A VOI LUT on `values` (rounded to the nearest integer), onto [0, 1]: values below the
    first mapped one take the first entry, values past the last the last entry."""
    table, first, bits = lut
    index = np.clip(np.rint(values) - first, 0, table.size - 1).astype(np.int64)
    return np.clip(table[index] / (2**bits - 1), 0.0, 1.0)
