"""`GET /v1/models`, `GET /v1/models/{id}` and `GET /v1/methods`."""

from fastapi import APIRouter

from schemas.methods import MethodSpec, method_catalogue
from schemas.models import FailedModel, ModelEntry, ModelInfo
from schemas.visualizations import activation_max_spec
from service.deps import ExplainerDep, QueueDep
from service.errors import NotFound
from service.openapi import READ, READ_ONE, problems

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=list[ModelEntry], responses=READ)
async def list_models(_: ExplainerDep, queue: QueueDep) -> list[ModelInfo | FailedModel]:
    """Every model a worker has registered, with its live worker count, and every model folder
    that failed to load (`status: "failed"`, with its `reason`) while no live worker serves it."""
    return await queue.catalogue()


@router.get("/models/{model_id}", response_model=ModelEntry, responses=READ_ONE)
async def get_model(model_id: str, _: ExplainerDep, queue: QueueDep) -> ModelInfo | FailedModel:
    info = await queue.model(model_id)
    if info is None:
        raise NotFound(f"No model {model_id!r}; GET /v1/models lists the models.")
    return info


@router.get("/methods", response_model=list[MethodSpec], responses=problems(401, 403))
async def list_methods(_: ExplainerDep) -> list[MethodSpec]:
    """Each method with its description, parameters (JSON Schema) and cost in passes."""
    return [*method_catalogue(), activation_max_spec()]
