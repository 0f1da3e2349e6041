"""OpenAPI descriptions of bodies the routes parse by hand (JSON or multipart)."""

from schemas.explain import ExplainRequest, ExplainResponse
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
                        "image": {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                        "methods": {"type": "string", "description": "comma-separated"},
                        "target": {"type": "string"},
                        "params": {"type": "string", "description": "JSON object"},
                        "output": {"type": "string", "description": "JSON object"},
                    },
                }
            },
        },
    }
}

_PROBLEM = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}}

EXPLAIN_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": ExplainResponse, "description": "The maps"},
    202: {"description": "Queued (with `Prefer: respond-async`)"},
    **{
        status: {"description": text, "content": _PROBLEM}
        for status, text in {
            400: "Undecodable image or bad base64",
            404: "Unknown model",
            413: "Body or image too large",
            415: "Unsupported media type or image format",
            422: "Invalid field, unknown method or bad target",
            429: "Model queue full",
            503: "Redis unreachable or no live worker",
            504: "The wait ran out; the body carries the job_id",
        }.items()
    },
}


def component_schemas() -> dict[str, object]:
    """Schemas referenced above, in the components section's form."""
    schemas: dict[str, object] = {}
    for model in (ExplainRequest, Problem):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas
