"""Train the shipped `demo-lesions` model on the synthetic data set and write its model folder.

Run `python -m workers.demo.train [--out models/demo-lesions/1]`. Training is deterministic
(fixed seeds, deterministic algorithms, two threads) and takes a few minutes on two CPU cores. The
folder gets `model.safetensors`, `model.onnx` (checked against PyTorch through ONNX Runtime and
onnx2torch), `manifest.json` and a `README.md` with the training record.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx2torch
import onnxruntime
import safetensors.torch
import torch
from torch import nn
from torch.nn import functional as F

from schemas.models import Architecture, InputSpec, ModelManifest
from workers.demo.data import LABELS, SIZE, make_dataset
from workers.demo.model import build_lesion_net

MODEL_ID = "demo-lesions"
MODEL_VERSION = "1"
ARCHITECTURE_KWARGS = {"num_classes": len(LABELS), "width": 16}
CAM_LAYER = "features.14"
INPUT_MEAN = 0.5
INPUT_STD = 0.25

TRAIN_SEED, TRAIN_SIZE = 0, 4000
# Held-out seeds start far above the training seeds, so the two sets never share a sample.
HELDOUT_SEED, HELDOUT_SIZE = 1_000_000, 1000
EPOCHS = 6
BATCH_SIZE = 64
LEARNING_RATE = 4e-3
TORCH_SEED = 0
ONNX_TOLERANCE = 1e-4


def normalise(images: np.ndarray) -> torch.Tensor:
    """(N,H,W) images in [0, 1] as the (N,1,H,W) tensor the network takes."""
    return (torch.from_numpy(images).unsqueeze(1) - INPUT_MEAN) / INPUT_STD


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Adam with a one-cycle schedule; batches are flipped at random (class ignores orientation)."""
    generator = torch.Generator().manual_seed(TORCH_SEED)
    steps_per_epoch = -(-len(images) // BATCH_SIZE)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=EPOCHS * steps_per_epoch, pct_start=0.2
    )
    # Channels-last convolutions are about a third faster on CPU.
    model.to(memory_format=torch.channels_last).train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for start in range(0, len(images), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            x = images[batch]
            flips = torch.randint(0, 2, (2,), generator=generator)
            dims = [d for d, flip in zip((2, 3), flips.tolist(), strict=True) if flip]
            if dims:
                x = x.flip(dims)
            x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{EPOCHS}: loss {total_loss / len(images):.4f}", flush=True)
    model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class indices for `images`, in eval mode, in batches."""
    model.eval()
    return torch.cat([model(x).argmax(1) for x in images.split(256)])


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with the TorchScript exporter: opset 17, `input` to `logits`, dynamic batch.

    BatchNorm stays a node of its own instead of being folded into the convolutions: the
    conversion then computes what the PyTorch model computes, operation for operation, and its
    maps match to float precision. Folded weights differ by round-off, and a ReLU that sits on
    its kink somewhere along an integration path turns that into a per-mille change of the map.
    ONNX Runtime folds BatchNorm itself when it optimises the graph.
    """
    model.eval()
    # The TorchScript exporter is deliberate (its graphs convert with onnx2torch): hush its warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, SIZE, SIZE),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))


@torch.no_grad()
def onnx_max_difference(model: nn.Module, path: Path, batch: torch.Tensor) -> tuple[float, float]:
    """Largest absolute logit difference from PyTorch: (ONNX Runtime, onnx2torch conversion)."""
    model.eval()
    expected = model(batch).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_logits,) = session.run(["logits"], {"input": batch.numpy()})
    converted = onnx2torch.convert(str(path)).eval()
    torch_logits = converted(batch).numpy()
    return float(np.abs(ort_logits - expected).max()), float(np.abs(torch_logits - expected).max())


def save_safetensors(model: nn.Module, path: Path) -> None:
    """The state dict, BatchNorm running stats included, as contiguous tensors."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    safetensors.torch.save_file(state, str(path))


def build_manifest(heldout_accuracy: float) -> ModelManifest:
    """The manifest of the trained model; pydantic validates it here."""
    return ModelManifest(
        id=MODEL_ID,
        version=MODEL_VERSION,
        format="safetensors",
        architecture=Architecture(
            factory="workers.demo.model:build_lesion_net", kwargs={**ARCHITECTURE_KWARGS}
        ),
        labels=list(LABELS),
        input=InputSpec(channels=1, height=SIZE, width=SIZE, mean=[INPUT_MEAN], std=[INPUT_STD]),
        cam_layer=CAM_LAYER,
        description=(
            "Small CNN (four conv+BatchNorm+ReLU blocks, global-average-pool, linear head) that "
            "tells normal tissue from a nodule or a mass in 128x128 grayscale images."
        ),
        notes=(
            "Trained on synthetic images from workers.demo.data, whose ground-truth lesion masks "
            "let maps be scored; not for clinical use. "
            f"Held-out accuracy {heldout_accuracy:.1%} on {HELDOUT_SIZE} unseen samples."
        ),
    )


def readme_text(
    seconds: float, accuracy: float, per_class: dict[str, float], onnx_diffs: tuple[float, float]
) -> str:
    """The model folder's README: how the weights were made and how well they do."""
    train_seeds = f"{TRAIN_SEED} to {TRAIN_SEED + TRAIN_SIZE - 1}"
    heldout_seeds = f"{HELDOUT_SEED} to {HELDOUT_SEED + HELDOUT_SIZE - 1}"
    class_lines = "\n".join(f"| {label} | {value:.1%} |" for label, value in per_class.items())
    return f"""# demo-lesions, version {MODEL_VERSION}

The demo model shipped with Glimpse. Synthetic data, **not for clinical use**.

- Network: `workers.demo.model:build_lesion_net(**{json.dumps(ARCHITECTURE_KWARGS)})`, four
  blocks of conv 3x3 + BatchNorm + ReLU with max-pools between them, then a global average pool
  and a linear head. Default CAM layer: `{CAM_LAYER}`, the last ReLU (16x16 at 128x128 input).
- Input: one channel, 128x128, pixels in [0, 1] normalised with mean {INPUT_MEAN}, std {INPUT_STD}.
- Labels: {", ".join(LABELS)}.
- Training data: {TRAIN_SIZE} samples of `workers.demo.data`, seeds {train_seeds}.
- Held-out data: {HELDOUT_SIZE} samples, seeds {heldout_seeds}.
- Training: Adam, one-cycle schedule peaking at learning rate {LEARNING_RATE}, batches of
  {BATCH_SIZE}, {EPOCHS} epochs, random flips; deterministic, two threads.
- Versions: torch {torch.__version__}, numpy {np.__version__}.
- Training time: {seconds:.0f} s on two CPU cores, data generation included.

Reproduce with:

```
python -m workers.demo.train --out models/{MODEL_ID}/{MODEL_VERSION}
```

## Held-out accuracy

Overall: **{accuracy:.1%}**.

| class | accuracy |
|---|---|
{class_lines}

## Files

- `model.safetensors`: the state dict (BatchNorm running statistics included).
- `model.onnx`: the same network exported with the TorchScript exporter (opset 17, input `input`,
  output `logits`, dynamic batch; BatchNorm kept as its own node). Largest logit difference from
  PyTorch: {onnx_diffs[0]:.1e} under ONNX Runtime, {onnx_diffs[1]:.1e} through onnx2torch.
- `manifest.json`: the declared interface the workers load.
"""


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate, export and verify; write the model folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models") / MODEL_ID / MODEL_VERSION)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.manual_seed(TORCH_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)

    train_images, train_labels, _ = make_dataset(TRAIN_SIZE, TRAIN_SEED)
    heldout_images, heldout_labels, _ = make_dataset(HELDOUT_SIZE, HELDOUT_SEED)
    model = build_lesion_net(**ARCHITECTURE_KWARGS)
    train(model, normalise(train_images), torch.from_numpy(train_labels))
    predicted = predict(model, normalise(heldout_images)).numpy()
    seconds = time.perf_counter() - started

    correct = predicted == heldout_labels
    accuracy = float(correct.mean())
    per_class = {name: float(correct[heldout_labels == i].mean()) for i, name in enumerate(LABELS)}
    print(f"held-out accuracy {accuracy:.2%}, per class {per_class}, {seconds:.0f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, args.out / "model.safetensors")
    export_onnx(model, args.out / "model.onnx")
    diffs = onnx_max_difference(model, args.out / "model.onnx", normalise(heldout_images[:16]))
    print(
        f"max logit difference from PyTorch: {diffs[0]:.2e} (ONNX Runtime), "
        f"{diffs[1]:.2e} (onnx2torch)"
    )
    if max(diffs) > ONNX_TOLERANCE:
        raise SystemExit(f"ONNX export differs from PyTorch by {max(diffs):.2e}")

    manifest = build_manifest(accuracy)
    (args.out / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
    (args.out / "README.md").write_text(readme_text(seconds, accuracy, per_class, diffs))


if __name__ == "__main__":
    main()
