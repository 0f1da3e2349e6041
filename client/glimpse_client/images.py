"""What `explain` accepts as an image, turned into the file bytes the service decodes."""

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image

ImageInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray
)
"""A file path, the bytes of a PNG, JPEG or DICOM file, a PIL image, or a numpy array."""


@dataclass(frozen=True)
class DicomwebInstance:
    """A DICOM instance on a DICOMweb server the service is configured with (`dicomweb`, the
    server's name there), to explain in place of an image: the service fetches it by WADO-RS,
    and the image never passes through the caller. `frame` counts from 0."""

    dicomweb: str
    study: str
    series: str
    instance: str
    frame: int = 0


ExplainInput: TypeAlias = ImageInput | DicomwebInstance
"""What `explain` and `submit` take: an image, or an instance on a DICOMweb server."""

_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def image_bytes(image: ImageInput) -> bytes:
    """The bytes to send for `image`: a file's own bytes, or a lossless PNG of pixels.

    A numpy array is `H×W` (grey), `H×W×1`, `H×W×3` (RGB) or `H×W×4` (RGBA); uint8 and uint16
    are sent as they are, bool as 0/255, floats must lie in [0, 1] and are scaled to 8 bits.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if isinstance(image, Image.Image):
        return _png(image if image.mode in _PNG_MODES else image.convert("RGBA"))
    if isinstance(image, np.ndarray):
        return _png(_array_image(image))
    raise TypeError(
        f"an image is a path, bytes, a PIL image or a numpy array, not {type(image).__name__}"
    )


def _array_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"an image array is H×W, H×W×1, H×W×3 or H×W×4, not {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError("a float image array must hold finite values in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError("16-bit image arrays must be grey (H×W); PNG keeps no 16-bit RGB here")
        return Image.fromarray(np.ascontiguousarray(array, dtype="<u2"))
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays are uint8, uint16, bool or floats, not {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
