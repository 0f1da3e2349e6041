"""HiResCAM's parameters and catalogue entry."""

from schemas.methods.contract import LayerParams, register_method


@register_method
class HiResCamParams(LayerParams):
    """HiResCAM: a layer's activations weighted element-wise by the target's gradient."""

    method = "hirescam"
    title = "HiResCAM"
    summary = (
        "Class activation map of a convolutional layer, each activation weighted by the "
        "target's gradient at the same position rather than by the channel's mean gradient "
        "(Grad-CAM)."
    )
    reference = "Draelos & Collins, arXiv 2011.08891, 2020"
    cost = "1 forward + 1 backward to the layer"
    signed = False
