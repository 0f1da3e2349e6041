"""How the worker runs its passes on a device: opt-in mixed precision, channels-last, and the
memory budget that sizes the chunks of multi-sample methods.

`GLIMPSE_PRECISION` bfloat16 or float16 runs every forward and backward under `torch.autocast`
(convolutions and matrix products in the reduced type, reductions in float32); the recorded
gradients are cast to float32 before a map is formed from them, so each map is accumulated in
float32 (`workers.methods.passes`). The default, float32, runs as the model was loaded.
"""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from workers.methods.base import set_pass_memory
from workers.repository import LoadedModel

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextmanager
def computing(device: torch.device, precision: str) -> Iterator[None]:
    """Run the block's passes on `device` in `precision` (see the module)."""
    dtype = PRECISIONS[precision]
    context = (
        nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
    )
    with context:
        yield


def prepare(models: dict[str, LoadedModel], max_batch_memory: int) -> None:
    """Before serving: on CUDA, the modules' weights in channels-last order (what cuDNN's
    fastest convolutions read, inputs converted by the first convolution); and the per-device
    memory budget of one pass of a multi-sample method (0: the built-in chunk size)."""
    set_pass_memory(max_batch_memory)
    for model in models.values():
        if model.device.type == "cuda" and model.onnx_session is None:
            model.module.to(memory_format=torch.channels_last)
