"""What every attribution method shares: its result, its parameters, and the gradient passes.

A method is a small `AttributionMethod`, generic over its parameters model in `schemas.methods`,
that says how to turn the passes these helpers run into a map. The
helpers never touch parameter gradients and leave the model as they found it: hooks are removed
on every exit path.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, TypeVar, cast, get_args

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from schemas.explain import DegenerateKind
from schemas.methods import LayerParams, MethodParams, Need
from workers.deadline import check_deadline
from workers.methods.facts import ModelFacts, describe_model

P = TypeVar("P", bound=MethodParams)


class UnknownMethodError(ValueError):
    """The method id is not one this worker implements."""


class MethodParameterError(ValueError):
    """A method parameter is unknown or has a bad value; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class TargetError(ValueError):
    """The targets do not fit the batch or name a class the model does not have."""


class UnsupportedModelError(ValueError):
    """The method does not apply to this model's architecture; the message says why."""


NEED_DESCRIPTIONS: Mapping[Need, str] = {
    "gradients": "gradients through the model",
    "cam_layer": "a layer with a spatial or token output",
    "relu": "ReLU activations to guide",
    "linear_head": "a global-average-pool + linear head",
    "canonical_form": "a model torch.fx can trace",
    "piecewise_linear": "a model whose nonlinearities are ReLUs and max-pools",
}


@dataclass(frozen=True)
class MapWarning:
    """A method's own word on why one of its maps deserves no trust, and which kind of failure."""

    kind: DegenerateKind
    reason: str


@dataclass(frozen=True)
class AttributionMap:
    """One map per sample, (N, H, W) float32 at the model's input resolution.

    `signed` is False when every value is >= 0 and True when the sign carries meaning.
    """

    values: torch.Tensor
    signed: bool
    checks: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """Per-sample figures the method measured about its own result, each an (N,) tensor: for
    example `completeness_gap`, |Σ map − (f(x) − f(x0))| / |f(x) − f(x0)|."""
    warnings: tuple[MapWarning | None, ...] = ()
    """Per sample, the method's reason when it knows its map failed (empty: none did)."""


@dataclass(frozen=True)
class Normalisation:
    """The model's input normalisation: (pixel − mean) / std per channel, pixels in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"{len(self.mean)} means but {len(self.std)} standard deviations")

    def normalised(self, pixel: float, like: torch.Tensor) -> torch.Tensor:
        """The normalised value of `pixel` in each channel, (1, C, 1, 1) on `like`'s device and
        dtype. Raises ValueError when `like` (N, C, H, W) has another channel count."""
        channels = like.shape[1]
        if len(self.mean) != channels:
            raise ValueError(f"a normalisation of {len(self.mean)} channels for {channels}")
        mean = torch.tensor(self.mean, device=like.device, dtype=like.dtype)
        std = torch.tensor(self.std, device=like.device, dtype=like.dtype)
        return ((pixel - mean) / std).view(1, channels, 1, 1)


Forward = Callable[[torch.Tensor], torch.Tensor]
"""A model's (N, classes) logits for a normalised batch, computed without gradients."""


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The softmax over the classes of (N, classes) logits."""
    if logits.ndim != 2:
        raise ValueError(f"the model must return (N, classes) logits, got {tuple(logits.shape)}")
    return torch.softmax(logits.float(), dim=1)


@dataclass(frozen=True)
class Batch:
    """What a method explains: normalised inputs (N, C, H, W), one int64 target class per row
    (N,) on the inputs' device, and the model they go through.

    `model` is in eval mode with parameters that do not require grad, and methods leave it
    unchanged. `forward` gives its logits without gradients (ONNX Runtime for ONNX models),
    for the methods that need only forward passes. `cam_layer` is the layer CAM methods use
    unless their parameters name another. `normalisation` is how the inputs were normalised, for
    the methods that need pixel values (a black baseline, z-box bounds); without it they estimate
    them from each image (`baselines`). `probability` reads, from the model's output, the target
    probabilities that RISE and Score-CAM weigh by: a softmax over the classes, or for a
    segmentation model each region's summed pixel probabilities (`workers.segmentation`).
    """

    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    forward: Forward
    cam_layer: str = ""
    normalisation: Normalisation | None = None
    probability: Forward = class_probabilities

    def rows(self, rows: torch.Tensor, inputs: torch.Tensor | None = None) -> "Batch":
        """The batch of the given rows (an index tensor), optionally with other inputs."""
        chosen = self.inputs[rows] if inputs is None else inputs
        return replace(self, inputs=chosen, targets=self.targets[rows])

    def with_inputs(self, inputs: torch.Tensor, targets: torch.Tensor) -> "Batch":
        """The same model and settings over other inputs and targets (noisy copies, say)."""
        return replace(self, inputs=inputs, targets=targets)


class AttributionMethod(ABC, Generic[P]):
    """An attribution method: the implementation of the `schemas.methods` parameters model `P`.

    A subclass names its parameters model as its type argument (`AttributionMethod[GradCamParams]`)
    and implements `attribute`; the parameters' class variables say the rest (id, signed, cost).
    """

    params_model: ClassVar[type[MethodParams]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            for argument in get_args(base):
                if isinstance(argument, type) and issubclass(argument, MethodParams):
                    cls.params_model = argument

    @property
    def id(self) -> str:
        return self.params_model.method

    def resolve(self, params: Mapping[str, object], *, cam_layer: str) -> P:
        """The parameters as they will be applied: checked against the method's model, defaults
        filled in, and a missing `layer` set to `cam_layer`.

        A value the model refuses raises MethodParameterError, None included (how JSON writers
        spell a non-finite number): it is never replaced by the default.
        """
        try:
            parsed = self.params_model.model_validate(params)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = ".".join(str(part) for part in error["loc"]) or "params"
            raise MethodParameterError(
                name, f"{self.id}: parameter {name!r}: {error['msg']}"
            ) from None
        if isinstance(parsed, LayerParams) and parsed.layer is None:
            parsed = parsed.model_copy(update={"layer": cam_layer})
        return cast(P, parsed)

    def unsupported_reason(self, facts: ModelFacts) -> str | None:
        """Why the method does not apply to the model `facts` describe, or None when it does.

        By default, the first of the method's `needs` that the model lacks, with its reason.
        """
        lacking = facts.lacks(self.params_model.needs)
        if not lacking:
            return None
        need, reason = lacking[0]
        return f"{self.id} needs {NEED_DESCRIPTIONS[need]}: {reason}"

    def refusal(self, model: nn.Module) -> str | None:
        """Why the method does not apply to `model`, or None: `unsupported_reason` of its facts.

        A method that needs more than its `needs` say overrides this, calling it first.
        """
        return self.unsupported_reason(describe_model(model))

    def supports(self, model: nn.Module) -> bool:
        """Whether the method applies to `model` (`refusal` is None)."""
        return self.refusal(model) is None

    @abstractmethod
    def attribute(self, batch: Batch, params: P) -> AttributionMap:
        """Maps for the batch's inputs and targets, with `params` resolved."""


Perturbations = Generator[torch.Tensor, torch.Tensor, torch.Tensor]
"""A forward-only method's passes over one image: it yields each batch of inputs it needs
scored, is sent that batch's outputs (the model's, in the same order), and returns the image's
maps (T, H, W)."""


class ForwardOnlyMethod(AttributionMethod[P]):
    """A method computed from forward passes alone (`Batch.forward`), image by image.

    Rows that repeat an image share its passes: each distinct image is explained once, for the
    targets of all its rows. The method writes its passes as a generator (`perturbations`), so
    that several forward-only methods of one request can share their forward calls
    (`attribute_jointly`).
    """

    def attribute(self, batch: Batch, params: P) -> AttributionMap:
        return attribute_jointly(batch, [(self, params)])[0]

    @abstractmethod
    def perturbations(self, image: Batch, params: P) -> Perturbations:
        """The passes and maps (T, H, W) of a batch holding one image (1, C, H, W) and its
        targets (T,)."""

    @abstractmethod
    def rows_per_pass(self, params: P) -> int:
        """The most inputs one forward call may take (the memory bound of its passes)."""


def attribute_jointly(
    batch: Batch, methods: Sequence[tuple[ForwardOnlyMethod[Any], MethodParams]]
) -> list[AttributionMap]:
    """Each forward-only method's maps of the batch, their passes run together: per distinct
    image, the methods' perturbed inputs fill common forward calls of at most the smallest
    `rows_per_pass` rows (`run_perturbations`). A method alone runs exactly its own calls."""
    inputs = batch.inputs
    images, image_of_row = torch.unique(inputs.flatten(1), dim=0, return_inverse=True)
    limit = min(method.rows_per_pass(params) for method, params in methods)
    values = [
        inputs.new_empty((inputs.shape[0], *inputs.shape[2:]), dtype=torch.float32) for _ in methods
    ]
    for index, flat_image in enumerate(images):
        rows = (image_of_row == index).nonzero()[:, 0]
        image = batch.rows(rows, inputs=flat_image.view_as(inputs[0])[None])
        plans = [method.perturbations(image, params) for method, params in methods]
        for value, maps in zip(values, run_perturbations(image.forward, plans, limit), strict=True):
            value[rows] = maps.float()
    return [
        AttributionMap(value, signed=params.is_signed())
        for value, (_, params) in zip(values, methods, strict=True)
    ]


def run_perturbations(
    forward: Forward, plans: Sequence[Perturbations], limit: int
) -> list[torch.Tensor]:
    """Drive `plans` to their maps, their pending inputs batched into forward calls of at most
    `limit` rows, filled in the plans' order (a plan's batch may straddle two calls). One plan
    whose batches hold at most `limit` rows runs exactly the calls it asks for."""
    results: list[torch.Tensor | None] = [None] * len(plans)
    pending: dict[int, torch.Tensor] = {}
    scored: dict[int, list[torch.Tensor]] = {}

    def advance(index: int, outputs: torch.Tensor | None) -> None:
        try:
            pending[index] = plans[index].send(outputs)  # type: ignore[arg-type]
            scored[index] = []
        except StopIteration as finished:
            results[index] = finished.value
            pending.pop(index, None)

    for index in range(len(plans)):
        advance(index, None)
    while pending:
        check_deadline()
        taken: list[tuple[int, int]] = []
        room = limit
        for index, rows in pending.items():
            if room == 0:
                break
            count = min(room, rows.shape[0])
            taken.append((index, count))
            room -= count
        parts = [pending[index][:count] for index, count in taken]
        outputs = forward(parts[0] if len(parts) == 1 else torch.cat(parts))
        offset = 0
        for index, count in taken:
            scored[index].append(outputs[offset : offset + count])
            offset += count
            pending[index] = pending[index][count:]
            if pending[index].shape[0] == 0:
                parts_out = scored[index]
                advance(index, parts_out[0] if len(parts_out) == 1 else torch.cat(parts_out))
    assert all(result is not None for result in results)
    return cast(list[torch.Tensor], results)


def target_columns(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's scores (logits or probabilities) of the classes `targets` (T,): (B, T)."""
    if scores.ndim != 2:
        raise ValueError(f"the model must return (N, classes) logits, got {tuple(scores.shape)}")
    classes = scores.shape[1]
    if bool(((targets < 0) | (targets >= classes)).any()):
        raise TargetError(f"target class outside 0..{classes - 1}")
    return scores[:, targets]


def darkest_pixels(inputs: torch.Tensor) -> torch.Tensor:
    """Each image's darkest value per channel, (N, C, 1, 1): what perturbation methods call black.

    Normalisation maps each channel by an increasing affine function, so this is the normalised
    value of the image's darkest pixel (black itself when the image has a black pixel), known
    without the model's mean and std.
    """
    return inputs.amin(dim=(2, 3), keepdim=True)


def check_batch(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise unless `inputs` is (N, C, H, W) and `targets` holds N integer class indices."""
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
    if targets.dtype != torch.int64 or targets.shape != inputs.shape[:1]:
        raise TargetError(
            f"targets must be {inputs.shape[0]} int64 class indices, "
            f"got {targets.dtype} of shape {tuple(targets.shape)}"
        )


def target_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sum over the batch of each sample's target logit.

    In eval mode samples do not interact, so its gradient with respect to sample i is the gradient
    of sample i's own target: one backward pass serves a batch with different targets per sample.
    """
    if logits.ndim != 2:
        raise ValueError(f"the model must return (N, classes) logits, got {tuple(logits.shape)}")
    classes = logits.shape[1]
    # Checked here rather than left to gather, which on CUDA fails with a device-side assert.
    if bool(((targets < 0) | (targets >= classes)).any()):
        raise TargetError(f"target class outside 0..{classes - 1}")
    return logits.gather(1, targets[:, None]).sum()


# Input elements per pass for methods that run many copies of a batch (path points, noisy
# samples): 16 RGB 224 × 224 images, where ResNet-50's per-row cost on CPU stops falling.
# Activation memory grows with the input, so smaller inputs get more rows per pass.
PASS_INPUT_ELEMENTS = 16 * 3 * 224 * 224


# What a forward pass keeps for its backward, per byte of input: ResNet-50 at 224² keeps about
# 150 MiB of activations per 0.6 MiB image, DenseNet-121 more; rounded up.
ACTIVATION_BYTES_PER_INPUT_BYTE = 512

_PASS_MEMORY = {"bytes": 0}


def set_pass_memory(budget: int) -> None:
    """The bytes one pass of a multi-sample method may keep on its device (0: no budget, the
    built-in `PASS_INPUT_ELEMENTS`); the worker sets it from `GLIMPSE_MAX_BATCH_MEMORY`."""
    _PASS_MEMORY["bytes"] = budget


def copies_per_pass(inputs: torch.Tensor) -> int:
    """How many copies of the batch `inputs` one forward/backward pass takes; at least 1.

    Within the memory budget when one is set, else `PASS_INPUT_ELEMENTS` input elements."""
    budget = _PASS_MEMORY["bytes"]
    if budget > 0:
        per_copy = inputs.numel() * inputs.element_size() * ACTIVATION_BYTES_PER_INPUT_BYTE
        return max(1, budget // per_copy)
    return max(1, PASS_INPUT_ELEMENTS // inputs.numel())


def input_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d(target logit)/d(input) for each sample, shaped like `inputs`."""
    return input_gradient_and_logits(model, inputs, targets)[0]


def input_gradient_and_logits(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_gradient`, and each sample's target logit (N,) from the same forward pass."""
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(leaf)
        score = target_score(logits, targets)
        (gradient,) = torch.autograd.grad(score, leaf)
    return gradient, logits.detach().gather(1, targets[:, None])[:, 0]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` in `model.named_modules()`."""
    layer = dict(model.named_modules()).get(name)
    if layer is None:
        raise MethodParameterError("layer", f"layer {name!r} is not a module of the model")
    return layer


@contextmanager
def captured_output(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, record each output of `layer` as a leaf that requires grad.

    The forward pass continues on a copy of that leaf, so the autograd graph starts at the layer
    (nothing upstream is recorded) and in-place operations downstream, such as ReLU(inplace=True),
    cannot overwrite the recorded activation.
    """
    outputs: list[torch.Tensor] = []

    def record(_module: nn.Module, _args: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise MethodParameterError("layer", "the layer must output a single tensor")
        leaf = output.detach().requires_grad_(True)
        outputs.append(leaf)
        return leaf.clone()

    handle = layer.register_forward_hook(record)
    try:
        yield outputs
    finally:
        handle.remove()


def layer_gradient(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, layer_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of the named layer and d(target logit)/d(that output), per sample."""
    with captured_output(find_layer(model, layer_name)) as outputs, torch.enable_grad():
        logits = model(inputs)
        if len(outputs) != 1:
            raise MethodParameterError(
                "layer",
                f"layer {layer_name!r} runs {len(outputs)} times per forward pass, not once",
            )
        (gradient,) = torch.autograd.grad(target_score(logits, targets), outputs[0])
    return outputs[0].detach(), gradient


def class_activation_map(
    activation: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """relu(sum_k weights_k * activation_k), upsampled bilinearly to `size`: (N, H, W) float32.

    `activation` is (N, K, h, w); `weights` is (N, K) or broadcasts against the activation.
    """
    if weights.ndim == 2:
        weights = weights[:, :, None, None]
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))
    upsampled = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return upsampled[:, 0].to(torch.float32)
