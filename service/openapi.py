"""OpenAPI descriptions of bodies the routes parse by hand (JSON or multipart)."""

from typing import Any

from schemas.explain import ExplainRequest, ExplainResponse
from schemas.jobs import JobAccepted
from schemas.kserve import KServeExplainRequest
from schemas.problems import PROBLEM_MEDIA_TYPE, Problem

_REF = "#/components/schemas/{model}"

EXPLAIN_BODY: dict[str, object] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model="ExplainRequest")}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "model"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG or DICOM file",
                        },
                        "model": {"type": "string"},
                        "methods": {"type": "string", "description": "comma-separated"},
                        "target": {"type": "string"},
                        "params": {"type": "string", "description": "JSON object"},
                        "output": {"type": "string", "description": "JSON object"},
                        "dicom": {
                            "type": "string",
                            "description": 'JSON object, e.g. {"frame": 0, "window": '
                            '{"center": 40, "width": 400}}',
                        },
                    },
                }
            },
        },
    }
}

_PROBLEM = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}}

_PROBLEM_TEXT = {
    400: "Undecodable image or bad base64",
    401: "No or wrong credentials",
    403: "The key lacks the scope",
    404: "Unknown model or job",
    413: "Body or image too large",
    415: "Unsupported media type or image format",
    422: "Invalid field, unknown method, bad target or a DICOM frame the file lacks",
    429: "Rate limit or model queue full; see Retry-After",
    503: "Redis unreachable or no live worker; see Retry-After",
    504: "The wait ran out; the body carries the job_id",
}


def problems(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the problem+json answers a route can give."""
    return {
        status: {"description": _PROBLEM_TEXT[status], "content": _PROBLEM} for status in statuses
    }


READ = problems(401, 403, 503)
READ_ONE = problems(401, 403, 404, 503)
SUBMIT = problems(400, 401, 403, 404, 413, 415, 422, 429, 503)

EXPLAIN_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": ExplainResponse, "description": "The maps"},
    202: {"model": JobAccepted, "description": "Queued (with `Prefer: respond-async`)"},
    **SUBMIT,
    **problems(504),
}


def component_schemas() -> dict[str, object]:
    """Schemas referenced above, in the components section's form."""
    schemas: dict[str, object] = {}
    for model in (ExplainRequest, KServeExplainRequest, Problem):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def use_problem_for_validation_errors(schema: dict[str, Any]) -> None:
    """FastAPI documents its own 422 body; this service answers every error as problem+json."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {"description": _PROBLEM_TEXT[422], "content": _PROBLEM}
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
