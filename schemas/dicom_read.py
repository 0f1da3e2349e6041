"""Reading a DICOM file's header elements, the same way on both sides, with deflate bounded.

A Deflated Explicit VR Little Endian file compresses its whole data set, header included, so
its Rows and Columns cannot be read before it is inflated. It is inflated here at most to the
size of the largest image the service accepts (`max_pixels` of 3 samples of 16 bits) and a
margin for the other elements; a file that inflates further is refused as too large before
anything of it is parsed. pydicom alone would inflate it whole, however large.
"""

import io
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from schemas import problems
from schemas.dicom import DICOM_DEFLATED
from schemas.dicom_layout import DicomLayoutError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DEFLATED_MARGIN_BYTES = 1 << 20
"""What an inflated data set may hold besides its largest accepted pixel data."""
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def inflated_limit(max_pixels: int) -> int:
    """The most bytes a deflated data set may inflate to."""
    return max_pixels * 3 * 2 + DEFLATED_MARGIN_BYTES


def read_dicom(data: bytes, keywords: Sequence[str], max_pixels: int) -> "Dataset":
    """The file's elements `keywords` and its file meta, read by pydicom. A deflated file comes
    back inflated, its file meta naming Explicit VR Little Endian, what its data set now is.

    Raises `DicomLayoutError` (413) for a deflated file that inflates past `inflated_limit`;
    pydicom's own errors for a malformed file."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.tag import Tag
    from pydicom.uid import UID

    source = io.BytesIO(data)
    read_preamble(source, False)
    file_meta = _read_file_meta_info(source)
    if file_meta.get("TransferSyntaxUID") != DICOM_DEFLATED:
        return pydicom.dcmread(io.BytesIO(data), specific_tags=list(keywords))
    inflated = _bounded_inflate(data[source.tell() :], inflated_limit(max_pixels))
    dataset = read_dataset(
        io.BytesIO(inflated),
        is_implicit_VR=False,
        is_little_endian=True,
        specific_tags=[Tag(keyword) for keyword in keywords],
    )
    file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    dataset.file_meta = file_meta
    dataset.set_original_encoding(False, True)
    return dataset


def _bounded_inflate(deflated: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(deflated, limit + 1)
    if len(inflated) > limit:
        raise DicomLayoutError(
            problems.TOO_LARGE,
            f"The deflated DICOM file inflates to more than {limit} bytes, more than the "
            "largest accepted image needs.",
        )
    return inflated
