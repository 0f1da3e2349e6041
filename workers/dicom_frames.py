"""A compressed frame's own size, read from its codestream's header before it is decoded.

A JPEG, JPEG-LS or JPEG 2000 decoder allocates the image its codestream declares, whatever the
DICOM header says; a frame of a few bytes can declare 60000 × 60000 samples. The DICOM header's
Rows × Columns × frames has already been held to the pixel limit, so a frame whose codestream
declares another size is refused before any decoder sees it.
"""

import struct

from workers.decoded import ImageDecodeError

JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
JPEG_FAMILY = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
)
# Start-of-frame markers (ISO/IEC 10918-1 B.1.1.3; 0xF7 is JPEG-LS's SOF55, ISO/IEC 14495-1):
# each is followed by its length, the sample precision, then the lines and samples per line.
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_J2K_SIZ = b"\xff\x4f\xff\x51"  # SOC, then SIZ (ISO/IEC 15444-1 A.5.1)
_J2K_SEARCH_BYTES = 4096  # a JP2 wrapper's boxes come first; the codestream starts within them


def check_frame_size(frame: bytes, transfer_syntax: str, rows: int, columns: int) -> None:
    """`ImageDecodeError` when the compressed `frame` declares another size than rows × columns
    (or none that can be read); nothing for the syntaxes whose decoder follows the DICOM header
    (RLE) or that are not compressed."""
    if transfer_syntax in JPEG_2000:
        size = _j2k_size(frame)
    elif transfer_syntax in JPEG_FAMILY:
        size = _jpeg_size(frame)
    else:
        return
    if size != (rows, columns):
        raise ImageDecodeError(
            f"the DICOM frame's codestream declares another size than the header's {columns}×{rows}"
        )


def _jpeg_size(stream: bytes) -> tuple[int, int] | None:
    """(lines, samples per line) from the first start-of-frame segment, if one is found."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 9 <= len(stream):
        if stream[position] != 0xFF:
            return None
        marker = stream[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in _STANDALONE_MARKERS:
            position += 2
        elif marker in _SOF_MARKERS:
            lines, samples = struct.unpack(">HH", stream[position + 5 : position + 9])
            return lines, samples
        else:
            (length,) = struct.unpack(">H", stream[position + 2 : position + 4])
            position += 2 + length
    return None


def _j2k_size(stream: bytes) -> tuple[int, int] | None:
    """(height, width) of the image area from the SIZ segment, if one is found."""
    start = stream.find(_J2K_SIZ, 0, _J2K_SEARCH_BYTES)
    if start < 0 or len(stream) < start + 24:
        return None
    # SOC (2), SIZ (2), Lsiz (2), Rsiz (2), then Xsiz, Ysiz, XOsiz, YOsiz (4 bytes each).
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", stream[start + 8 : start + 24])
    return ysiz - yosiz, xsiz - xosiz
