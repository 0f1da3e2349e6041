"""The gateway's checks of a segmentation target's region against the model and the image."""

import base64
import binascii
import io

from PIL import Image

from schemas.models import ModelInfo
from schemas.regions import RegionTarget
from service.errors import InvalidRequest
from service.images import ImageHeader


def check_region_target(target: object, info: ModelInfo, header: ImageHeader) -> None:
    """422 for a region target on a classifier, a box outside the image, or a mask that is not a
    PNG of the image's size with at least one pixel set."""
    if not isinstance(target, RegionTarget):
        return
    if info.task != "segmentation":
        raise InvalidRequest(
            f"A target with a region applies to segmentation models; {info.id!r} is a "
            "classifier: give a class index."
        )
    if target.box is not None:
        x0, y0, x1, y1 = target.box
        if x1 > header.width or y1 > header.height:
            raise InvalidRequest(
                f"The box [{x0}, {y0}, {x1}, {y1}] reaches outside the {header.width}×"
                f"{header.height} image (x1 ≤ width, y1 ≤ height, in the input's pixels)."
            )
    if target.mask is not None:
        _check_mask(target.mask, header)


def _check_mask(text: str, header: ImageHeader) -> None:
    try:
        data = base64.b64decode(text.partition(",")[2] or text, validate=True)
        with Image.open(io.BytesIO(data)) as mask:
            if mask.format != "PNG":
                raise InvalidRequest("The target's mask must be a PNG.")
            if mask.size != (header.width, header.height):
                raise InvalidRequest(
                    f"The target's mask is {mask.size[0]}×{mask.size[1]}; it must be the input "
                    f"image's size, {header.width}×{header.height}."
                )
            pixels_set = mask.convert("L").getbbox() is not None
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"The target's mask is not a base64 PNG: {exc}") from None
    if not pixels_set:
        raise InvalidRequest("The target's mask sets no pixel: its region is empty.")
