"""Queued visualization jobs through `workers.visualize`, answered as the API's response."""

import base64
from collections.abc import Sequence

from schemas import SERVICE_VERSION
from schemas.explain import ModelRef
from schemas.jobs import VisualizationJob
from schemas.visualizations import (
    ChannelObjective,
    ClassObjective,
    VisualizationProvenance,
    VisualizationResponse,
)
from workers.repository import LoadedModel
from workers.visualize import render_png, visualize


def visualization_responses(
    model: LoadedModel, jobs: Sequence[VisualizationJob]
) -> list[VisualizationResponse]:
    """Optimise the jobs as one batch; they must share `VisualizationParams.batch_key()`."""
    requests = [job.visualization for job in jobs]
    results = visualize(model.module, model.manifest.input, requests, device=model.device)
    responses = []
    for request, result in zip(requests, results, strict=True):
        if request.target is not None:
            target: ClassObjective | ChannelObjective = ClassObjective(
                class_index=request.target, label=model.manifest.labels[request.target]
            )
        else:
            assert request.layer is not None and request.channel is not None
            target = ChannelObjective(layer=request.layer, channel=request.channel)
        responses.append(
            VisualizationResponse(
                model=ModelRef(id=model.manifest.id, version=model.manifest.version),
                image_png=base64.b64encode(render_png(result)).decode("ascii"),
                target=target,
                activation=result.activation,
                probability=result.probability,
                steps=request.steps,
                compute_ms=result.compute_ms,
                provenance=VisualizationProvenance(
                    model_sha256=model.sha256,
                    service_version=SERVICE_VERSION,
                    device=str(model.device),
                    params=request,
                ),
            )
        )
    return responses
