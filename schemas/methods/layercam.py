"""LayerCAM's parameters and catalogue entry."""

from schemas.methods.contract import LayerParams, randomisation_caveat, register_method


@register_method
class LayerCamParams(LayerParams):
    """LayerCAM: a layer's activations weighted element-wise by the target's positive gradient."""

    method = "layercam"
    title = "LayerCAM"
    summary = (
        "Class activation map of a convolutional layer, each activation weighted by the "
        "positive part of the target's gradient at the same position; fine-grained on "
        "shallower layers."
    )
    reference = "Jiang et al., IEEE TIP 2021"
    cost = "1 forward + 1 backward to the layer"
    signed = False
    caveats = (
        randomisation_caveat(
            0.62,
            "Its weights keep only positive gradients, so with a random head it still marks where "
            "the layer's activations are strong; it passes once the last convolution is re-drawn "
            "too.",
        ),
    )
