"""Eigen-CAM's parameters and catalogue entry."""

from typing import ClassVar

from typing_extensions import override

from schemas.methods.contract import (
    LayerParams,
    Need,
    Workload,
    randomisation_caveat,
    register_method,
)


@register_method
class EigenCamParams(LayerParams):
    """Eigen-CAM: a layer's activations projected on their first principal component."""

    method = "eigencam"
    title = "Eigen-CAM"
    summary = (
        "A convolutional layer's activations projected on their first principal component: "
        "the same map for every target, from one forward pass and no gradient."
    )
    reference = "Muhammad & Yeasin, IJCNN 2020"
    cost = "1 forward per image, shared by its targets"
    signed = False
    caveats = (
        randomisation_caveat(
            1.00,
            "It does not read the head (class_specific: false): every target gets the same map, "
            "which shows what the layer responds to, not the class.",
        ),
    )
    needs: ClassVar[frozenset[Need]] = frozenset({"cam_layer"})
    class_specific: ClassVar[bool] = False

    @override
    def passes(self, work: Workload) -> int:
        return 1
