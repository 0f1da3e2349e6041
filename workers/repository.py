"""The model repository: `<repository>/<id>/<version>/` folders loaded into servable models.

Each version folder holds a `manifest.json` (a `ModelManifest`) and the weights its `format`
names: `model.safetensors` (with an importable architecture factory) or `model.onnx`. Nothing is
ever unpickled.
"""

import difflib
import hashlib
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import onnx
import onnxruntime
import pydantic
import safetensors.torch
import torch

from schemas.models import ModelFormat, ModelInfo, ModelManifest
from workers import onnx_models

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILES: dict[ModelFormat, str] = {
    "safetensors": "model.safetensors",
    "onnx": "model.onnx",
}
# Relative to 1 + the largest logit: the float32 noise of two faithful implementations.
CONVERSION_TOLERANCE = 1e-4
CONVERSION_CHECK_SEED = 0


class ModelLoadError(Exception):
    """A model folder that cannot be served: what is wrong, and where, on one line."""

    def __init__(self, folder: Path, problem: str) -> None:
        # Loaders' messages span lines (ONNX Runtime's, pydantic's); a log line and a reason don't.
        problem = " ".join(problem.split())
        super().__init__(f"model folder {folder}: {problem}")
        self.folder = folder
        self.problem = problem

    @property
    def model_id(self) -> str:
        """The id the folder would serve: its model folder's name."""
        return self.folder.parent.name

    @property
    def version(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve.

    `module` is in eval mode with every parameter frozen, on `device`; for ONNX models it is the
    onnx2torch conversion, used for gradients, while `onnx_session` runs the forward passes.
    `cam_layers` names the modules with a spatial 4-D output, in the order their forward calls
    finish (deepest last).
    """

    manifest: ModelManifest
    module: torch.nn.Module
    device: torch.device
    sha256: str
    cam_layers: list[str]
    default_cam_layer: str
    onnx_session: onnxruntime.InferenceSession | None = None
    cam_layer_channels: Mapping[str, int] = field(default_factory=dict)
    """Each CAM layer's channel count."""

    def forward_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch, without gradients, on `device`.

        ONNX models run through ONNX Runtime, the others through `module`.
        """
        if self.onnx_session is not None:
            return onnx_models.run_session(self.onnx_session, inputs).to(self.device)
        with torch.no_grad():
            return self.module(inputs.to(self.device))

    def info(self, methods: list[str]) -> ModelInfo:
        """What the API says about this model; the gateway fills in `live_workers`."""
        manifest = self.manifest
        return ModelInfo(
            id=manifest.id,
            version=manifest.version,
            format=manifest.format,
            input=manifest.input,
            output=manifest.output,
            labels=manifest.labels,
            cam_layers=self.cam_layers[::-1],
            cam_layer_channels=dict(self.cam_layer_channels),
            default_cam_layer=self.default_cam_layer,
            methods=methods,
            sha256=self.sha256,
            description=manifest.description,
            live_workers=0,
        )


def choose_device(preference: str = "auto") -> torch.device:
    """The torch device to serve on: `auto` picks cuda when available, else cpu.

    Raises ValueError for an unknown device or a cuda device this machine lacks.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {preference!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} requested but CUDA is not available")
    return device


def discover(repository: Path) -> list[Path]:
    """The version folders to serve: the highest version of each model id, sorted by path.

    Only folders holding a `manifest.json` count. Versions compare digit runs numerically,
    so `10` is above `9` and `1.10` above `1.9`.
    """
    if not repository.is_dir():
        raise ModelLoadError(repository, "the model repository is not a directory")
    served = []
    for model_dir in sorted(path for path in repository.iterdir() if path.is_dir()):
        versions = [path.parent for path in model_dir.glob(f"*/{MANIFEST_FILE}")]
        if versions:
            served.append(max(versions, key=lambda path: _version_key(path.name)))
    return served


class LoadedRepository(NamedTuple):
    """A repository as loaded: the models to serve, by id, and the folders that failed."""

    models: dict[str, LoadedModel]
    failures: list[ModelLoadError]


def load_repository(repository: Path, device: torch.device) -> LoadedRepository:
    """Load the highest version of every model in the repository.

    A folder that cannot be served is among `failures`, in discovery order, and never stops the
    others from loading. Raises ModelLoadError only when the repository is not a directory.
    """
    models: dict[str, LoadedModel] = {}
    failures: list[ModelLoadError] = []
    for version_dir in discover(repository):
        try:
            model = load_model(version_dir, device)
        except ModelLoadError as exc:
            failures.append(exc)
        except Exception as exc:
            # Third-party loaders raise anything; one folder's surprise must not stop the others.
            failures.append(ModelLoadError(version_dir, f"it cannot be loaded: {exc!r}"))
        else:
            models[model.manifest.id] = model
    return LoadedRepository(models, failures)


def load_model(version_dir: Path, device: torch.device) -> LoadedModel:
    """Load, validate and prepare the model in one `<id>/<version>/` folder.

    Raises ModelLoadError naming the folder and the problem: a missing or invalid manifest, an id
    or version that does not match the folder, missing weights, an architecture that cannot be
    built or does not fit the weights, an ONNX conversion that disagrees with ONNX Runtime, a
    network that does not run on the manifest's input, a logit count that does not match the
    labels, or an unknown `cam_layer`.
    """
    manifest = _read_manifest(version_dir)
    weights = version_dir / WEIGHTS_FILES[manifest.format]
    if not weights.is_file():
        raise ModelLoadError(
            version_dir, f"format is {manifest.format!r} but {weights.name} is missing"
        )
    session = None
    if manifest.format == "onnx":
        module, session = _load_onnx(version_dir, manifest, weights, device)
    else:
        module = _load_safetensors(version_dir, manifest, weights)
    module = module.eval().requires_grad_(False).to(device)

    try:
        cam_layer_channels = find_cam_layers(module, _zero_batch(manifest, device))
    except Exception as exc:
        raise ModelLoadError(
            version_dir,
            f"the network does not run on an image of shape {_input_shape(manifest, 1)}: {exc}",
        ) from exc
    cam_layers = list(cam_layer_channels)
    if not cam_layers:
        raise ModelLoadError(version_dir, "no layer has a spatial output usable for CAM methods")
    default_cam_layer = manifest.cam_layer or cam_layers[-1]
    if default_cam_layer not in cam_layers:
        close = difflib.get_close_matches(default_cam_layer, cam_layers, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelLoadError(
            version_dir,
            f"cam_layer {default_cam_layer!r} is not a layer with a spatial output; "
            f"{hint}the deepest are {cam_layers[-3:]}",
        )
    model = LoadedModel(
        manifest=manifest,
        module=module,
        device=device,
        sha256=_sha256(weights),
        cam_layers=cam_layers,
        default_cam_layer=default_cam_layer,
        onnx_session=session,
        cam_layer_channels=cam_layer_channels,
    )
    logits = model.forward_logits(_zero_batch(manifest, device))
    if tuple(logits.shape) != (1, len(manifest.labels)):
        raise ModelLoadError(
            version_dir,
            f"the model outputs shape {tuple(logits.shape)} for one image "
            f"but the manifest lists {len(manifest.labels)} labels",
        )
    return model


def find_cam_layers(module: torch.nn.Module, example: torch.Tensor) -> dict[str, int]:
    """The submodules whose output on `example` is 4-D and larger than 1×1, by name, with the
    channel count of that output.

    Ordered by when their forward call finished, so containers follow their children and the
    deepest layer comes last; a module called more than once counts at its last call.
    """
    finished: dict[str, int | None] = {}

    def record(name: str) -> Callable[[torch.nn.Module, object, object], None]:
        def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
            # CAM hooks keep a reused module's last activation, so its last call is what counts.
            finished.pop(name, None)
            channels = None
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                channels = int(output.shape[1]) if output.shape[-2:].numel() > 1 else None
            finished[name] = channels

        return hook

    handles = [
        submodule.register_forward_hook(record(name))
        for name, submodule in module.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    return {name: channels for name, channels in finished.items() if channels is not None}


def _read_manifest(version_dir: Path) -> ModelManifest:
    path = version_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelLoadError(version_dir, f"{MANIFEST_FILE} is missing")
    try:
        manifest = ModelManifest.model_validate_json(path.read_bytes())
    except pydantic.ValidationError as exc:
        raise ModelLoadError(
            version_dir, f"{MANIFEST_FILE} is not a valid manifest: {exc}"
        ) from exc
    if manifest.id != version_dir.parent.name:
        raise ModelLoadError(
            version_dir,
            f"manifest id {manifest.id!r} does not match the folder {version_dir.parent.name!r}",
        )
    if manifest.version != version_dir.name:
        raise ModelLoadError(
            version_dir,
            f"manifest version {manifest.version!r} does not match the folder {version_dir.name!r}",
        )
    return manifest


def _load_safetensors(version_dir: Path, manifest: ModelManifest, weights: Path) -> torch.nn.Module:
    if manifest.architecture is None:
        raise ModelLoadError(version_dir, "the safetensors format needs an architecture factory")
    factory_path = manifest.architecture.factory
    module_name, _, factory_name = factory_path.partition(":")
    if not module_name or not factory_name:
        raise ModelLoadError(version_dir, f"factory {factory_path!r} is not `module:callable`")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            version_dir, f"factory {factory_path!r} cannot be imported: {exc}"
        ) from exc
    try:
        module = factory(**manifest.architecture.kwargs)
    except Exception as exc:
        raise ModelLoadError(
            version_dir,
            f"factory {factory_path!r} failed with {manifest.architecture.kwargs}: {exc!r}",
        ) from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            version_dir, f"factory {factory_path!r} returned {type(module).__name__}, not a Module"
        )
    try:
        module.load_state_dict(safetensors.torch.load_file(weights), strict=True)
    except Exception as exc:
        raise ModelLoadError(
            version_dir, f"{weights.name} does not fit the factory's network: {exc}"
        ) from exc
    return module


def _load_onnx(
    version_dir: Path, manifest: ModelManifest, weights: Path, device: torch.device
) -> tuple[torch.nn.Module, onnxruntime.InferenceSession]:
    try:
        module = onnx_models.convert_to_torch(onnx.load(weights))
        cpu_session = onnx_models.create_session(weights, torch.device("cpu"))
    except Exception as exc:
        raise ModelLoadError(version_dir, f"{weights.name} cannot be loaded: {exc!r}") from exc
    # Checked on CPU on both sides: the check is about the conversion, not the device's arithmetic.
    generator = torch.Generator().manual_seed(CONVERSION_CHECK_SEED)
    batch = torch.randn(_input_shape(manifest, batch_size=2), generator=generator)
    try:
        gap = onnx_models.conversion_gap(module, cpu_session, batch)
    except Exception as exc:
        raise ModelLoadError(
            version_dir,
            f"{weights.name} does not run on a batch of 2 at the manifest's input size "
            f"(is its batch axis dynamic?): {exc}",
        ) from exc
    if not gap <= CONVERSION_TOLERANCE:
        raise ModelLoadError(
            version_dir,
            f"the PyTorch conversion of {weights.name} disagrees with ONNX Runtime: "
            f"relative logit gap {gap:.3g} > {CONVERSION_TOLERANCE:g}",
        )
    if onnx_models.execution_providers(device) == ["CPUExecutionProvider"]:
        return module, cpu_session
    return module, onnx_models.create_session(weights, device)


def _input_shape(manifest: ModelManifest, batch_size: int) -> tuple[int, int, int, int]:
    spec = manifest.input
    return (batch_size, spec.channels, spec.height, spec.width)


def _zero_batch(manifest: ModelManifest, device: torch.device) -> torch.Tensor:
    return torch.zeros(_input_shape(manifest, batch_size=1), device=device)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _version_key(version: str) -> list[tuple[int, int, str]]:
    return [
        (1, int(part), "") if part.isdigit() else (0, 0, part)
        for part in re.split(r"(\d+)", version)
        if part
    ]
