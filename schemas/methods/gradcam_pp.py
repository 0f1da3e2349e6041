"""Grad-CAM++'s parameters and catalogue entry."""

from schemas.methods.contract import LayerParams, randomisation_caveat, register_method


@register_method
class GradCamPlusPlusParams(LayerParams):
    """Grad-CAM++: pixel-wise weighted positive gradients."""

    method = "gradcam_pp"
    title = "Grad-CAM++"
    summary = (
        "Class activation map of a convolutional layer, each channel weighted by its positive "
        "gradients, pixel-wise weighted (closed form for exp(score))."
    )
    reference = "Chattopadhyay et al., WACV 2018"
    cost = "1 forward + 1 backward to the layer"
    signed = False
    caveats = (
        randomisation_caveat(
            0.63,
            "Its channel weights keep only positive gradients, so with a random head it still "
            "marks where the layer's activations are strong; it passes once the last convolution "
            "is re-drawn too.",
        ),
    )
