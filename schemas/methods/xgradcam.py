"""XGrad-CAM's parameters and catalogue entry."""

from schemas.methods.contract import LayerParams, register_method


@register_method
class XGradCamParams(LayerParams):
    """XGrad-CAM: channels weighted by their activation-weighted mean gradient."""

    method = "xgradcam"
    title = "XGrad-CAM"
    summary = (
        "Class activation map of a convolutional layer, each channel weighted by its gradient "
        "averaged with the channel's own normalised activations as weights (axiom-based "
        "Grad-CAM)."
    )
    reference = "Fu et al., BMVC 2020"
    cost = "1 forward + 1 backward to the layer"
    signed = False
