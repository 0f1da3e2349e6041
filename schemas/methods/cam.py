"""CAM's parameters and catalogue entry."""

from typing import ClassVar

from typing_extensions import override

from schemas.methods.contract import MethodParams, Need, Workload, register_method


@register_method
class CamParams(MethodParams):
    """CAM: the linear head's weights over the last feature maps (GAP + linear models only)."""

    method = "cam"
    title = "CAM"
    summary = (
        "The linear head's weights for the target over the feature maps entering the global "
        "average pool; only for models whose head is global-average-pool + linear."
    )
    reference = "Zhou et al., CVPR 2016"
    cost = "1 forward to the pooled features"
    signed = False
    needs: ClassVar[frozenset[Need]] = frozenset({"linear_head"})

    @override
    def passes(self, work: Workload) -> int:
        return 1
