"""Checks an uploaded image at the door: format, integrity and size, before it is queued."""

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from schemas.dicom_layout import DicomLayout, is_dicom
from service.dicom import inspect_dicom
from service.errors import BadImage, PayloadTooLarge, UnsupportedMedia

_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
}


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    dicom: DicomLayout | None = None


def decode_base64_image(text: str) -> bytes:
    """The bytes of a base64 (or data-URL) image; BadImage when it is not base64."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImage("`image` is not valid base64.") from exc


def sniff_format(data: bytes) -> str:
    """`png`, `jpeg` or `dicom` by magic bytes; UnsupportedMedia for anything else."""
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return name
    if is_dicom(data):
        return "dicom"
    raise UnsupportedMedia("The image is neither PNG, JPEG nor DICOM.")


def inspect_image(data: bytes, max_pixels: int) -> ImageHeader:
    """Check format, dimensions and integrity without keeping decoded pixels."""
    fmt = sniff_format(data)
    if fmt == "dicom":
        dicom = inspect_dicom(data, max_pixels)
        return ImageHeader(format=fmt, width=dicom.columns, height=dicom.rows, dicom=dicom)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise BadImage("The image has no pixels.")
                if width * height > max_pixels:
                    raise PayloadTooLarge(
                        f"The image is {width}×{height}; at most {max_pixels} pixels are accepted."
                    )
                # A palette is a whole number of RGB triplets (PNG spec, PLTE chunk).
                if image.palette is not None and len(image.palette.palette) % 3:
                    raise BadImage("The image's palette is malformed.")
                image.verify()
    except (BadImage, PayloadTooLarge):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge("The image decompresses to too many pixels.") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt files
        raise BadImage(f"The {fmt.upper()} image is corrupt or truncated.") from exc
    return ImageHeader(format=fmt, width=width, height=height)
