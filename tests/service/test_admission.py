"""What the gateway derives from an explain request before it queues it."""

import pytest
from model_infos import small_model_info  # type: ignore[import-not-found]

from schemas.dicom import DicomOptions, DicomWindow
from schemas.explain import ExplainOptions
from schemas.methods import PARAMS_BY_METHOD, Workload
from schemas.models import InputSpec, ModelInfo
from service.admission import check_against_model, check_cost, explanation_cache_key
from service.auth import Principal
from service.config import Settings
from service.errors import InvalidRequest

INFO = small_model_info()
ALICE = Principal(name="alice", scopes=frozenset({"explain"}))


def test_the_cache_key_covers_the_dicom_options() -> None:
    def key(dicom: DicomOptions | None) -> str:
        options = ExplainOptions(model="m", dicom=dicom)
        return explanation_cache_key(options, options.applied_params(), b"dicm", INFO, ALICE)

    variants = [
        key(None),
        key(DicomOptions(frame=1)),
        key(DicomOptions(window=DicomWindow(center=40, width=400))),
        key(DicomOptions(window=DicomWindow(center=40, width=401))),
    ]

    assert len(set(variants)) == len(variants)
    # Defaults written out or left implicit are the same request.
    assert key(None) == key(DicomOptions(frame=0, window=None))


DEMO = INFO.model_copy(
    update={
        "input": InputSpec(channels=1, height=128, width=128, mean=[0.5], std=[0.25]),
        "methods": list(PARAMS_BY_METHOD),
    }
)
RESNET = INFO.model_copy(
    update={"input": InputSpec(channels=3, height=224, width=224, mean=[0.5] * 3, std=[0.25] * 3)}
)


def cost_check(info: ModelInfo, **request: object) -> None:
    options = ExplainOptions.model_validate({"model": info.id, **request})
    check_cost(options, info, Settings())


def test_every_method_at_its_defaults_is_within_the_default_cost() -> None:
    cost_check(DEMO, methods=list(PARAMS_BY_METHOD), target="top3")
    for method in PARAMS_BY_METHOD:
        cost_check(RESNET, methods=[method], target="top1")


@pytest.mark.parametrize(
    ("method", "params", "cost"),
    [
        ("rise", {"masks": 8000}, "2,000"),
        ("integrated_gradients", {"steps": 1024, "max_steps": 4096}, "2,048"),
        ("occlusion", {"window": 1, "stride": 1}, "4,096"),
        ("smoothgrad", {"samples": 256, "base": "integrated_gradients"}, "6,528"),
    ],
)
def test_a_job_above_the_cost_limit_is_refused_naming_its_cost_and_the_limit(
    method: str, params: dict[str, object], cost: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        cost_check(DEMO, methods=[method], params={method: params})

    assert f"cost {cost} passes" in refused.value.detail
    assert "at most 1,800" in refused.value.detail


def test_gradient_methods_cost_per_target_and_perturbation_methods_per_image() -> None:
    saliency, rise = PARAMS_BY_METHOD["saliency"](), PARAMS_BY_METHOD["rise"]()
    assert saliency.passes(Workload(128, 128, 3)) == 3 * saliency.passes(Workload(128, 128, 1))
    assert rise.passes(Workload(128, 128, 3)) == rise.passes(Workload(128, 128, 1))


def test_scorecam_costs_one_pass_per_channel_of_the_layer_the_model_publishes() -> None:
    layers = {"features.2": 64, "features.4": 4096}
    info = RESNET.model_copy(
        update={
            "cam_layers": list(layers),
            "cam_layer_channels": layers,
            "default_cam_layer": "features.4",
        }
    )
    # 224² pixels are 0.766 passes over 256²: 66 passes are 51, 4,098 are 3,138.
    cost_check(info, methods=["scorecam"], params={"scorecam": {"layer": "features.2"}})
    with pytest.raises(InvalidRequest) as refused:
        cost_check(info, methods=["scorecam"])
    assert "cost 3,138 passes" in refused.value.detail
    # A model that publishes no channel counts is costed as a 512-channel layer: 394 passes.
    cost_check(RESNET, methods=["scorecam"])


def test_a_method_the_model_does_not_support_is_refused_with_its_reason() -> None:
    reason = "guided_backprop needs ReLU activations to guide: the model has no ReLU activation"
    info = INFO.model_copy(update={"unsupported": {"guided_backprop": reason}})
    options = ExplainOptions(model=info.id, methods=["gradcam", "guided_backprop"])

    with pytest.raises(InvalidRequest) as refused:
        check_against_model(options, info)

    assert refused.value.detail == f"Model 'm': {reason}."
    check_against_model(ExplainOptions(model=info.id, methods=["gradcam"]), info)


def test_a_model_info_without_kinds_or_refusals_still_reads() -> None:
    # What a worker of an earlier version publishes: no `cam_layer_kinds`, no `unsupported`.
    published = INFO.model_dump(exclude={"cam_layer_kinds", "unsupported"})

    info = ModelInfo.model_validate(published)

    assert (info.cam_layer_kinds, info.unsupported) == ({}, {})
