"""Malformed, hostile and unusual image files, made here byte by byte, sent to the real stack.

Each file goes through `POST /v1/explanations` as JSON (base64) and as a multipart upload. A file
that is not a valid PNG or JPEG must get a 4xx problem+json answer; a valid one is explained.
Nothing may get a 5xx, and the worker must still be alive and answering afterwards.
"""

import base64
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from service.devstack import DevStack
from workers.demo.data import make_sample, to_png_bytes

MODEL = "demo-lesions"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types (IHDR byte 9).
GREY, PALETTE = 0, 3
EXPLAINED = frozenset({200})
UNDECODABLE = frozenset({400})
TOO_LARGE = frozenset({400, 413})
UNSUPPORTED = frozenset({415})
MISLABELLED = frozenset({400, 415})
ANY_CLIENT_ERROR = frozenset(range(400, 500))
# A 1×1 image and a PNG with a file appended are valid, but refusing them is a fair choice too.
EXPLAINED_OR_REFUSED = EXPLAINED | ANY_CLIENT_ERROR


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def ihdr(width: int, height: int, colour_type: int = GREY, bit_depth: int = 8) -> bytes:
    return png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    )


def png_from_rows(header: bytes, rows: bytes, *chunks: bytes) -> bytes:
    """A PNG of `header`, the given chunks, one IDAT of the filtered `rows` and IEND."""
    return (
        PNG_SIGNATURE
        + header
        + b"".join(chunks)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def lesion(seed: int = 7) -> Image.Image:
    """A 128×128 grey demo image with a lesion."""
    return Image.fromarray(np.rint(make_sample(seed).image * 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def good_png() -> bytes:
    return to_png_bytes(make_sample(7).image)


def good_jpeg() -> bytes:
    return encode(lesion().convert("RGB"), "JPEG", quality=90)


def decompression_bomb(side: int = 20_000) -> bytes:
    """A valid grey PNG of side×side black pixels: 400 MB decoded, about 400 kB on disk.

    Compressed row by row, so it is made in seconds without holding the pixels.
    """
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then zeros
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return PNG_SIGNATURE + ihdr(side, side) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def palette_png(palette: bytes, indices: range) -> bytes:
    """A 16×16 palette PNG whose every row cycles through `indices`."""
    row = b"\x00" + bytes(indices[column % len(indices)] for column in range(16))
    return png_from_rows(ihdr(16, 16, PALETTE), row * 16, png_chunk(b"PLTE", palette))


def animated_png() -> bytes:
    """An APNG of two frames: the lesion image, then its negative."""
    first = lesion()
    second = Image.eval(first, lambda value: 255 - value)
    return encode(first, "PNG", save_all=True, append_images=[second], duration=100, loop=0)


def zip_archive() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "a PNG that is also a ZIP archive")
    return out.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header is patched to claim width×height."""
    data = bytearray(good_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def one_by_one_png() -> bytes:
    return encode(Image.new("L", (1, 1), 90), "PNG")


def rgba_png() -> bytes:
    image = lesion().convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return encode(image, "PNG")


def grey16_png() -> bytes:
    return encode(Image.fromarray(np.rint(make_sample(7).image * 65535).astype(np.uint16)), "PNG")


@dataclass(frozen=True)
class Specimen:
    """One file of the corpus and the statuses that are a right answer to it."""

    name: str
    make: Callable[[], bytes]
    allowed: frozenset[int]


CORPUS = [
    Specimen("png-truncated-in-idat", lambda: good_png()[: len(good_png()) // 2], UNDECODABLE),
    Specimen("jpeg-truncated-in-scan", lambda: good_jpeg()[: len(good_jpeg()) // 2], UNDECODABLE),
    Specimen("png-signature-jpeg-body", lambda: PNG_SIGNATURE + good_jpeg(), MISLABELLED),
    Specimen("jpeg-signature-png-body", lambda: b"\xff\xd8\xff" + good_png(), MISLABELLED),
    Specimen(
        "png-ihdr-65535x65535",
        lambda: png_from_rows(ihdr(65535, 65535), b"\x00" * 64),
        TOO_LARGE,
    ),
    Specimen("jpeg-sof-65500x65500", lambda: jpeg_claiming(65500, 65500), TOO_LARGE),
    Specimen("png-zero-width", lambda: png_from_rows(ihdr(0, 16), b""), UNDECODABLE),
    Specimen("png-zero-height", lambda: png_from_rows(ihdr(16, 0), b""), UNDECODABLE),
    Specimen(
        "png-no-idat",
        lambda: PNG_SIGNATURE + ihdr(16, 16) + png_chunk(b"IEND", b""),
        UNDECODABLE,
    ),
    Specimen(
        "png-idat-bad-crc",
        lambda: good_png()[:-20] + bytes([good_png()[-20] ^ 0xFF]) + good_png()[-19:],
        UNDECODABLE,
    ),
    Specimen(
        "png-palette-valid",
        lambda: palette_png(bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]), range(4)),
        EXPLAINED,
    ),
    # PNG: "a PLTE chunk length not divisible by 3 is an error"; libpng refuses the file.
    Specimen("png-plte-2-bytes", lambda: palette_png(b"\xff\x00", range(4)), UNDECODABLE),
    # PNG calls indices past the palette an error, but libpng and browsers draw them black.
    Specimen(
        "png-indices-past-palette",
        lambda: palette_png(b"\xff\x00\x00\x00\xff\x00", range(200, 216)),
        EXPLAINED_OR_REFUSED,
    ),
    Specimen("jpeg-cmyk", lambda: encode(lesion().convert("CMYK"), "JPEG"), EXPLAINED),
    Specimen("apng-two-frames", animated_png, EXPLAINED | UNSUPPORTED | frozenset({422})),
    Specimen("gif", lambda: encode(lesion(), "GIF"), UNSUPPORTED),
    Specimen("bmp", lambda: encode(lesion(), "BMP"), UNSUPPORTED),
    Specimen("tiff", lambda: encode(lesion(), "TIFF"), UNSUPPORTED),
    Specimen("png-then-zip", lambda: good_png() + zip_archive(), EXPLAINED_OR_REFUSED),
    Specimen(
        "png-then-html",
        lambda: good_png() + b"<html><script>alert(1)</script></html>",
        EXPLAINED_OR_REFUSED,
    ),
    Specimen(
        "png-signature-then-html",
        lambda: PNG_SIGNATURE + b"<html><script>alert(1)</script></html>",
        UNDECODABLE,
    ),
    Specimen("png-16-bit-grey", grey16_png, EXPLAINED),
    Specimen("png-rgba", rgba_png, EXPLAINED),
    # JSON cannot carry an empty `image` (422: the field is required to be non-empty); an empty
    # file part is an undecodable image (400).
    Specimen("empty", lambda: b"", frozenset({400, 422})),
    Specimen("png-1x1", one_by_one_png, EXPLAINED_OR_REFUSED),
    Specimen(
        "jpeg-1x1",
        lambda: encode(Image.new("RGB", (1, 1), (9, 99, 199)), "JPEG"),
        EXPLAINED_OR_REFUSED,
    ),
    Specimen("png-bomb-20000x20000", decompression_bomb, TOO_LARGE),
]
ENCODINGS = ("json", "multipart")


def explain(client: httpx.Client, image: bytes, encoding: str) -> httpx.Response:
    """`POST /v1/explanations` of `image` with one cheap method, as JSON or as a file upload."""
    if encoding == "json":
        body = {"model": MODEL, "image": base64.b64encode(image).decode(), "methods": ["gradcam"]}
        return client.post("/v1/explanations", json=body)
    return client.post(
        "/v1/explanations",
        files={"image": ("upload.bin", image, "application/octet-stream")},
        data={"model": MODEL, "methods": "gradcam"},
    )


@pytest.fixture(scope="module")
def specimens() -> dict[str, bytes]:
    """Every file of the corpus, made once for the module (the bomb takes a few seconds)."""
    return {specimen.name: specimen.make() for specimen in CORPUS}


@pytest.fixture(scope="module")
def answers(
    stack: DevStack, specimens: dict[str, bytes]
) -> dict[tuple[str, str], httpx.Response | None]:
    """The answer to each file sent each way, once for the module; None: the connection dropped."""
    sent: dict[tuple[str, str], httpx.Response | None] = {}
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        for name, data in specimens.items():
            for encoding in ENCODINGS:
                try:
                    sent[name, encoding] = explain(client, data, encoding)
                except httpx.TransportError:
                    sent[name, encoding] = None
    return sent


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("specimen", CORPUS, ids=lambda specimen: specimen.name)
def test_each_file_is_refused_with_a_problem_or_explained(
    specimens: dict[str, bytes],
    answers: dict[tuple[str, str], httpx.Response | None],
    specimen: Specimen,
    encoding: str,
) -> None:
    answer = answers[specimen.name, encoding]
    assert answer is not None, "the gateway dropped the connection without an answer"
    assert answer.status_code in specimen.allowed, answer.text
    if answer.status_code == 200:
        result = answer.json()
        width, height = Image.open(io.BytesIO(specimens[specimen.name])).size
        assert [e["method"] for e in result["explanations"]] == ["gradcam"]
        assert result["explanations"][0]["scores"]["shape"] == [height, width]
    else:
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["status"] == answer.status_code
        assert problem["title"] and problem["type"] and problem["detail"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_an_animated_png_is_explained_from_its_first_frame_or_refused(
    client: httpx.Client, encoding: str
) -> None:
    animated = explain(client, animated_png(), encoding)
    if animated.status_code != 200:
        assert animated.status_code in (415, 422), animated.text
        assert animated.headers["content-type"] == "application/problem+json"
        return
    first = explain(client, encode(lesion(), "PNG"), encoding)
    second = explain(
        client, encode(Image.eval(lesion(), lambda value: 255 - value), "PNG"), encoding
    )
    assert first.status_code == second.status_code == 200, first.text + second.text
    scores = [
        np.array(a.json()["explanations"][0]["scores"]["values"]) for a in (animated, first, second)
    ]
    assert np.abs(scores[1] - scores[2]).max() > 0.1, "the two frames must tell apart"
    # The first frame holds the same 8-bit levels as the single PNG: the same float32 input, so
    # the same map bit for bit.
    np.testing.assert_array_equal(scores[0], scores[1])


def test_the_worker_survives_the_corpus(
    stack: DevStack, client: httpx.Client, answers: dict[tuple[str, str], httpx.Response | None]
) -> None:
    assert len(answers) == len(CORPUS) * len(ENCODINGS)
    assert stack.alive()
    assert client.get("/readyz").json()["live_workers"] >= 1
    answer = explain(client, good_png(), "json")
    assert answer.status_code == 200, answer.text
