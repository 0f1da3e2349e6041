"""The request mix of the locust load test (`bench/locustfile.py`): methods, parameters, image
kinds and sizes, with their weights. Importing it does not import locust (whose import patches the
standard library for gevent), so that `bench/load.py` and the tests can use it too."""

import base64
import io
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from schemas.explain import ExplainResponse
from workers.demo.data import SIZE as DEMO_SIZE
from workers.demo.data import make_sample, to_png_bytes

IMAGES_PER_KIND = 8  # distinct images per kind, so that batches hold different inputs
ADMITTED, REFUSED = "admitted", "refused 429"


def png_image(seed: int, side: int) -> bytes:
    """A demo sample (128 × 128) as a grayscale PNG, resampled to `side` × `side`."""
    pixels = np.round(make_sample(seed).image * 255.0).astype(np.uint8)
    if side != pixels.shape[0]:
        pixels = np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR))
    return to_png_bytes(pixels)


def dicom_image(seed: int, side: int) -> bytes:
    """A demo sample as a 16-bit MONOCHROME2 CT-like DICOM file (values in Hounsfield units
    through a rescale, a soft-tissue window in the file), resampled to `side` × `side`."""
    pixels = np.asarray(
        Image.fromarray(make_sample(seed).image).resize((side, side), Image.Resampling.BILINEAR)
    )
    stored = np.round(pixels * 400.0 + 984.0).astype(np.uint16)  # -40 … 360 HU after rescale
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "OT"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows = dataset.Columns = side
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    dataset.WindowCenter, dataset.WindowWidth = 160, 400
    dataset.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class RequestKind:
    """One entry of the mix: a method with its parameters, on one kind of image, and how the
    answer comes back; `images` are its distinct inputs, base64."""

    label: str
    weight: int
    method: str
    image_format: Literal["png", "dicom"]
    side: int
    output: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    images: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        make = png_image if self.image_format == "png" else dicom_image
        images = (make(80_000 + index, self.side) for index in range(IMAGES_PER_KIND))
        object.__setattr__(self, "images", tuple(base64.b64encode(i).decode() for i in images))

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "demo-lesions",
            "image": random.choice(self.images),
            "methods": [self.method],
            "output": self.output,
        }
        if self.params:
            body["params"] = {self.method: self.params}
        return body

    def score_shape(self) -> list[int] | None:
        """The shape of the scores asked for; None when none are."""
        if self.output.get("scores", "json") == "none":
            return None
        if self.output.get("grid") is not None:
            return [self.output["grid"]] * 2
        return [DEMO_SIZE] * 2 if self.output.get("size") == "model" else [self.side] * 2

    def problem(self, answer: ExplainResponse) -> str | None:
        """Why a valid `ExplainResponse` is not the answer to this request, or None."""
        if [e.method for e in answer.explanations] != [self.method]:
            return f"explanations for {[e.method for e in answer.explanations]}"
        explanation = answer.explanations[0]
        if self.output.get("overlay", True) and not explanation.overlay_png:
            return "no overlay"
        shape = explanation.scores.shape if explanation.scores is not None else None
        if shape != self.score_shape():
            return f"scores of shape {shape}, not {self.score_shape()}"
        return None


MIX: tuple[RequestKind, ...] = (
    RequestKind(
        "gradcam, 128 px PNG, overlay",
        4,
        "gradcam",
        "png",
        128,
        output={"overlay": True, "scores": "none"},
    ),
    RequestKind(
        "saliency, 512 px PNG, overlay at 512 px",
        3,
        "saliency",
        "png",
        512,
        output={"overlay": True, "scores": "none"},
    ),
    RequestKind(
        "integrated_gradients (8 steps), 256 px DICOM, base64 scores",
        2,
        "integrated_gradients",
        "dicom",
        256,
        output={"overlay": False, "scores": "base64", "size": "model"},
        params={"steps": 8, "max_steps": 8},
    ),
    RequestKind(
        "occlusion (window = stride = 32), 128 px PNG, 16 × 16 JSON scores",
        1,
        "occlusion",
        "png",
        128,
        output={"overlay": False, "scores": "json", "size": "model", "grid": 16},
        params={"window": 32, "stride": 32},
    ),
)


def draw() -> RequestKind:
    """A kind of request drawn by the mix's weights."""
    return random.choices(MIX, weights=[kind.weight for kind in MIX])[0]
