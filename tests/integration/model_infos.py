"""A small `ModelInfo` as a worker would register it, for tests of the gateway's side."""

from schemas.models import InputSpec, ModelInfo


def small_model_info(model_id: str = "m", version: str = "1", live_workers: int = 1) -> ModelInfo:
    """An 8 × 8 grey ONNX model with two labels and one CAM layer, served by `live_workers`."""
    return ModelInfo(
        id=model_id,
        version=version,
        format="onnx",
        input=InputSpec(channels=1, height=8, width=8, mean=[0.5], std=[0.25]),
        labels=["a", "b"],
        cam_layers=["x"],
        default_cam_layer="x",
        methods=["gradcam"],
        sha256="a" * 64,
        live_workers=live_workers,
    )
