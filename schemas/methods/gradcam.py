"""Grad-CAM's parameters and catalogue entry."""

from schemas.methods.contract import LayerParams, register_method


@register_method
class GradCamParams(LayerParams):
    """Grad-CAM: gradient-weighted activations of one convolutional layer."""

    method = "gradcam"
    title = "Grad-CAM"
    summary = (
        "Class activation map of a convolutional layer, weighted by the spatial mean of the "
        "target's gradient; coarse, class-discriminative."
    )
    reference = "Selvaraju et al., ICCV 2017"
    cost = "1 forward + 1 backward to the layer"
    signed = False
