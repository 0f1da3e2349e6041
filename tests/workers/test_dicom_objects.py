"""The derived DICOM objects of workers/dicom_objects.py, each checked by dicom3tools' dciodvfy
and read back by pydicom and highdicom, for three kinds of source."""

import io
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage

from schemas.explain import DicomKind
from workers.decoded import DicomOptionError
from workers.demo.data import make_sample, to_png_bytes
from workers.dicom_objects import (
    DerivedDescription,
    derived_objects,
    source_header,
    top_share_mask,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from dicom_files import (  # type: ignore[import-not-found]  # noqa: E402
    PLANTED_BIRTH_DATE,
    PLANTED_ID,
    PLANTED_INSTITUTION,
    PLANTED_NAME,
    ct_file,
    dicom_file,
    without,
)

ROWS, COLUMNS = 24, 30
KINDS: list[DicomKind] = ["secondary_capture", "parametric_map", "segmentation"]
SHA256 = "0123456789abcdef" * 4


def _sources() -> dict[str, tuple[bytes, int]]:
    """Each source file and the frame explained of it."""
    rng = np.random.default_rng(5)
    image = rng.random((ROWS, COLUMNS))
    return {
        "ct-16-bit": (
            ct_file(
                image,
                FrameOfReferenceUID="1.2.826.0.1.3680043.8.498.1",
                PixelSpacing=[0.7, 0.7],
                SliceThickness=1.25,
                ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                ImagePositionPatient=[-10.0, -20.0, 30.0],
                StudyTime="101500",
                StudyID="S1",
            ),
            0,
        ),
        "rgb": (
            dicom_file(rng.integers(0, 256, (ROWS, COLUMNS, 3), np.uint8), photometric="RGB"),
            0,
        ),
        "multi-frame": (
            dicom_file(
                rng.integers(0, 4096, (3, ROWS, COLUMNS), np.uint16),
                bits_stored=12,
                sop_class=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                FrameIncrementPointer=0x00181063,
                FrameTime=40.0,
            ),
            2,
        ),
    }


def _functional_groups(frames: int) -> dict[str, object]:
    """Shared and per-frame geometry as an enhanced multi-frame file holds it: frame k at
    z = 5 k mm."""
    shared = Dataset()
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 5.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    per_frame = []
    for k in range(frames):
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        group.PlanePositionSequence = DicomSequence([position])
        per_frame.append(group)
    return {
        "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.2",
        "SharedFunctionalGroupsSequence": DicomSequence([shared]),
        "PerFrameFunctionalGroupsSequence": DicomSequence(per_frame),
    }


def _enhanced_source() -> tuple[bytes, int]:
    pixels = np.random.default_rng(8).integers(0, 4096, (4, ROWS, COLUMNS), np.uint16)
    data = dicom_file(
        pixels,
        bits_stored=12,
        sop_class=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        FrameIncrementPointer=0x00181063,
        FrameTime=40.0,
        **_functional_groups(4),
    )
    return data, 1


SOURCES = {**_sources(), "functional-groups": _enhanced_source()}


def description(frame: int, signed: bool) -> DerivedDescription:
    return DerivedDescription(
        method="integrated_gradients",
        class_index=1,
        label="nodule",
        model_id="demo-lesions",
        model_version="3",
        weights_sha256=SHA256,
        threshold=0.1,
        signed=signed,
        frame=frame,
    )


def signed_map(seed: int) -> np.ndarray:
    """A normalised signed map whose extreme is exactly −1 or 1, of distinct values."""
    values = np.random.default_rng(seed).uniform(-1, 1, (ROWS, COLUMNS)).astype(np.float32)
    return values / np.abs(values).max()


@pytest.fixture(scope="module", params=sorted(SOURCES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    data, frame = SOURCES[request.param]
    source = dcmread(io.BytesIO(data), stop_before_pixels=True)
    scores = signed_map(len(request.param))
    overlay = np.random.default_rng(1).integers(0, 256, (ROWS, COLUMNS, 3), np.uint8)
    objects = derived_objects(source, overlay, scores, description(frame, True), KINDS)
    folder = tmp_path_factory.mktemp(request.param)
    paths = {}
    for kind, encoded in objects.items():
        paths[kind] = folder / f"{kind}.dcm"
        paths[kind].write_bytes(encoded)
    return {"source": source, "frame": frame, "scores": scores, "overlay": overlay, "paths": paths}


def dciodvfy(path: Path) -> list[str]:
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return (checked.stdout + checked.stderr).splitlines()


@pytest.mark.parametrize("kind", KINDS)
def test_dciodvfy_finds_no_error(built: dict, kind: DicomKind) -> None:
    lines = dciodvfy(built["paths"][kind])

    assert lines, "dciodvfy said nothing"
    iod = {"secondary_capture": "SCImage", "parametric_map": "ParametricMap"}
    assert iod.get(kind, "Segmentation") in lines  # the IOD it recognised and checked against
    assert [line for line in lines if line.startswith("Error")] == []


@pytest.mark.parametrize("kind", KINDS)
def test_each_object_continues_the_study_and_references_the_frame(
    built: dict, kind: DicomKind
) -> None:
    source: Dataset = built["source"]
    derived = dcmread(built["paths"][kind])

    assert derived.StudyInstanceUID == source.StudyInstanceUID
    assert derived.SeriesInstanceUID != source.SeriesInstanceUID
    assert derived.SOPInstanceUID != source.SOPInstanceUID
    if "FrameOfReferenceUID" in source and kind != "secondary_capture":  # not in the SC IOD
        assert derived.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert (derived.PatientName, derived.PatientID, derived.PatientBirthDate) == (
        PLANTED_NAME,
        PLANTED_ID,
        PLANTED_BIRTH_DATE,
    )
    assert derived.InstitutionName == PLANTED_INSTITUTION
    (series,) = derived.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    (instance,) = series.ReferencedInstanceSequence
    assert instance.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == source.SOPClassUID
    assert "ReferencedFrameNumber" not in instance
    sources = [*derived.get("SourceImageSequence", [])]
    for group in derived.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in group.DerivationImageSequence:
            sources.extend(derivation.SourceImageSequence)
    assert sources
    for item in sources:
        assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert item.ReferencedSOPClassUID == source.SOPClassUID
        expected_frame = built["frame"] + 1 if "NumberOfFrames" in source else None
        assert item.get("ReferencedFrameNumber") == expected_frame


@pytest.mark.parametrize("kind", KINDS)
def test_each_object_names_method_target_model_and_weights(built: dict, kind: DicomKind) -> None:
    derived = dcmread(built["paths"][kind])

    named = derived.SeriesDescription
    assert len(named) <= 64
    assert all(part in named for part in ("integrated_gradients", "class 1", "demo-lesions"))
    if kind == "secondary_capture":
        assert SHA256 in derived.DerivationDescription
    else:
        assert derived.ContentLabel == "INTEGRATED_GRADI"
        assert len(derived.ContentDescription) <= 64
        assert SHA256[:16] in derived.ContentDescription
        assert "demo-lesions 3" in derived.ContentDescription


def test_the_secondary_capture_holds_the_overlay(built: dict) -> None:
    derived = dcmread(built["paths"]["secondary_capture"])

    assert derived.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(derived.pixel_array, built["overlay"])


def test_the_parametric_map_holds_the_scores_as_float32(built: dict) -> None:
    derived = dcmread(built["paths"]["parametric_map"])
    parametric = hd.pm.ParametricMap.from_dataset(derived)

    stored = parametric.pixel_array.reshape(ROWS, COLUMNS)
    assert stored.dtype == np.float32
    # float32 in, float32 stored: bit for bit.
    np.testing.assert_array_equal(stored, built["scores"])
    (mapping,) = derived.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence
    assert (
        mapping.DoubleFloatRealWorldValueFirstValueMapped,
        mapping.DoubleFloatRealWorldValueLastValueMapped,
    ) == (
        -1.0,
        1.0,
    )
    voi = derived.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (0.0, 2.0)


def test_the_frame_explained_keeps_its_place_in_the_frame_of_reference() -> None:
    data, frame = SOURCES["functional-groups"]
    source = dcmread(io.BytesIO(data), stop_before_pixels=True)
    scores = np.abs(signed_map(4))
    overlay = np.zeros((ROWS, COLUMNS, 3), np.uint8)

    objects = derived_objects(
        source, overlay, scores, description(frame, False), ["parametric_map", "segmentation"]
    )

    for encoded in objects.values():
        derived = dcmread(io.BytesIO(encoded))
        assert derived.FrameOfReferenceUID == source.FrameOfReferenceUID
        (group,) = derived.PerFrameFunctionalGroupsSequence
        position = group.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == [0.0, 0.0, 5.0 * frame]
        measures = derived.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == [0.5, 0.5]


def test_the_segmentation_marks_the_top_share_of_the_map(built: dict) -> None:
    segmentation = hd.seg.Segmentation.from_dataset(dcmread(built["paths"]["segmentation"]))

    assert segmentation.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    mask = segmentation.pixel_array.reshape(ROWS, COLUMNS)
    scores = built["scores"]
    # The map's values are distinct: the share is exactly ceil(0.1 × size) pixels, the highest.
    count = int(np.ceil(0.1 * scores.size))
    highest = np.zeros(scores.size, bool)
    highest[np.argsort(scores, axis=None)[-count:]] = True
    np.testing.assert_array_equal(mask.astype(bool), highest.reshape(scores.shape))


def test_ties_at_the_cutoff_are_marked_together() -> None:
    scores = np.array([[0.0, 0.5, 0.5], [0.5, 1.0, 0.2]], np.float32)

    mask = top_share_mask(scores, 0.3)  # ceil(1.8) = 2 pixels, but the second ties with two more

    np.testing.assert_array_equal(mask, scores >= 0.5)


def test_an_unsigned_map_maps_onto_zero_to_one(tmp_path: Path) -> None:
    data, frame = SOURCES["ct-16-bit"]
    source = dcmread(io.BytesIO(data), stop_before_pixels=True)
    scores = np.abs(signed_map(3))
    overlay = np.zeros((ROWS, COLUMNS, 3), np.uint8)

    (encoded,) = derived_objects(
        source, overlay, scores, description(frame, False), ["parametric_map"]
    ).values()
    path = tmp_path / "pm.dcm"
    path.write_bytes(encoded)

    derived = dcmread(path)
    (mapping,) = derived.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence
    assert (
        mapping.DoubleFloatRealWorldValueFirstValueMapped,
        mapping.DoubleFloatRealWorldValueLastValueMapped,
    ) == (
        0.0,
        1.0,
    )
    np.testing.assert_array_equal(derived.FloatPixelData, scores.astype("<f4").tobytes())
    assert [line for line in dciodvfy(path) if line.startswith("Error")] == []


def test_descriptions_keep_to_their_value_representations() -> None:
    long = DerivedDescription(
        method="guided_gradcam",
        class_index=12,
        label="a label\\with a backslash, far longer than any Long String could hold",
        model_id="m" * 64,
        model_version="2026.12",
        weights_sha256=SHA256,
        threshold=0.1,
    )

    assert long.content_label() == "GUIDED_GRADCAM"
    for text in (
        long.series_description("segmentation"),
        long.content_description(),
        description(0, False).series_description("parametric_map"),
    ):
        assert 0 < len(text) <= 64
        assert "\\" not in text  # DICOM's value separator
    assert SHA256 in long.derivation() and len(long.derivation()) <= 1024


def test_a_png_has_no_header_to_derive_from() -> None:
    with pytest.raises(DicomOptionError, match="output.dicom"):
        source_header(to_png_bytes(make_sample(3).image))


def test_malformed_header_values_are_left_out_and_never_quoted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    malformed = {
        "PatientBirthDate": "1923-04-05Q7",
        "StudyDate": "Q7yday",
        "PatientSex": "Q7X",
    }
    with config.disable_value_validation():
        data = ct_file(np.zeros((ROWS, COLUMNS)), **malformed)
    caplog.set_level(logging.DEBUG)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objects = derived_objects(
            source_header(data),
            np.zeros((ROWS, COLUMNS, 3), np.uint8),
            signed_map(2),
            description(0, True),
            KINDS,
        )

    said = [str(warning.message) for warning in caught] + [r.getMessage() for r in caplog.records]
    assert [line for line in said if "Q7" in line] == []
    for kind, encoded in objects.items():
        derived = dcmread(io.BytesIO(encoded))
        assert (derived.PatientBirthDate, derived.StudyDate, derived.PatientSex) == ("", "", "")
        assert derived.PatientName == PLANTED_NAME
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(encoded)
        assert [line for line in dciodvfy(path) if line.startswith("Error")] == []


def test_a_source_without_its_uids_cannot_be_referenced() -> None:
    data = ct_file(np.zeros((ROWS, COLUMNS)))

    with pytest.raises(DicomOptionError, match="StudyInstanceUID"):
        source_header(without(data, "StudyInstanceUID"))
