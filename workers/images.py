"""Uploaded image bytes to the pixels a model reads and the RGB picture an overlay is drawn on."""

import io
import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from schemas.dicom import DicomOptions
from schemas.dicom_layout import is_dicom
from schemas.models import InputSpec
from schemas.settings import DEFAULT_MAX_IMAGE_PIXELS
from workers.channels import ChannelCountError, channel_frames, expected_input
from workers.decoded import (
    DecodedImage,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from workers.dicom import decode_dicom

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# PNG colour types 0 and 4 are grey and grey + alpha; the IHDR colour type byte sits at offset 25.
_PNG_COLOUR_TYPE_OFFSET = 25
_PNG_GREY_COLOUR_TYPES = (0, 4)
_SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16B", "I;16L")
# Modes Pillow opens PNG and JPEG files in, and the mode each is read through.
_READ_AS = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "I;16": "I;16",
    "I;16B": "I;16B",
    "I;16L": "I;16L",
    "P": "RGBA",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}
# Modes `Image.reduce` box-averages (not 16-bit grey); palette, CMYK and YCbCr images are read
# through one of them.
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA")
# What Pillow raises on malformed PNG and JPEG data (its UnidentifiedImageError is an OSError).
_PILLOW_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
# ITU-R BT.601 luma weights for R, G, B.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    dicom: DicomOptions | None = None,
    *,
    reduce_to: tuple[int, int] | None = None,
    model_input: InputSpec | None = None,
) -> DecodedImage:
    """Decode PNG or JPEG bytes (8 or 16 bit; grey, grey + alpha, RGB, RGBA or palette), or
    DICOM bytes as `workers.dicom.decode_dicom` does with the options `dicom`.

    EXIF orientation is applied, so the image is upright as a browser shows it. Raises
    `UnsupportedImageError` for other formats, `ImageTooLargeError` past `max_pixels` (checked
    from the header, before any pixel data is decoded) and `ImageDecodeError` for broken files.
    16-bit colour PNGs are read at 8 bits per channel, as Pillow reads them.

    With `reduce_to` (the model's height and width), a PNG or JPEG (8-bit, without a colour key)
    at least eight times that size has its float `pixels` box-averaged by the largest whole
    factor that keeps them at least four times that size, so a large image costs its display's
    3 bytes per pixel, not 4 to 12 per pixel of float copies; `to_model_input` then resizes them
    as it would the full image, to within a fraction of a grey level.

    For a `model_input` of other than 1 or 3 channels, only a multi-frame DICOM image is
    decoded, its frames as the channels (`workers.channels.channel_frames`); any other image
    raises `ChannelCountError` naming the input the model takes.
    """
    if not data:
        raise ImageDecodeError("the image is empty")
    frames = None if model_input is None else channel_frames(model_input, dicom)
    if is_dicom(data):
        return decode_dicom(data, dicom or DicomOptions(), max_pixels, frames)
    if frames is not None and model_input is not None:
        raise ChannelCountError(expected_input(model_input))
    if data.startswith(_PNG_SIGNATURE):
        grey_source = (
            len(data) > _PNG_COLOUR_TYPE_OFFSET
            and data[_PNG_COLOUR_TYPE_OFFSET] in _PNG_GREY_COLOUR_TYPES
        )
        image_format = "PNG"
    elif data.startswith(_JPEG_SIGNATURE):
        grey_source = False
        image_format = "JPEG"
    else:
        raise UnsupportedImageError("unsupported image format; expected PNG, JPEG or DICOM")
    with _pillow_errors(image_format):
        image = Image.open(io.BytesIO(data), formats=[image_format])
    _check_size(image.size, max_pixels)
    with _pillow_errors(image_format):
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    display = _display_of_image(image)
    factor = _reduction(image.size, reduce_to)
    # A tRNS colour key applies to exact colours, which averaging would blur: not reduced.
    keyed = _READ_AS.get(image.mode) == image.mode and "transparency" in image.info
    source: Image.Image = image
    if factor > 1 and _READ_AS.get(image.mode) in _REDUCIBLE_MODES and not keyed:
        source = image.convert(_READ_AS[image.mode]).reduce(factor)
    return DecodedImage(pixels=_read_pixels(source, grey_source), display=display)


def to_model_input(images: Sequence[DecodedImage], spec: InputSpec) -> torch.Tensor:
    """A normalised (N, channels, height, width) float32 batch for a model of input `spec`, on
    the CPU.

    Grey images are repeated to RGB and colour ones reduced to BT.601 luma as the model needs;
    each is resized with antialiased bilinear interpolation, then normalised as (x - mean) / std.
    """
    channels, height, width, mean, std = spec.channels, spec.height, spec.width, spec.mean, spec.std
    if not images:
        raise ValueError("no images to batch")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values each")
    resized = [_resize(_match_channels(image.pixels, channels), height, width) for image in images]
    batch = torch.stack(resized)
    shift = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
    scale = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
    return (batch - shift) / scale


@contextmanager
def _pillow_errors(image_format: str) -> Iterator[None]:
    """Turn what Pillow raises into this module's errors."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except _PILLOW_DECODE_ERRORS as exc:
        raise ImageDecodeError(f"the {image_format} image cannot be decoded: {exc}") from exc


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}×{height} pixels; at most {max_pixels} pixels are accepted"
        )


def _reduction(size: tuple[int, int], reduce_to: tuple[int, int] | None) -> int:
    """The largest whole factor that keeps an image of `size` (W, H) at least four times
    `reduce_to` (H, W): the antialiased resize does the last steps, as it would from the full
    image."""
    if reduce_to is None:
        return 1
    width, height = size
    return max(1, min(height // (4 * reduce_to[0]), width // (4 * reduce_to[1])))


def _display_of_image(image: Image.Image) -> np.ndarray:
    """What `display_of(_read_pixels(image, ...))` makes, computed in integers: no float copy
    of a large image is ever made."""
    read_as = _READ_AS.get(image.mode)
    if read_as is None:
        raise ImageDecodeError(f"pixel mode {image.mode} is not supported")
    transparent_key = image.info.get("transparency") if read_as == image.mode else None
    raw = np.asarray(image if read_as == image.mode else image.convert(read_as))
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if read_as in _SIXTEEN_BIT_GREY_MODES:
        levels = ((raw.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif read_as in ("LA", "RGBA"):
        # c · a / 255 is never halfway between integers (255 is odd), so this rounds as rint.
        alpha = raw[:, :, -1:].astype(np.uint16)
        levels = ((raw[:, :, :-1] * alpha + 127) // 255).astype(np.uint8)
    else:
        levels = raw.copy() if isinstance(transparent_key, int | tuple) else raw
        if isinstance(transparent_key, int | tuple):
            levels[np.all(raw == np.asarray(transparent_key), axis=2)] = 0
    if levels.shape[2] == 1:
        levels = np.repeat(levels, 3, axis=2)
    return np.ascontiguousarray(levels[:, :, :3])


def _read_pixels(image: Image.Image, grey_source: bool) -> np.ndarray:
    """Float32 H×W×C in [0, 1], alpha and transparent colour keys composited on black."""
    read_as = _READ_AS.get(image.mode)
    if read_as is None:
        raise ImageDecodeError(f"pixel mode {image.mode} is not supported")
    transparent_key = image.info.get("transparency") if read_as == image.mode else None
    if read_as != image.mode:
        image = image.convert(read_as)
    raw = np.asarray(image)
    if raw.ndim == 2:
        raw = raw[:, :, None]
    full_scale = 65535.0 if read_as in _SIXTEEN_BIT_GREY_MODES else 255.0
    pixels = raw.astype(np.float32) / np.float32(full_scale)
    if read_as in ("LA", "RGBA"):
        pixels = pixels[:, :, :-1] * pixels[:, :, -1:]
    elif isinstance(transparent_key, int | tuple):
        # A PNG tRNS colour key: pixels of exactly that colour are fully transparent.
        pixels[np.all(raw == np.asarray(transparent_key), axis=2)] = 0.0
    if grey_source and pixels.shape[2] == 3:
        # Pillow reads 16-bit grey + alpha PNGs as RGBA; its three colour channels are equal.
        pixels = pixels[:, :, :1]
    return np.ascontiguousarray(pixels)


def _match_channels(pixels: np.ndarray, channels: int) -> torch.Tensor:
    """C×H×W with the model's channel count."""
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1)
    if channels == 1:
        weights = torch.tensor(_LUMA_WEIGHTS, dtype=torch.float32).view(3, 1, 1)
        return (image * weights).sum(dim=0, keepdim=True)
    raise ChannelCountError(f"an image of {image.shape[0]} channels for a model of {channels}")


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(image.shape[1:]) == (height, width):
        return image
    resized = F.interpolate(
        image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return resized[0]
