"""Each transfer syntax explained end to end on real parts (HTTP → gateway → Redis → worker):
files that real encoders wrote and pydicom's bundled files, one request each, every overlay at
the source's size, and the maps of lossless encodings equal to the uncompressed original's."""

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from dicom_codecs import LOSSLESS, bundled_file, compressed  # type: ignore[import-not-found]
from dicom_files import ct_file, dicom_file  # type: ignore[import-not-found]
from PIL import Image
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)

from schemas.dicom import DICOM_TRANSFER_SYNTAXES
from service.devstack import DevStack
from workers.demo.data import make_sample

MODEL = "demo-lesions"
SEED = 23
# The source is 176 × 144, not the model's 128 × 128, and not square: an overlay at the model's
# size, or transposed, would show.
IMAGE = np.pad(make_sample(SEED).image, ((8, 8), (16, 32)))
LEVELS = np.round(IMAGE * 255)
NATIVE_CT = ct_file(IMAGE)
LOSSY = {
    JPEGBaseline8Bit: dicom_file(LEVELS.astype(np.uint8)),
    JPEGExtended12Bit: dicom_file((LEVELS * 16).astype(np.uint16), bits_stored=12),
    JPEGLSNearLossless: NATIVE_CT,
    JPEG2000: NATIVE_CT,
}
BUNDLED = ["JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "OBXXXX1A_rle.dcm"]


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        yield http


def explained(client: httpx.Client, data: bytes) -> dict[str, object]:
    answer = client.post(
        "/v1/explanations",
        json={
            "model": MODEL,
            "image": base64.b64encode(data).decode(),
            "methods": ["saliency"],
        },
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def scores(result: dict[str, object]) -> np.ndarray:
    (explanation,) = result["explanations"]  # type: ignore[misc]
    return np.array(explanation["scores"]["values"])


def overlay_size(result: dict[str, object]) -> tuple[int, int]:
    (explanation,) = result["explanations"]  # type: ignore[misc]
    return Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"]))).size


def source_size(data: bytes) -> tuple[int, int]:
    header = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return int(header.Columns), int(header.Rows)


@pytest.fixture(scope="module")
def native_map(client: httpx.Client) -> np.ndarray:
    result = explained(client, NATIVE_CT)
    assert overlay_size(result) == (176, 144)
    return scores(result)


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda uid: DICOM_TRANSFER_SYNTAXES[uid])
def test_a_lossless_file_is_explained_like_its_uncompressed_original(
    client: httpx.Client, native_map: np.ndarray, syntax: UID
) -> None:
    data = compressed(NATIVE_CT, syntax)

    result = explained(client, data)

    assert overlay_size(result) == source_size(data) == (176, 144)
    # The worker decodes the very pixels of the original, so the model computes the same map.
    np.testing.assert_array_equal(scores(result), native_map)


@pytest.mark.parametrize("syntax", list(LOSSY), ids=lambda uid: DICOM_TRANSFER_SYNTAXES[uid])
def test_a_lossy_file_is_explained_at_its_size(client: httpx.Client, syntax: UID) -> None:
    data = compressed(LOSSY[syntax], syntax)

    result = explained(client, data)

    assert dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    assert overlay_size(result) == source_size(data) == (176, 144)
    values = scores(result)
    assert np.isfinite(values).all() and values.std() > 0


@pytest.mark.parametrize("name", BUNDLED)
def test_pydicoms_files_are_explained_at_their_size(client: httpx.Client, name: str) -> None:
    data = bundled_file(name)

    result = explained(client, data)

    assert overlay_size(result) == source_size(data)
    values = scores(result)
    assert np.isfinite(values).all() and values.std() > 0
