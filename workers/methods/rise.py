"""RISE (Petsiuk et al. 2018): the target's probability averaged over random smooth masks."""

import math

import torch
import torch.nn.functional as F

from schemas.methods.rise import RiseParams
from workers.methods.base import Batch, ForwardOnlyMethod, Perturbations, target_columns
from workers.methods.baselines import make_baseline
from workers.methods.registry import register


@register
class Rise(ForwardOnlyMethod[RiseParams]):
    """sum_i P(target | x masked by m_i) * m_i / (masks * p); unsigned, as probabilities are >= 0.

    The score is the softmax probability, as in the paper (`Batch.probability`: for a
    segmentation model, the region's summed pixel probability). A mask keeps the image where it
    is 1 and turns it black where it is 0 (`baselines.make_baseline`: pixel value 0, or each
    channel's darkest pixel without the model's normalisation), blending in between. The masks
    come from `draw_masks` and `smooth_masks` with the request's seed, the same for every image
    and device.
    """

    def rows_per_pass(self, params: RiseParams) -> int:
        return params.batch_size

    def perturbations(self, image: Batch, params: RiseParams) -> Perturbations:
        count, p, pixels, targets = params.masks, params.p, image.inputs, image.targets
        height, width = pixels.shape[2:]
        grids, shifts = draw_masks(count, params.cell, p, (height, width), params.seed)
        black = make_baseline("black", pixels, normalisation=image.normalisation)
        saliency = pixels.new_zeros((targets.shape[0], height * width), dtype=torch.float32)
        batch_size = params.batch_size
        for grid, shift in zip(grids.split(batch_size), shifts.split(batch_size), strict=True):
            masks = smooth_masks(grid.to(pixels.device), shift.to(pixels.device), (height, width))
            masked = torch.addcmul(black, pixels - black, masks[:, None].to(pixels.dtype))
            probabilities = image.probability((yield masked).float())
            saliency += target_columns(probabilities, targets).T @ masks.flatten(1)
        return (saliency / (count * p)).view(-1, height, width)


def draw_masks(
    count: int, cell: int, p: float, size: tuple[int, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` random masks for images of `size` (H, W), drawn on the CPU from `seed`.

    Returns binary grids (count, cell, cell) float32, each cell 1 with probability `p`, and
    shifts (count, 2) int64: a uniform offset in [0, cell side) per axis, the side being
    ceil(size / cell) pixels. `smooth_masks` turns them into masks.
    """
    generator = torch.Generator().manual_seed(seed)
    grids = (torch.rand((count, cell, cell), generator=generator) < p).float()
    shifts = torch.stack(
        [torch.randint(math.ceil(side / cell), (count,), generator=generator) for side in size],
        dim=1,
    )
    return grids, shifts


def smooth_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (B, H, W) in [0, 1]: each grid upsampled bilinearly to (cell + 1) cell sides and
    cropped to `size` at its shift, the authors' construction; on the grids' device.
    """
    cell = grids.shape[1]
    rows = _crop_weights(cell, size[0], shifts[:, 0])
    columns = _crop_weights(cell, size[1], shifts[:, 1])
    # Bilinear upsampling is linear upsampling along each axis in turn.
    return rows @ grids @ columns.transpose(1, 2)


def _crop_weights(cell: int, side: int, shifts: torch.Tensor) -> torch.Tensor:
    """(B, side, cell): each cell's weight at each pixel of a crop of `side` from `shifts` (B,),
    along an axis of `cell` cells linearly upsampled to (cell + 1) * ceil(side / cell) pixels.
    """
    upsampled = (cell + 1) * math.ceil(side / cell)
    cells = torch.eye(cell, device=shifts.device)[:, None]
    weights = F.interpolate(cells, size=upsampled, mode="linear", align_corners=False)[:, 0].T
    return weights[shifts[:, None] + torch.arange(side, device=shifts.device)]
