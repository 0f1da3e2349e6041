import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from service.errors import BadImage, PayloadTooLarge, UnsupportedMedia
from service.images import decode_base64_image, inspect_image


def png(size: tuple[int, int] = (20, 10), mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def with_ihdr_size(data: bytes, width: int, height: int) -> bytes:
    """The same PNG whose header claims another size, with a valid CRC."""
    ihdr = bytearray(data[12:29])  # type + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return data[:12] + bytes(ihdr) + crc + data[33:]


def test_base64_and_data_urls() -> None:
    raw = png()
    assert decode_base64_image(base64.b64encode(raw).decode()) == raw
    assert decode_base64_image("data:image/png;base64," + base64.b64encode(raw).decode()) == raw
    with pytest.raises(BadImage):
        decode_base64_image("%%%")


def test_inspects_png_and_jpeg() -> None:
    header = inspect_image(png((20, 10)), max_pixels=1000)
    assert (header.format, header.width, header.height) == ("png", 20, 10)
    out = io.BytesIO()
    Image.new("RGB", (8, 6)).save(out, format="JPEG")
    assert inspect_image(out.getvalue(), 1000).format == "jpeg"


def test_refuses_other_formats_corrupt_files_and_huge_headers() -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 6)).save(out, format="GIF")
    with pytest.raises(UnsupportedMedia):
        inspect_image(out.getvalue(), 1000)
    with pytest.raises(BadImage):
        inspect_image(png()[:40], 1000)
    with pytest.raises(PayloadTooLarge):
        inspect_image(with_ihdr_size(png(), 65535, 65535), max_pixels=64_000_000)
    with pytest.raises(PayloadTooLarge):
        inspect_image(png((40, 40)), max_pixels=1000)
