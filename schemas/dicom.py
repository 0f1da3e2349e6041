"""DICOM input (SPEC §7): the request's `dicom` options and the encodings the service reads."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Every transfer syntax the service reads, by UID, with the standard's name: the native
# encodings, deflate, and the compressed ones that pydicom decodes through its plug-ins
# (the worker's choice of plug-in per syntax: workers/dicom_codecs.py).
DICOM_NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
}
DICOM_DEFLATED = "1.2.840.10008.1.2.1.99"
DICOM_ENCAPSULATED_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, Non-Hierarchical, First-Order Prediction "
    "(Process 14 [Selection Value 1])",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless Image Compression",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
"""The compressed syntaxes: each frame is an encapsulated fragment whose length says nothing of
its pixels. Rows × Columns × frames is held to the pixel limit from the header, and the worker
holds each frame's codestream to that size before decoding it (workers/dicom_frames.py)."""
DICOM_TRANSFER_SYNTAXES = {
    **DICOM_NATIVE_SYNTAXES,
    DICOM_DEFLATED: "Deflated Explicit VR Little Endian",
    **DICOM_ENCAPSULATED_SYNTAXES,
}
DICOM_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Colour models converted to RGB: YBR by the standard's equations (PS3.3 C.7.6.3.1.2), palette
# colour through the file's lookup tables; YBR_ICT and YBR_RCT are JPEG 2000's, which its decoder
# turns back into RGB.
DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
DICOM_PHOTOMETRIC_INTERPRETATIONS = (*DICOM_MONOCHROME, *DICOM_COLOUR)
VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
# The standard's defined terms (PS3.3 C.7.6.3.1.2): an error names a refused value only if it is
# one of them, since a malformed file can put any bytes in its place.
DICOM_PHOTOMETRIC_TERMS = (
    *DICOM_PHOTOMETRIC_INTERPRETATIONS,
    "YBR_PARTIAL_422",
    "YBR_PARTIAL_420",
    "HSV",
    "ARGB",
    "CMYK",
    "XYZ",
)
DICOM_BITS_ALLOCATED = (8, 16)
DICOM_DECODING_ELEMENTS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RescaleIntercept",
    "RescaleSlope",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "PixelData",
)
"""The data elements the worker's decoder reads, by keyword. Of an uploaded file the gateway
stores only these and the transfer syntax, so that no patient, study or equipment element is
stored, unless the request asks for derived DICOM objects (`DICOM_DERIVED_ELEMENTS`)."""
DICOM_DERIVED_ELEMENTS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "SeriesInstanceUID",
    "Modality",
    "Laterality",
    "Manufacturer",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "StationName",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "PatientOrientation",
    "PixelSpacing",
    "SliceThickness",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
"""The further data elements the gateway keeps of a file whose request asks for derived DICOM
objects (§3 `output.dicom`): what they copy (the patient and study modules, the source's
equipment) or reference (its UIDs, frame of reference and plane geometry). The worker reads them
into the derived objects alone; they are stored only sealed, in the job's image, for its TTL."""


class DicomWindow(BaseModel):
    """A VOI window on the rescaled values (Hounsfield units for CT), as DICOM defines it
    (PS3.3 C.11.2.1.2): LINEAR shows values up to `center - width / 2` black, values above
    `center + width / 2 - 1` white, linearly in between; LINEAR_EXACT the same without the half
    steps (`center ± width / 2`); SIGMOID `1 / (1 + exp(-4 (x - center) / width))`."""

    model_config = ConfigDict(extra="forbid")

    center: float = Field(examples=[40])
    width: float = Field(ge=1, examples=[400])
    function: VoiFunction = Field(
        default="LINEAR", description="the VOI LUT Function; a file's own window brings its own"
    )


class DicomOptions(BaseModel):
    """How a DICOM image becomes the picture that is explained."""

    model_config = ConfigDict(extra="forbid")

    frame: int = Field(default=0, ge=0, description="frame of a multi-frame file, from 0")
    window: DicomWindow | None = Field(
        default=None,
        description="for MONOCHROME images; default: the file's VOI LUT Sequence (its first "
        "LUT), else its first Window Center/Width with its VOI LUT Function, else the full "
        "range of the rescaled values",
    )


class AppliedDicom(DicomOptions):
    """The frame and the VOI transformation as applied to a DICOM image."""

    voi_lut: bool = Field(
        default=False,
        description="the file's VOI LUT Sequence mapped the values (then `window` is none)",
    )
