"""Locust users for `POST /v1/explanations` (sync): a weighted mix of methods and image sizes.

Run by `bench/load.py` and by the load smoke test; on its own against a running gateway:

    locust -f bench/locustfile.py --headless --host http://127.0.0.1:8000 -u 40 -r 8 -t 60s \
        --glimpse-pacing 2 --csv load

Each request is recorded under its outcome, not its URL, so that locust's own statistics (and its
`--csv` files) give the figures a load test needs directly: `admitted` (a 2xx whose body is a
valid `ExplainResponse` carrying the map asked for), `refused 429` (counted a success when it
carries `Retry-After`), and any other answer as a failure named by its status. The API key, when
the gateway requires one, comes from `LOCUST_GLIMPSE_API_KEY` (kept off the command line).
"""

import base64
import io
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from PIL import Image
from pydantic import ValidationError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from schemas.explain import ExplainResponse
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
    """One entry of the mix: a method with its parameters, on one kind of image."""

    label: str
    weight: int
    method: str
    params: dict[str, Any]
    image: str  # "png" or "dicom"
    side: int
    output: dict[str, Any]
    images: list[str] = field(default_factory=list, compare=False)

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

    def problem(self, answer: ExplainResponse) -> str | None:
        """Why a valid `ExplainResponse` is not the answer to this request, or None."""
        if [e.method for e in answer.explanations] != [self.method]:
            return f"explanations for {[e.method for e in answer.explanations]}"
        explanation = answer.explanations[0]
        if self.output.get("overlay", True) and not explanation.overlay_png:
            return "no overlay"
        if self.output.get("scores", "json") != "none" and explanation.scores is None:
            return "no scores"
        return None


def _kind(label: str, weight: int, method: str, image: str, side: int, **extra: Any) -> RequestKind:
    make = png_image if image == "png" else dicom_image
    images = [
        base64.b64encode(make(80_000 + index, side)).decode() for index in range(IMAGES_PER_KIND)
    ]
    return RequestKind(
        label, weight, method, extra.get("params", {}), image, side, extra["output"], images
    )


MIX: tuple[RequestKind, ...] = (
    _kind(
        "gradcam, 128 px PNG, overlay",
        4,
        "gradcam",
        "png",
        128,
        output={"overlay": True, "scores": "none"},
    ),
    _kind(
        "saliency, 512 px PNG, overlay at 512 px",
        3,
        "saliency",
        "png",
        512,
        output={"overlay": True, "scores": "none"},
    ),
    _kind(
        "integrated_gradients (8 steps), 256 px DICOM, base64 scores",
        2,
        "integrated_gradients",
        "dicom",
        256,
        params={"steps": 8, "max_steps": 8},
        output={"overlay": False, "scores": "base64", "size": "model"},
    ),
    _kind(
        "occlusion (window = stride = 32), 128 px PNG, 16 × 16 JSON scores",
        1,
        "occlusion",
        "png",
        128,
        params={"window": 32, "stride": 32},
        output={"overlay": False, "scores": "json", "size": "model", "grid": 16},
    ),
)


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--glimpse-pacing",
        type=float,
        default=0.0,
        help="seconds from the start of one request of a user to its next; 0: back to back",
    )
    parser.add_argument(
        "--glimpse-api-key",
        default="",
        env_var="LOCUST_GLIMPSE_API_KEY",
        help="API key sent as a bearer token; none when empty",
        include_in_web_ui=False,
    )


class ExplainUser(FastHttpUser):
    """Sends one sync explain request at a time, a kind drawn by the mix's weights, each
    `--glimpse-pacing` seconds (or back to back): users × 1 / pacing is the offered rate as long
    as an answer comes within the pacing."""

    network_timeout = 120.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.pacing = float(options.glimpse_pacing) if options is not None else 0.0
        key = options.glimpse_api_key if options is not None else ""
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        # A random first phase, so that users spawned together do not send together.
        self.last_start = time.perf_counter() - random.uniform(0.0, self.pacing)

    def wait_time(self) -> float:
        return max(0.0, self.last_start + self.pacing - time.perf_counter())

    @task
    def explain(self) -> None:
        self.last_start = time.perf_counter()
        kind = random.choices(MIX, weights=[k.weight for k in MIX])[0]
        with self.client.post(
            "/v1/explanations",
            json=kind.body(),
            headers=self.headers,
            name=ADMITTED,
            catch_response=True,
        ) as response:
            status = response.status_code
            if 200 <= status < 300:
                try:
                    problem = kind.problem(ExplainResponse.model_validate_json(response.content))
                except ValidationError as exc:
                    problem = f"not an ExplainResponse: {exc.error_count()} errors"
                if problem is not None:
                    response.failure(f"{kind.method}: {problem}")
            elif status == 429:
                response.request_meta["name"] = REFUSED
                if response.headers.get("Retry-After"):
                    response.success()
                else:
                    response.failure("429 without Retry-After")
            else:
                response.request_meta["name"] = f"status {status}" if status else "no answer"
                response.failure(f"{kind.method}: status {status}")
