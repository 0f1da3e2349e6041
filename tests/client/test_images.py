"""Every kind of image input becomes the bytes of a file the service decodes, losslessly; a
DICOMweb instance becomes the request's `source`."""

import io
from pathlib import Path

import numpy as np
import pytest
from glimpse_client.calls import explain_body
from glimpse_client.images import DicomwebInstance, image_bytes
from PIL import Image


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_paths_and_bytes_are_sent_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"DICM and the rest")
    assert image_bytes(path) == image_bytes(str(path)) == b"DICM and the rest"
    assert image_bytes(bytearray(b"abc")) == image_bytes(memoryview(b"abc")) == b"abc"


@pytest.mark.parametrize(
    ("shape", "mode"), [((5, 7), "L"), ((5, 7, 1), "L"), ((5, 7, 3), "RGB"), ((5, 7, 4), "RGBA")]
)
def test_uint8_arrays_become_lossless_pngs(shape: tuple[int, ...], mode: str) -> None:
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    image = decoded(image_bytes(array))
    assert image.format == "PNG" and image.mode == mode and image.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(image), array.reshape(np.asarray(image).shape))


def test_16_bit_grey_keeps_its_depth() -> None:
    array = np.random.default_rng(1).integers(0, 65536, (6, 4), dtype=np.uint16)
    np.testing.assert_array_equal(np.asarray(decoded(image_bytes(array))), array)


def test_float_and_bool_arrays_are_scaled_to_8_bits() -> None:
    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert np.asarray(decoded(image_bytes(floats))).tolist() == [[0, 128, 255]]
    assert np.asarray(decoded(image_bytes(np.array([[True, False]])))).tolist() == [[255, 0]]


@pytest.mark.parametrize(
    "array",
    [
        np.array([[0.0, 1.5]]),
        np.array([[np.nan]]),
        np.zeros((2, 2, 2), np.uint8),
        np.zeros((2, 2), np.int64),
        np.zeros((2, 2, 3), np.uint16),
    ],
)
def test_arrays_that_are_no_image_are_refused(array: np.ndarray) -> None:
    with pytest.raises(ValueError):
        image_bytes(array)


def test_pil_images_are_sent_as_png_in_a_mode_png_keeps() -> None:
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 0, 0))
    image = decoded(image_bytes(cmyk))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (3, 2)
    grey = Image.new("L", (3, 2), 77)
    assert np.asarray(decoded(image_bytes(grey))).tolist() == [[77] * 3] * 2


def test_other_objects_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        image_bytes(42)  # type: ignore[arg-type]


def test_a_dicomweb_instance_is_sent_as_the_source_and_store_names_the_server() -> None:
    instance = DicomwebInstance("pacs", study="1.2", series="1.2.3", instance="1.2.3.4", frame=2)

    body = explain_body(instance, "m", "gradcam", "top1", None, None, None, store="archive")

    assert "image" not in body
    assert body["source"] == {
        "dicomweb": "pacs",
        "study": "1.2",
        "series": "1.2.3",
        "instance": "1.2.3.4",
        "frame": 2,
    }
    assert body["store"] == {"dicomweb": "archive"}
    uploaded = explain_body(b"DICM", "m", "gradcam", "top1", None, None, None)
    assert "source" not in uploaded and "store" not in uploaded
