"""Score-CAM's parameters and catalogue entry."""

from typing import ClassVar

from pydantic import Field
from typing_extensions import override

from schemas.methods.contract import LayerParams, Need, Workload, register_method

SCORECAM_CHANNELS = 512
"""The channels Score-CAM's cost assumes of a layer whose channel count the model does not
publish: a ResNet's last block."""


@register_method
class ScoreCamParams(LayerParams):
    """Score-CAM: each activation map, as a mask on the input, weighted by the target's score."""

    method = "scorecam"
    title = "Score-CAM"
    summary = (
        "Class activation map of a convolutional layer, each channel weighted by the rise of "
        "the target's softmax probability when its upsampled map masks the input; forward "
        "passes only."
    )
    reference = "Wang et al., CVPR Workshops 2020"
    cost = (
        "2 + (channels of the layer, less those with constant maps) forward per image, shared "
        "by its targets"
    )
    signed = False
    needs: ClassVar[frozenset[Need]] = frozenset({"cam_layer"})

    batch_size: int = Field(default=32, ge=1, le=256, description="masked inputs per pass")

    @override
    def passes(self, work: Workload) -> int:
        channels = work.channels(self.layer)
        return 2 + (SCORECAM_CHANNELS if channels is None else channels)
