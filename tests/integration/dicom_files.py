"""Real DICOM files for the tests, written by pydicom with proper file meta information."""

import io

import numpy as np
from PIL import Image
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

# Patient and study values no response, error or log may ever carry.
PLANTED_NAME = "PLANTED^Dcm7Q2x"
PLANTED_ID = "PID-PLANTED-93k1"
PLANTED_BIRTH_DATE = "19230405"
PLANTED_INSTITUTION = "INST-PLANTED-Wq4z"
PLANTED_VALUES = ("PLANTED", "Dcm7Q2x", "93k1", PLANTED_BIRTH_DATE, "Wq4z")


def dicom_file(  # noqa: PLR0913 - each keyword is an independent DICOM attribute, defaulted
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    transfer_syntax: UID = ExplicitVRLittleEndian,
    bits_stored: int | None = None,
    sop_class: UID = SecondaryCaptureImageStorage,
    planar: int = 0,
    **elements: object,
) -> bytes:
    """A DICOM file of `pixels`: rows × columns (× 3 for colour), with a leading frame axis for a
    multi-frame file. The dtype sets Bits Allocated and Pixel Representation; `elements` are
    further data elements by keyword (RescaleSlope=…, WindowCenter=…, NumberOfFrames=…)."""
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    frame_axes = pixels.ndim - (3 if colour else 2)
    dataset = _dataset(transfer_syntax, sop_class)
    dataset.SamplesPerPixel = 3 if colour else 1
    dataset.PhotometricInterpretation = photometric
    if colour:
        dataset.PlanarConfiguration = planar
    if frame_axes:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.Rows, dataset.Columns = pixels.shape[frame_axes : frame_axes + 2]
    dataset.BitsAllocated = pixels.dtype.itemsize * 8
    dataset.BitsStored = bits_stored or dataset.BitsAllocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    ordered = np.moveaxis(pixels, -1, -3) if colour and planar else pixels
    byte_order = ">" if transfer_syntax == ExplicitVRBigEndian else "<"
    dataset.PixelData = ordered.astype(ordered.dtype.newbyteorder(byte_order)).tobytes()
    if transfer_syntax == RLELossless:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.compress(RLELossless)
    return _written(dataset)


def jpeg_dicom_file(pixels: np.ndarray, **elements: object) -> bytes:
    """An 8-bit MONOCHROME2 file whose pixels are a real baseline JPEG stream, encapsulated."""
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, format="JPEG", quality=95)
    dataset = _dataset(JPEGBaseline8Bit, SecondaryCaptureImageStorage)
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = encapsulate([stream.getvalue()])
    dataset["PixelData"].VR = "OB"
    return _written(dataset)


def ct_file(image: np.ndarray, **elements: object) -> bytes:
    """A 16-bit signed CT-like file of a [0, 1] image (or frames of them): stored values 8 × its
    8-bit grey levels, rescaled to Hounsfield-like units 4 × level − 1024, with a file window
    (center −513.5, width 1021) that maps them back onto exactly level / 255."""
    levels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.int16)
    values: dict[str, object] = {
        "RescaleSlope": 0.5,
        "RescaleIntercept": -1024,
        "WindowCenter": -513.5,
        "WindowWidth": 1021,
        "Modality": "CT",
        **elements,
    }
    return dicom_file(levels * 8, sop_class=CTImageStorage, **values)


def short_rle_file(pixels: np.ndarray) -> bytes:
    """An RLE Lossless file whose header is sound but whose one frame lost its last bytes, so
    that only decoding its pixels can tell."""
    dataset = dcmread(io.BytesIO(dicom_file(pixels, transfer_syntax=RLELossless)))
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    dataset.PixelData = encapsulate([frame[:-20]])
    return _written(dataset)


def without(data: bytes, *keywords: str, file_meta: tuple[str, ...] = ()) -> bytes:
    """The file `data` with the data elements `keywords` and the file meta elements `file_meta`
    removed, written back as it is otherwise."""
    dataset = dcmread(io.BytesIO(data))
    for keyword in keywords:
        delattr(dataset, keyword)
    for keyword in file_meta:
        delattr(dataset.file_meta, keyword)
    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=False)
    return out.getvalue()


def _dataset(transfer_syntax: UID, sop_class: UID) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.PatientName = PLANTED_NAME
    dataset.PatientID = PLANTED_ID
    dataset.PatientBirthDate = PLANTED_BIRTH_DATE
    dataset.InstitutionName = PLANTED_INSTITUTION
    dataset.StudyDate = "20240102"
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    return dataset


def _written(dataset: Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()


def unsupported_syntax_file(pixels: np.ndarray, syntax: UID = HTJ2KLossless) -> bytes:
    """A file of `pixels` that names a compressed transfer syntax the service does not read
    (by default HTJ2K, which it does not list), its frame encapsulated as the syntax requires."""
    dataset = dcmread(io.BytesIO(dicom_file(pixels)))
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.PixelData = encapsulate([dataset.PixelData])
    dataset["PixelData"].VR = "OB"
    return _written(dataset)
