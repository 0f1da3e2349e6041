"""What the gateway derives from an explain request before it queues it."""

from schemas.dicom import DicomOptions, DicomWindow
from schemas.explain import ExplainOptions
from schemas.models import InputSpec, ModelInfo
from service.admission import explanation_cache_key
from service.auth import Principal

INFO = ModelInfo(
    id="m",
    version="1",
    format="onnx",
    input=InputSpec(channels=1, height=8, width=8, mean=[0.5], std=[0.25]),
    labels=["a", "b"],
    cam_layers=["x"],
    default_cam_layer="x",
    methods=["gradcam"],
    sha256="a" * 64,
    live_workers=1,
)
ALICE = Principal(name="alice", scopes=frozenset({"explain"}))


def test_the_cache_key_covers_the_dicom_options() -> None:
    def key(dicom: DicomOptions | None) -> str:
        options = ExplainOptions(model="m", dicom=dicom)
        return explanation_cache_key(options, options.applied_params(), b"dicm", INFO, ALICE)

    variants = [
        key(None),
        key(DicomOptions(frame=1)),
        key(DicomOptions(window=DicomWindow(center=40, width=400))),
        key(DicomOptions(window=DicomWindow(center=40, width=401))),
    ]

    assert len(set(variants)) == len(variants)
    # Defaults written out or left implicit are the same request.
    assert key(None) == key(DicomOptions(frame=0, window=None))
