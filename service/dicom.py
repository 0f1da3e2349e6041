"""Checks a DICOM upload's header at the door (encoding, image layout, frames and size), and
rewrites it with only the elements decoding needs (and, for derived DICOM objects, what they
copy) before it is stored.

Only the elements that describe the pixels are parsed; patient and study elements are skipped
unread, and no error names a header value other than the image's own layout.
"""

import io
from collections.abc import Sequence

from schemas.dicom import DICOM_DECODING_ELEMENTS, DICOM_DERIVED_ELEMENTS, DicomOptions
from schemas.dicom_layout import (
    DICOM_LAYOUT_ELEMENTS,
    DICOM_PREAMBLE_BYTES,
    DICOM_UNREADABLE,
    DicomLayout,
    DicomLayoutError,
    check_dicom_layout,
)
from schemas.dicom_layout import check_dicom_options as check_options_fit
from schemas.explain import OutputOptions
from schemas.problems import ProblemKind
from service.errors import ApiError, BadImage, InvalidRequest, PayloadTooLarge, UnsupportedMedia

# The gateway's error for each kind of problem the layout rules name.
_REFUSALS: dict[ProblemKind, type[ApiError]] = {
    refusal.kind: refusal
    for refusal in (BadImage, UnsupportedMedia, PayloadTooLarge, InvalidRequest)
}


def inspect_dicom(data: bytes, max_pixels: int) -> DicomLayout:
    """The image layout of a DICOM file, refused when the service cannot read its pixels:
    UnsupportedMedia for an encoding, colour model or bit depth it does not read, PayloadTooLarge
    when Rows × Columns × frames exceeds `max_pixels` (decided before any pixel is decoded),
    BadImage when the file is malformed or its pixel data is short."""
    # pydicom and numpy under it add a third of a second to start-up; only DICOM uploads need it.
    import pydicom
    from pydicom.uid import UID

    try:
        # pydicom's validation warnings quote element values into the log; none is validated.
        with pydicom.config.disable_value_validation():
            dataset = pydicom.dcmread(io.BytesIO(data), specific_tags=list(DICOM_LAYOUT_ELEMENTS))
            elements = {keyword: dataset.get(keyword) for keyword in DICOM_LAYOUT_ELEMENTS}
            syntax = dataset.file_meta.get("TransferSyntaxUID")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed files
        raise BadImage(DICOM_UNREADABLE) from exc
    elements["TransferSyntaxUID"] = syntax
    # pydicom knows the standard's names; an unknown or private UID has none to quote.
    name = syntax.name if isinstance(syntax, UID) and syntax.is_transfer_syntax else None
    try:
        return check_dicom_layout(elements, max_pixels, transfer_syntax_name=name)
    except DicomLayoutError as refused:
        raise _REFUSALS[refused.kind](refused.detail) from refused


def minimal_dicom(data: bytes, elements: Sequence[str] = DICOM_DECODING_ELEMENTS) -> bytes:
    """The file rewritten with only `elements` (by default `DICOM_DECODING_ELEMENTS`) and, in
    its file meta, the transfer syntax: what the worker decodes the same way, without a patient,
    study or equipment element unless `elements` names it. Pixel data is copied as it is
    (encapsulated frames stay encapsulated). BadImage for a file whose kept elements cannot be
    read back."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    kept = Dataset()
    kept.file_meta = FileMetaDataset()
    kept.preamble = bytes(DICOM_PREAMBLE_BYTES)
    try:
        with pydicom.config.disable_value_validation():
            source = pydicom.dcmread(io.BytesIO(data), specific_tags=list(elements))
            for keyword in elements:
                if keyword in source:
                    # Unconverted: the value's bytes are copied, never parsed.
                    kept[keyword] = source.get_item(keyword)
            kept.file_meta.TransferSyntaxUID = source.file_meta.TransferSyntaxUID
            out = io.BytesIO()
            pydicom.dcmwrite(out, kept, enforce_file_format=False)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed files
        raise BadImage(DICOM_UNREADABLE) from exc
    return out.getvalue()


def check_dicom_output(output: OutputOptions, layout: DicomLayout | None) -> None:
    """Derived DICOM objects (`output.dicom`) are made only of a DICOM image."""
    if output.dicom and layout is None:
        raise InvalidRequest("`output.dicom` applies only to DICOM images.")


def kept_dicom_elements(output: OutputOptions) -> tuple[str, ...]:
    """The elements of an uploaded file the job needs: what decoding reads, and what derived
    DICOM objects copy when the request asks for them."""
    return DICOM_DECODING_ELEMENTS + (DICOM_DERIVED_ELEMENTS if output.dicom else ())


def check_dicom_options(options: DicomOptions | None, layout: DicomLayout | None) -> None:
    """The request's `dicom` options must fit the file: a DICOM image, an existing frame, and a
    window only on a monochrome image."""
    if options is None:
        return
    if layout is None:
        raise InvalidRequest("`dicom` options apply only to DICOM images.")
    try:
        check_options_fit(options, layout)
    except DicomLayoutError as refused:
        raise _REFUSALS[refused.kind](refused.detail) from refused
