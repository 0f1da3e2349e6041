"""Which input a model of other than 1 or 3 channels takes: DICOM frames as its channels."""

from schemas import problems
from schemas.dicom import DicomOptions
from schemas.models import InputSpec
from workers.decoded import ImageError


class ChannelCountError(ImageError):
    """The image cannot give the model its channels (a PNG for a 4-channel model, say)."""

    kind = problems.INVALID_REQUEST


def channel_frames(spec: InputSpec, options: DicomOptions | None) -> list[int] | None:
    """The DICOM frames that become the model's channels, in order; None for a 1- or 3-channel
    model, which takes one frame (the request's `dicom.frame`) like any other image."""
    if spec.channels in (1, 3):
        return None
    if isinstance(spec.frames, list):
        return list(spec.frames)
    first = (options or DicomOptions()).frame
    return list(range(first, first + spec.channels))


def expected_input(spec: InputSpec) -> str:
    """The input a model of `spec` takes, in words, for the refusal of any other."""
    if isinstance(spec.frames, list):
        chosen = f"frames {', '.join(map(str, spec.frames))}"
    else:
        chosen = f"{spec.channels} consecutive frames from dicom.frame"
    return (
        f"the model takes {spec.channels} channels: a multi-frame MONOCHROME DICOM image, "
        f"{chosen} as its channels (a PNG or JPEG image has 1 or 3)"
    )
