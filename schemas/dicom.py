"""DICOM input (SPEC §7): the request's `dicom` options and the encodings the service reads."""

from pydantic import BaseModel, ConfigDict, Field

# Transfer syntaxes pydicom decodes by itself, without plugins: the native encodings and RLE.
# Deflated files are left out: they inflate whole before any size check could refuse them.
DICOM_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
DICOM_PHOTOMETRIC_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2", "RGB")
# The standard's defined terms (PS3.3 C.7.6.3.1.2): an error names a refused value only if it is
# one of them, since a malformed file can put any bytes in its place.
DICOM_PHOTOMETRIC_TERMS = (
    *DICOM_PHOTOMETRIC_INTERPRETATIONS,
    "PALETTE COLOR",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
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
    "RescaleIntercept",
    "RescaleSlope",
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
    (PS3.3 C.11.2.1.2.1, linear): values up to `center - width / 2` show black, values above
    `center + width / 2 - 1` white, linearly in between."""

    model_config = ConfigDict(extra="forbid")

    center: float = Field(examples=[40])
    width: float = Field(ge=1, examples=[400])


class DicomOptions(BaseModel):
    """How a DICOM image becomes the picture that is explained."""

    model_config = ConfigDict(extra="forbid")

    frame: int = Field(default=0, ge=0, description="frame of a multi-frame file, from 0")
    window: DicomWindow | None = Field(
        default=None,
        description="for MONOCHROME images; default: the file's first Window Center/Width, "
        "else the full range of the rescaled values",
    )
