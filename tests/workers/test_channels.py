"""Models of any channel count: DICOM frames as channels, the refusal of any other input, and
per-channel normalisation and baselines."""

import io

import numpy as np
import pytest
import torch
from dicom_files import dicom_file  # type: ignore[import-not-found]
from method_checks import EPS32
from PIL import Image
from pydantic import ValidationError

from schemas import problems
from schemas.dicom import AppliedDicom, DicomOptions, DicomWindow
from schemas.models import InputSpec
from workers.channels import ChannelCountError, channel_frames
from workers.decoded import DicomOptionError
from workers.images import decode_image, to_model_input
from workers.methods import Normalisation
from workers.methods.baselines import make_baseline

MAX_PIXELS = 10_000_000


def spec(channels: int, frames: object = "consecutive") -> InputSpec:
    return InputSpec.model_validate(
        {
            "channels": channels,
            "height": 6,
            "width": 5,
            "mean": [0.1 * c for c in range(channels)],
            "std": [1.0 + c for c in range(channels)],
            "frames": frames,
        }
    )


def frames_file(count: int, photometric: str = "MONOCHROME2") -> tuple[bytes, np.ndarray]:
    stored = np.random.default_rng(count).integers(0, 4096, (count, 6, 5)).astype(np.uint16)
    return dicom_file(stored, bits_stored=12, photometric=photometric), stored


def test_the_frames_follow_the_request_or_the_manifest() -> None:
    assert channel_frames(spec(1), DicomOptions(frame=3)) is None
    assert channel_frames(spec(3), None) is None
    assert channel_frames(spec(4), DicomOptions(frame=2)) == [2, 3, 4, 5]
    assert channel_frames(spec(2), None) == [0, 1]
    assert channel_frames(spec(2, [5, 1]), DicomOptions(frame=3)) == [5, 1]


@pytest.mark.parametrize(
    "fields",
    [
        {"channels": 0},
        {"channels": 2, "frames": [0]},
        {"channels": 2, "frames": [0, -1]},
        {"channels": 1, "frames": [0], "mean": [0.0], "std": [1.0]},
    ],
)
def test_a_manifest_input_that_cannot_be_filled_is_refused(fields: dict[str, object]) -> None:
    base = {"height": 4, "width": 4, "mean": [0.0, 0.0], "std": [1.0, 1.0]}
    with pytest.raises(ValidationError):
        InputSpec.model_validate({**base, **fields})


def test_consecutive_frames_become_channels_windowed_together() -> None:
    data, stored = frames_file(5)

    image = decode_image(data, MAX_PIXELS, DicomOptions(frame=1), model_input=spec(4))

    chosen = stored[1:5].astype(np.float64)
    expected = (chosen - chosen.min()) / (chosen.max() - chosen.min())
    assert image.pixels.shape == (6, 5, 4)
    # Windowed in float64, stored as float32: one rounding.
    assert np.abs(image.pixels - np.moveaxis(expected, 0, -1)).max() <= EPS32
    # The display shows the middle channel (frame 3), in grey.
    middle = np.rint(expected[2] * 255).astype(np.uint8)
    assert (image.display == middle[:, :, None]).all()
    assert image.dicom == AppliedDicom(frame=1, window=image.dicom.window if image.dicom else None)


def test_a_frame_list_keeps_its_order_and_the_files_window_applies() -> None:
    data, stored = frames_file(3)
    window = DicomWindow(center=2048, width=1024)

    image = decode_image(data, MAX_PIXELS, DicomOptions(window=window), model_input=spec(2, [2, 0]))

    for channel, frame in enumerate([2, 0]):
        values = stored[frame].astype(np.float64)
        expected = np.clip((values - 2047.5) / 1023 + 0.5, 0.0, 1.0)
        assert np.abs(image.pixels[:, :, channel] - expected).max() <= EPS32


def test_too_few_frames_or_a_colour_file_is_refused_with_the_frames_wanted() -> None:
    data, _ = frames_file(2)
    with pytest.raises(DicomOptionError, match="frames 0, 3 as its 2 channels"):
        decode_image(data, MAX_PIXELS, None, model_input=spec(2, [0, 3]))
    with pytest.raises(DicomOptionError, match="the file has 2 frame"):
        decode_image(data, MAX_PIXELS, DicomOptions(frame=1), model_input=spec(2))
    rgb = np.zeros((2, 6, 5, 3), dtype=np.uint8)
    with pytest.raises(DicomOptionError, match="MONOCHROME"):
        decode_image(dicom_file(rgb, photometric="RGB"), MAX_PIXELS, None, model_input=spec(2))
    assert DicomOptionError.kind == problems.INVALID_REQUEST


def test_a_png_for_a_model_of_other_than_1_or_3_channels_is_refused() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((6, 5), np.uint8), mode="L").save(buffer, format="PNG")

    with pytest.raises(ChannelCountError, match="takes 2 channels: a multi-frame MONOCHROME"):
        decode_image(buffer.getvalue(), MAX_PIXELS, None, model_input=spec(2))
    assert ChannelCountError.kind == problems.INVALID_REQUEST
    # A 1- or 3-channel model takes it as before.
    assert decode_image(buffer.getvalue(), MAX_PIXELS, None, model_input=spec(3)).pixels.shape == (
        6,
        5,
        1,
    )


def test_each_channel_is_normalised_and_gets_its_own_black_baseline() -> None:
    data, _ = frames_file(4)
    model_input = spec(4)
    image = decode_image(data, MAX_PIXELS, None, model_input=model_input)

    batch = to_model_input([image], model_input)
    normalisation = Normalisation(tuple(model_input.mean), tuple(model_input.std))
    black = make_baseline("black", batch, normalisation=normalisation)

    for channel in range(4):
        source = torch.from_numpy(image.pixels[:, :, channel])
        mean, std = model_input.mean[channel], model_input.std[channel]
        torch.testing.assert_close(batch[0, channel], (source - mean) / std)
        assert torch.allclose(black[0, channel], torch.tensor((0.0 - mean) / std))
