"""A decoded image and the ways decoding refuses one, shared by every decoder."""

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydicom.dataset import Dataset

from schemas import problems
from schemas.dicom import DicomOptions
from schemas.problems import ProblemKind


class ImageError(ValueError):
    """An image the worker does not decode; `kind` is the problem its job fails with."""

    kind: ClassVar[ProblemKind] = problems.BAD_IMAGE


class ImageDecodeError(ImageError):
    """The bytes claim a supported format but cannot be decoded."""


class UnsupportedImageError(ImageError):
    """The bytes are not in a format or encoding this worker decodes."""

    kind = problems.UNSUPPORTED_MEDIA


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed; refused before its pixels are decoded."""

    kind = problems.TOO_LARGE


class DicomOptionError(ImageError):
    """The request's DICOM options do not fit the file: a frame it lacks, a window on colour."""

    kind = problems.INVALID_REQUEST


@dataclass(frozen=True)
class DecodedImage:
    """An image at its original resolution, transparency composited on black.

    `pixels` is float32 H×W×C in [0, 1] with C = 1 for grey images and 3 for colour ones, at the
    original resolution or, when the decoder was given the model's size, reduced by a whole
    factor towards it; `display` is the uint8 H×W×3 RGB picture overlays are drawn on, always at
    the original resolution; `dicom` is, for a DICOM image, the frame and window that made it;
    `source` is, when the job asked for derived DICOM objects, the file's header (pixel data
    left out), held in memory for them alone.
    """

    pixels: np.ndarray
    display: np.ndarray
    dicom: DicomOptions | None = None
    source: Dataset | None = field(default=None, repr=False)


def display_of(pixels: np.ndarray) -> np.ndarray:
    """The uint8 H×W×3 RGB picture of float H×W×C pixels in [0, 1]."""
    display = np.rint(pixels * 255).astype(np.uint8)
    if display.shape[2] == 1:
        display = np.repeat(display, 3, axis=2)
    return display
