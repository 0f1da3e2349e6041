"""Guided Grad-CAM's parameters and catalogue entry."""

from typing import ClassVar

from typing_extensions import override

from schemas.methods.contract import LayerParams, Need, Workload, register_method


@register_method
class GuidedGradCamParams(LayerParams):
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM."""

    method = "guided_gradcam"
    title = "Guided Grad-CAM"
    summary = (
        "Guided backpropagation (largest magnitude over channels) times Grad-CAM upsampled to "
        "the input: fine detail inside the class-discriminative region."
    )
    reference = "Selvaraju et al., ICCV 2017"
    cost = "2 forward + 2 backward (one to the layer, one guided to the input)"
    signed = False
    needs: ClassVar[frozenset[Need]] = frozenset({"gradients", "cam_layer", "relu"})
    caveats: ClassVar[tuple[str, ...]] = (
        "Its fine detail is guided backpropagation's, which fails the model-parameter "
        "randomisation check (Adebayo et al., NeurIPS 2018, 'Sanity Checks for Saliency Maps', "
        "report Guided Grad-CAM failing it too): that detail shows the image's edges more than "
        "what the model learnt. On demo-lesions the map as a whole passes (rank correlation "
        "-0.21 once the head is randomised) because its Grad-CAM factor follows the head "
        "(docs/quality.md); guided backpropagation alone fails (0.71).",
    )

    @override
    def passes(self, work: Workload) -> int:
        return 4 * work.targets
