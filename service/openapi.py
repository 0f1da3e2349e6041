"""The OpenAPI document's hand-written parts, and the page that shows it.

`/docs` (Swagger UI) loads its script, style and icon from this gateway, never from a CDN, so that
it works on a network without internet. There is no `/redoc`: ReDoc fetches its logo from its
maker's CDN whatever it is told.
"""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from schemas.explain import (
    METHODS_SCHEMA,
    ExplainRequest,
    ExplainResponse,
)
from schemas.jobs import JobAccepted
from schemas.kserve import KServeExplainRequest
from schemas.problems import PROBLEM_MEDIA_TYPE, Problem
from schemas.visualizations import VisualizationParams
from service.admission import JSON_FIELDS

_REF = "#/components/schemas/{model}"

FORM_METHODS: dict[str, object] = {
    **METHODS_SCHEMA,
    "description": "one part per method; a part may also hold a comma-separated list",
}

FORM_PROPERTIES: dict[str, object] = {
    "image": {
        "type": "string",
        "format": "binary",
        "description": "PNG, JPEG or DICOM file",
    },
    "model": {"type": "string", "minLength": 1, "maxLength": 64},
    "methods": FORM_METHODS,
    # JSON parts, as a browser's FormData sends them (`encoding` below).
    **{
        name: {"$ref": _REF.format(model=f"ExplainRequest/properties/{name}")}
        for name in JSON_FIELDS
    },
}

EXPLAIN_BODY: dict[str, object] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model="ExplainRequest")}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "model"],
                    "additionalProperties": False,
                    "properties": FORM_PROPERTIES,
                },
                "encoding": {name: {"contentType": "application/json"} for name in JSON_FIELDS},
            },
        },
    }
}

VISUALIZATION_BODY: dict[str, object] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model="VisualizationParams")}}
        },
    }
}

_PROBLEM = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}}

_PROBLEM_TEXT = {
    400: "Undecodable image or bad base64",
    401: "No or wrong credentials",
    403: "The key lacks the scope",
    404: "Unknown model or job, or an instance the DICOMweb server lacks (`source`)",
    409: "The job already runs or has ended",
    413: "Body or image too large",
    415: "Unsupported media type or image format",
    422: "Invalid field, unknown method, bad target, a DICOM frame the file lacks, or an "
    "Idempotency-Key reused for another request",
    429: "Rate limit or model queue full; see Retry-After",
    502: "The DICOMweb server failed or refused the call (`source`, `store`)",
    503: "Redis unreachable or no live worker; see Retry-After",
    504: "The wait ran out, or the DICOMweb server did not answer in time; the body carries "
    "the job_id",
}


def problems(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the problem+json answers a route can give."""
    return {
        status: {"description": _PROBLEM_TEXT[status], "content": _PROBLEM} for status in statuses
    }


READ = problems(401, 403, 503)
READ_ONE = problems(401, 403, 404, 503)
CANCEL = problems(401, 403, 404, 409, 503)
SUBMIT = problems(400, 401, 403, 404, 413, 415, 422, 429, 503)

EXPLAIN_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": ExplainResponse, "description": "The maps"},
    202: {"model": JobAccepted, "description": "Queued (with `Prefer: respond-async`)"},
    **SUBMIT,
    **problems(502, 504),
}


def component_schemas() -> dict[str, object]:
    """Schemas referenced above, in the components section's form."""
    schemas: dict[str, object] = {}
    for model in (ExplainRequest, KServeExplainRequest, VisualizationParams, Problem):
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


DOCS_ASSETS_URL = "/docs/assets"
# fastapi-offline's copy of Swagger UI's build (swagger-ui-bundle.js, swagger-ui.css), an icon.
_DOCS_ASSETS_PACKAGE = ("fastapi_offline", "static")
# Swagger UI would otherwise send the schema's URL to validator.swagger.io for a badge.
_SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def install_docs_page(app: FastAPI) -> None:
    """Serve `/docs` and its assets, which need no key, on an app made with `docs_url=None`."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(packages=[_DOCS_ASSETS_PACKAGE]), name="docs_assets")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or ""),
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=_SWAGGER_UI_PARAMETERS,
        )
