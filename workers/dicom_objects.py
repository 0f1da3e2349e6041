"""Derived DICOM objects of one explanation (SPEC §3 `output.dicom`): a Secondary Capture with the
overlay burned in, a Parametric Map of the scores and a binary Segmentation of their top share.

Each object continues the source's patient and study (same Study Instance UID, Frame of Reference
where the source has one), starts a series of its own and references the source image, and the
frame explained, in its Referenced Series and Source Image sequences. The patient, study and
equipment values are copied from the source header into the object and nowhere else.
"""

import base64
import io
import logging
import re
import warnings
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, replace

import highdicom as hd
import numpy as np
from pydicom import config, dcmread, dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pydicom.valuerep import validate_value

from schemas import SERVICE_VERSION
from schemas.dicom_layout import DICOM_UNREADABLE, is_dicom
from schemas.explain import DegenerateKind, DicomKind, OutputOptions
from workers import render
from workers.decoded import DecodedImage, DicomOptionError, ImageDecodeError
from workers.repository import LoadedModel

# highdicom narrates each module it copies at INFO, and may print a dataset at DEBUG.
logging.getLogger("highdicom").setLevel(logging.WARNING)

MANUFACTURER = "Glimpse"
# Series numbers of the derived series, one per kind, so that a viewer lists them in this order.
_SERIES_NUMBERS: dict[DicomKind, int] = {
    "secondary_capture": 9101,
    "parametric_map": 9102,
    "segmentation": 9103,
}
_PATIENT_SEXES = ("M", "F", "O")
# The UIDs every derived object references the source by.
_REFERENCED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# The value representations of the patient, study, equipment and geometry values they copy.
_CHECKED_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"})
_CS_LENGTH = 16
_LO_LENGTH = 64
_NOT_CS = re.compile(r"[^A-Z0-9_ ]")
_NOT_LO = re.compile(r"[\\\x00-\x1f\x7f]")
# Patient directions (PS3.3 C.7.6.1.1.1) along +x, −x, +y, −y, +z, −z of the patient system.
_DIRECTIONS = "LRPAHF"
# Source elements a derived object carries over as they are: the rest of the patient and study
# modules and the equipment's institution, which highdicom does not copy by itself.
_CARRIED_ELEMENTS = (
    "InstitutionName",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "StudyDescription",
)

# Patient and study elements every derived object has, empty when the source lacks them.
_TYPE_2_ELEMENTS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)

_MULTI_FRAME_ELEMENTS = (
    "NumberOfFrames",
    "FrameIncrementPointer",
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
    "PixelData",
)
# Where an enhanced multi-frame file keeps each single-frame geometry element.
_GEOMETRY_GROUPS = (
    ("PixelMeasuresSequence", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PlanePositionSequence", "ImagePositionPatient"),
)
_UNIT_GEOMETRY: dict[str, list[float] | float] = {
    "PixelSpacing": [1.0, 1.0],
    "SliceThickness": 1.0,
    "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "ImagePositionPatient": [0.0, 0.0, 0.0],
}


@dataclass(frozen=True)
class DerivedDescription:
    """What the derived objects say about the explanation they hold."""

    method: str
    class_index: int
    label: str
    model_id: str
    model_version: str
    weights_sha256: str
    threshold: float
    signed: bool = False
    frame: int = 0
    warning: DegenerateKind | None = None

    @classmethod
    def of(
        cls, method: str, class_index: int, model: LoadedModel, output: OutputOptions
    ) -> "DerivedDescription":
        """The description of `method`'s map for `class_index` by `model`, as `output` asks
        (`signed`, `frame` and `warning` are set by `replace`)."""
        return cls(
            method=method,
            class_index=class_index,
            label=model.manifest.labels[class_index],
            model_id=model.manifest.id,
            model_version=model.manifest.version,
            weights_sha256=model.sha256,
            threshold=output.threshold,
        )

    def series_description(self, kind: DicomKind) -> str:
        """LO (≤ 64): the overlay's warning label of a degenerate map first, where there is one
        (a viewer lists series by it), then method, target and model, then the kind; cut at the
        standard's limit."""
        target = f"class {self.class_index} {self.label}"
        flag = f"{render.WARNING_LABELS[self.warning]} " if self.warning else ""
        return _lo(
            f"{flag}{self.method} {target} {self.model_id} {self.model_version} {_TAGS[kind]}"
        )

    def content_label(self) -> str:
        """CS (≤ 16, upper case): the method."""
        return _NOT_CS.sub("_", self.method.upper())[:_CS_LENGTH]

    def content_description(self) -> str:
        """LO (≤ 64): model id, version, the head of the weights' SHA-256 and the target."""
        head = f"{self.model_id} {self.model_version} sha256:{self.weights_sha256[:16]}"
        return _lo(f"{head} class {self.class_index} {self.label}")

    def derivation(self) -> str:
        """ST (≤ 1024): everything, the weights' full SHA-256 included."""
        text = (
            f"Glimpse {SERVICE_VERSION}: {self.method} attribution for class {self.class_index} "
            f"({self.label}) of model {self.model_id} version {self.model_version}, weights "
            f"sha256 {self.weights_sha256}"
        )
        if self.warning:
            text += f"; the map is degenerate ({self.warning}), see the explanation's checks"
        return _NOT_LO.sub("/", text)[:1024]


_TAGS: dict[DicomKind, str] = {
    "secondary_capture": "overlay",
    "parametric_map": "map",
    "segmentation": "seg",
}


class DerivedObjectError(Exception):
    """The derived objects could not be built; the message names no header value."""


def source_header(data: bytes) -> Dataset:
    """The header of the DICOM file `data`, its pixel data left unread, without the top-level
    values that break their value representation (they would fail, or be quoted by, the
    derived objects' checks). `DicomOptionError` when `data` is not DICOM, or lacks a valid UID
    the derived objects reference: derived objects exist only of DICOM images."""
    if not is_dicom(data):
        raise DicomOptionError("output.dicom applies only to DICOM images")
    try:
        # pydicom's validation warnings quote element values into the log; none is validated
        # here, each is checked below by `_valid`, which raises instead.
        with config.disable_value_validation():
            header = dcmread(io.BytesIO(data), stop_before_pixels=True)
            malformed = [element.tag for element in header if not _valid(element)]
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed files
        raise ImageDecodeError(DICOM_UNREADABLE) from exc
    for tag in malformed:
        del header[tag]
    for keyword in _REFERENCED_UIDS:
        if not header.get(keyword):
            raise DicomOptionError(
                f"derived DICOM objects reference the source's {keyword}, which this file lacks "
                "or gives malformed"
            )
    return header


def _valid(element: DataElement) -> bool:
    """Whether a top-level string value keeps to its value representation."""
    if element.VR not in _CHECKED_VRS or element.value is None:
        return True
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    try:
        for value in values:
            validate_value(element.VR, value, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def with_source_header(image: DecodedImage, data: bytes) -> DecodedImage:
    """`image` holding the header of its DICOM file `data`, for the derived objects."""
    return replace(image, source=source_header(data))


def explanation_objects(
    image: DecodedImage,
    scores: np.ndarray,
    overlay: np.ndarray,
    description: DerivedDescription,
    kinds: Sequence[DicomKind],
) -> dict[DicomKind, str]:
    """Base64 of each derived object in `kinds`, of a map at the image's size (`scores` as
    normalised) and its overlay as rendered for the response (`render.blend_overlay`, a
    degenerate map's warning marked). `image.source` must hold the header
    (`with_source_header`)."""
    if image.source is None or image.dicom is None:
        raise DicomOptionError("output.dicom applies only to DICOM images")
    frame = replace(description, frame=image.dicom.frame)
    try:
        built = derived_objects(image.source, overlay, scores, frame, kinds)
    except Exception:  # noqa: BLE001 - highdicom and pydicom raise many types
        # Not chained: their messages may quote a header value, which the log must not show.
        raise DerivedObjectError("the derived DICOM objects could not be built") from None
    return {kind: base64.b64encode(data).decode("ascii") for kind, data in built.items()}


def derived_objects(
    source: Dataset,
    overlay: np.ndarray,
    scores: np.ndarray,
    description: DerivedDescription,
    kinds: Sequence[DicomKind],
) -> dict[DicomKind, bytes]:
    """The Part 10 bytes of each derived object in `kinds`, built from the source header
    (`source`, pixel data not needed), the rendered overlay (uint8 H×W×3 RGB at the source's
    size) and the map (float32 H×W at the source's size, normalised to [0, 1], or [-1, 1] when
    signed)."""
    # pydicom's validation and highdicom's warnings may quote a header value; neither may reach
    # the log (`source_header` has checked the values already).
    with config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _built(source, overlay, scores, description, kinds)


def _built(
    source: Dataset,
    overlay: np.ndarray,
    scores: np.ndarray,
    description: DerivedDescription,
    kinds: Sequence[DicomKind],
) -> dict[DicomKind, bytes]:
    reference = _single_frame_reference(source, description.frame)
    builders = {
        "secondary_capture": lambda: _secondary_capture(reference, overlay, description),
        "parametric_map": lambda: _parametric_map(reference, scores, description),
        "segmentation": lambda: _segmentation(reference, scores, description),
    }
    built: dict[DicomKind, bytes] = {}
    for kind in kinds:
        derived = builders[kind]()
        _carry_over(source, derived)
        _reference_source(derived, source, description.frame)
        built[kind] = _part10(derived)
    return built


def top_share_mask(scores: np.ndarray, share: float) -> np.ndarray:
    """The pixels among the highest `share` of the map: at least ceil(share × size) of them, all
    those scoring at least the lowest of these (so ties are kept together)."""
    count = max(1, int(np.ceil(share * scores.size)))
    cutoff = np.partition(scores.ravel(), scores.size - count)[scores.size - count]
    return scores >= cutoff


def _single_frame_reference(source: Dataset, frame: int) -> Dataset:
    """The source header as highdicom reads a single-frame source image: an enhanced multi-frame
    file's geometry of the frame explained moved to the top level, the frame itself referenced
    afterwards by its number (`_reference_source`)."""
    reference = deepcopy(source)
    _lift_frame_geometry(reference, frame)
    for keyword in _MULTI_FRAME_ELEMENTS:
        if keyword in reference:
            delattr(reference, keyword)
    for keyword in _TYPE_2_ELEMENTS:
        if keyword not in reference:
            setattr(reference, keyword, None)
    if reference.PatientSex not in _PATIENT_SEXES:
        reference.PatientSex = None  # an enumerated value: empty rather than another
    if "NumberOfFrames" in source:
        # highdicom reads a multi-frame class's geometry from functional groups a legacy
        # multi-frame file lacks; the frame stands alone here, and the class is restored after.
        reference.SOPClassUID = SecondaryCaptureImageStorage
    return reference


def _lift_frame_geometry(reference: Dataset, frame: int) -> None:
    """Pixel spacing, orientation and position of `frame` from an enhanced multi-frame file's
    functional groups (the frame's own over the shared ones), as single-frame elements."""
    groups = [*reference.get("SharedFunctionalGroupsSequence", [])]
    per_frame = reference.get("PerFrameFunctionalGroupsSequence", [])
    if frame < len(per_frame):
        groups.append(per_frame[frame])
    for group in groups:
        for sequence, keyword in _GEOMETRY_GROUPS:
            for item in group.get(sequence, []):
                if keyword in item:
                    reference[keyword] = deepcopy(item[keyword])


def _with_patient_geometry(reference: Dataset) -> Dataset:
    """The reference as a Parametric Map or Segmentation in patient coordinates needs it: a source
    without a Frame of Reference (a Secondary Capture) gets a new one, and a source without plane
    geometry the unit one (1 mm pixels, axial, at the origin), which the IOD requires."""
    if "FrameOfReferenceUID" in reference and all(
        keyword in reference for keyword in _UNIT_GEOMETRY
    ):
        return reference
    placed = deepcopy(reference)
    if "FrameOfReferenceUID" not in placed:
        placed.FrameOfReferenceUID = hd.UID()
    for keyword, value in _UNIT_GEOMETRY.items():
        if keyword not in placed:
            setattr(placed, keyword, value)
    return placed


def _secondary_capture(
    reference: Dataset, overlay: np.ndarray, description: DerivedDescription
) -> Dataset:
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=np.ascontiguousarray(overlay, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=_SERIES_NUMBERS["secondary_capture"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # Required by highdicom; replaced below by the source's.
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=description.series_description("secondary_capture"),
    )
    orientation = _patient_orientation(reference)
    image.PatientOrientation = list(orientation or ())  # type 2: empty when unknown
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.DerivationDescription = description.derivation()
    image.BurnedInAnnotation = "NO"
    image.SoftwareVersions = SERVICE_VERSION
    return image


def _parametric_map(
    reference: Dataset, scores: np.ndarray, description: DerivedDescription
) -> Dataset:
    low = -1.0 if description.signed else 0.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=description.content_label(),
        lut_explanation=_lo(f"{description.method} attribution, normalised"),
        unit=codes.UCUM.NoUnits,
        value_range=(low, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    return hd.pm.ParametricMap(
        source_images=[_with_patient_geometry(reference)],
        pixel_array=np.ascontiguousarray(scores, dtype=np.float32)[None],
        series_instance_uid=hd.UID(),
        series_number=_SERIES_NUMBERS["parametric_map"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=_lo(description.model_id),
        software_versions=SERVICE_VERSION,
        device_serial_number=description.weights_sha256[:16],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=(low + 1.0) / 2, window_width=1.0 - low)
        ],
        content_description=description.content_description(),
        content_label=description.content_label(),
        series_description=description.series_description("parametric_map"),
    )


def _segmentation(
    reference: Dataset, scores: np.ndarray, description: DerivedDescription
) -> Dataset:
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=_lo(f"top {description.threshold:g} of {description.method}"),
        segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
        segmented_property_type=codes.DCM.RegionInSpace,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=_lo(f"Glimpse {description.method}"),
            version=SERVICE_VERSION,
            family=codes.cid7162.ArtificialIntelligence,
        ),
    )
    mask = top_share_mask(scores, description.threshold)
    return hd.seg.Segmentation(
        source_images=[_with_patient_geometry(reference)],
        pixel_array=mask[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=_SERIES_NUMBERS["segmentation"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=_lo(description.model_id),
        software_versions=SERVICE_VERSION,
        device_serial_number=description.weights_sha256[:16],
        content_description=description.content_description(),
        content_label=description.content_label(),
        omit_empty_frames=False,
        series_description=description.series_description("segmentation"),
    )


def _patient_orientation(reference: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation, else the main direction of its rows and columns by
    Image Orientation (Patient); None when it has neither."""
    given = reference.get("PatientOrientation")
    if given and len(given) == 2 and all(str(v) in _DIRECTIONS for v in given):
        return str(given[0]), str(given[1])
    cosines = reference.get("ImageOrientationPatient")
    if not cosines or len(cosines) != 6:
        return None
    row, column = np.asarray(cosines[:3], float), np.asarray(cosines[3:], float)
    return _main_direction(row), _main_direction(column)


def _main_direction(cosines: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(cosines)))
    return _DIRECTIONS[2 * axis + (0 if cosines[axis] > 0 else 1)]


def _carry_over(source: Dataset, derived: Dataset) -> None:
    for keyword in _CARRIED_ELEMENTS:
        if keyword in source and keyword not in derived:
            derived[keyword] = deepcopy(source[keyword])
    if "Laterality" not in derived and derived.SOPClassUID != SegmentationStorage:
        # Type 2C: empty unless the source names the side of a paired body part (a
        # Segmentation states laterality per segment instead).
        derived.Laterality = source.get("Laterality")


def _reference_source(derived: Dataset, source: Dataset, frame: int) -> None:
    """Reference the source as it is: its own SOP Class (a multi-frame source was built upon as a
    single-frame one) and, in each Source Image Sequence item, the frame explained; and list the
    source in the object's own Source Image Sequence where highdicom did not."""
    multi_frame = int(source.get("NumberOfFrames") or 1) > 1
    for item in _references_to(derived, source.SOPInstanceUID):
        item.ReferencedSOPClassUID = source.SOPClassUID
    if "SourceImageSequence" not in derived and "SharedFunctionalGroupsSequence" not in derived:
        derived.SourceImageSequence = DicomSequence([_instance_reference(source)])
    if "ReferencedSeriesSequence" not in derived:
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series.ReferencedInstanceSequence = DicomSequence([_instance_reference(source)])
        derived.ReferencedSeriesSequence = DicomSequence([series])
    if multi_frame:
        if "ReferencedSeriesSequence" in derived:
            # highdicom shares its items with the Source Image Sequence; this one names no frame.
            derived.ReferencedSeriesSequence = deepcopy(derived.ReferencedSeriesSequence)
        for item in _references_to(derived, source.SOPInstanceUID, "SourceImageSequence"):
            item.ReferencedFrameNumber = frame + 1


def _instance_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _references_to(
    dataset: Dataset, instance_uid: str, sequence: str | None = None
) -> list[Dataset]:
    """Every sequence item, at any depth, that references `instance_uid` (in `sequence` only,
    if given)."""
    found: list[Dataset] = []
    for element in dataset:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if item.get("ReferencedSOPInstanceUID") == instance_uid and (
                sequence is None or element.keyword == sequence
            ):
                found.append(item)
            found.extend(_references_to(item, instance_uid, sequence))
    return found


def _part10(dataset: Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()


def _lo(text: str) -> str:
    """`text` as one Long String value: no backslash (the value separator) or control
    character, at most 64 characters."""
    return _NOT_LO.sub("/", text)[:_LO_LENGTH].rstrip()
