"""Schemathesis against the running gateway: every operation, fuzzed from its own OpenAPI schema.

Each generated request must get an answer that is not a 5xx, whose status code the schema
documents, and whose content type and body match what the schema says for that status; and a
request generated as schema-valid must not be refused as invalid (ST202, positive data
acceptance: 404 for a model or job that does not exist stays an accepted answer, since which
models are served is known only at run time and `GET /v1/models` lists them). What the server
checks against the served model or the image, or what JSON Schema or schemathesis cannot state,
`fit_positive_case` makes such a case meet.

The schema is built from the gateway's app at import, because `schema.parametrize()` needs it at
collection; a test checks that the running gateway serves exactly that schema. (Schemathesis's
lazy `schemathesis.pytest.from_fixture` loader sets `request.node._nodeid`, which pytest 9.2 no
longer has.) Random `image` strings never decode, so half of the generated explain bodies get a
real image, a served model and cheap methods: their generated targets and output options then
reach the worker. Request examples added to the loaded schema name a real image, model and job;
schemathesis sends each as is and varies it field by field, so every run takes the 200 path.
"""

import base64
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import Response
from schemathesis.generation.meta import TestPhase
from schemathesis.hooks import HookContext
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from schemas.explain import DEFAULT_METHOD
from schemas.methods.occlusion import OcclusionParams
from service.app import create_app
from service.devstack import DevStack
from workers.demo.data import make_sample

ROOT = Path(__file__).resolve().parents[2]
MODEL = "demo-lesions"
SERVED_MODELS = (MODEL, "demo-lesions-onnx")
EXPLAIN_PATHS = ("/v1/explanations", "/v1/jobs")
# Milliseconds each on the demo model, so the worker keeps up with the fuzzer.
CHEAP_METHODS = (["gradcam"], ["saliency"], ["gradcam", "saliency"])
# A generated positive `?timeout=` on a request with a real image is clamped into this range:
# long enough for a busy worker to finish (no 504 for a sync wait of 5e-324 s), short enough
# that no case waits minutes.
SYNC_WAIT_S = (10.0, 15.0)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]
# Generated cases per operation; the examples and coverage phases add their deterministic ones.
# `make fuzz` raises it (GLIMPSE_FUZZ_EXAMPLES) for a run of thousands of cases.
MAX_EXAMPLES = int(os.environ.get("GLIMPSE_FUZZ_EXAMPLES", "25"))
SEED = 20260501
# The example job id; a case that carries it is sent with the id of a job this module queued.
JOB_PLACEHOLDER = "an-example-job"
# Not `/v1/models/{model_id}/visualizations`: activation maximisation on a real model takes
# seconds to minutes a call. With unknown model ids its validation and its 404 are still fuzzed.
PATH_EXAMPLES = {
    "/v1/models/{model_id}": {"model_id": MODEL},
    "/v1/jobs/{job_id}": {"job_id": JOB_PLACEHOLDER},
}
SENT: Counter[tuple[str, int]] = Counter()


def encode(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    """A demo lesion image in `mode`, resized to `size` (width, height) and saved as `fmt`."""
    image = Image.fromarray((make_sample(3).image * 255).astype("uint8")).convert(mode)
    out = io.BytesIO()
    image.resize(size).save(out, format=fmt)
    return out.getvalue()


# Small, so that scores and overlays stay cheap: grey, RGB, RGBA and JPEG, down to 1×1.
VALID_IMAGES = (
    encode("L", (48, 40)),
    encode("RGB", (32, 32)),
    encode("RGBA", (20, 36)),
    encode("RGB", (40, 24), "JPEG"),
    encode("L", (1, 1)),
)
EXAMPLE_IMAGE = base64.b64encode(encode("L", (24, 24))).decode()
# Both served models are the demo model: its classes and its input side.
DEMO_MANIFEST = json.loads((ROOT / "models" / MODEL / "1" / "manifest.json").read_text())
MODEL_LABELS = DEMO_MANIFEST["labels"]
MODEL_SIDE = min(DEMO_MANIFEST["input"]["height"], DEMO_MANIFEST["input"]["width"])
OCCLUSION_WINDOW = OcclusionParams().window
OCCLUSION_STRIDE = OcclusionParams().stride
REAL_IMAGES = {
    EXAMPLE_IMAGE,
    *VALID_IMAGES,
    *(base64.b64encode(image).decode() for image in VALID_IMAGES),
}
# Width and height of each, by its bytes and by its base64.
IMAGE_SIZES = {
    image: Image.open(io.BytesIO(base64.b64decode(image) if isinstance(image, str) else image)).size
    for image in REAL_IMAGES
}
CHEAP = {method for methods in CHEAP_METHODS for method in methods}


def explain_example() -> dict[str, object]:
    """A request that must be explained: the body example of both explain operations."""
    return {
        "model": MODEL,
        "image": EXAMPLE_IMAGE,
        "methods": ["gradcam", "saliency"],
        "target": "top2",
        "output": {"scores": "base64", "heatmap": True, "grid": 8},
    }


def with_examples(openapi: dict[str, Any]) -> dict[str, Any]:
    """The gateway's schema with examples that name a real image, model and job."""
    paths = openapi["paths"]
    for path in EXPLAIN_PATHS:
        content = paths[path]["post"]["requestBody"]["content"]
        content["application/json"]["example"] = explain_example()
    for path, examples in PATH_EXAMPLES.items():
        for operation in paths[path].values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    parameter["example"] = examples[parameter["name"]]
    return openapi


def flatmap_case(context: HookContext, case: Case) -> st.SearchStrategy[Case]:
    """Half of the generated explain bodies carry a real image, a served model, cheap methods."""
    operation = context.operation
    if operation is None or not isinstance(case.body, dict):
        return st.just(case)
    if operation.path not in EXPLAIN_PATHS:
        return st.just(case)
    return st.tuples(
        st.booleans(),
        st.sampled_from(VALID_IMAGES),
        st.sampled_from(SERVED_MODELS),
        st.sampled_from(CHEAP_METHODS),
    ).map(lambda drawn: explainable(case, *drawn))


def explainable(case: Case, real: bool, image: bytes, model: str, methods: list[str]) -> Case:
    """`case` with a real image, model and methods in its body (when `real`), JSON or multipart."""
    if not real:
        return case
    assert isinstance(case.body, dict)
    # A file part carries bytes, JSON carries base64; `methods` is a list (one part per method).
    real_fields: dict[str, Any] = {"model": model, "image": image, "methods": methods}
    if case.media_type != "multipart/form-data":
        real_fields.update(image=base64.b64encode(image).decode())
    case.body = {**case.body, **real_fields}
    return case


def is_positive(case: Case) -> bool:
    """Whether schemathesis generated `case` as schema-valid data (ST202 then expects a 2xx)."""
    return case.meta is not None and case.meta.generation.mode.is_positive


def fit_occlusion(params: object) -> None:
    """A stride no larger than the window, as the server requires (so that every pixel is
    covered): one rule JSON Schema cannot state, since it never compares two values."""
    occlusion = params.get("occlusion") if isinstance(params, dict) else None
    if isinstance(occlusion, dict):
        window = occlusion.get("window", OCCLUSION_WINDOW)
        occlusion["stride"] = min(occlusion.get("stride", OCCLUSION_STRIDE), window)


def fit_positive_case(case: Case) -> None:
    """What every positive case (of any phase) needs that the schema cannot say, or that
    schemathesis cannot generate from it."""
    if not is_positive(case) or not isinstance(case.body, dict):
        return
    case.body = integral_floats_as_ints(case.body)
    parameters = case.body.get("parameters")  # KServe's shared options
    options = parameters if isinstance(parameters, dict) else case.body
    fit_occlusion(options.get("params"))
    if isinstance(output := options.get("output"), dict):
        output.pop("dicom", None)  # derived DICOM objects only of a DICOM file: none is sent
    if case.operation.path in EXPLAIN_PATHS:
        fit_params_to_methods(case.body)
        fit_dicomweb(case.body)
    if case.operation.path in EXPLAIN_PATHS and carries_real_image(case):
        fit_to_model(case)


def fit_dicomweb(body: dict[str, Any]) -> None:
    """The DICOMweb servers a request may name are the deployment's, which the schema cannot
    know (this stack configures none): a positive case's `source` becomes a real image and its
    `store` is dropped. `test_dicomweb_api` checks both against a real PACS."""
    if body.pop("source", None) is not None:
        body["image"] = EXAMPLE_IMAGE
    body.pop("store", None)


def integral_floats_as_ints(value: Any) -> Any:
    """JSON Schema counts 2908.0 as an integer and cannot exclude it; the server, strict, takes
    only 2908 for an integer field (and either for a number field)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {name: integral_floats_as_ints(item) for name, item in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(item) for item in value]
    return value


def fit_params_to_methods(form: dict[str, Any]) -> None:
    """`params` only for the methods the body requests, as the server requires: a rule JSON
    Schema can state (one `if`/`then` per method) but schemathesis cannot generate from
    ("Unsupported schema"), so the schema says it in words."""
    params, methods = form.get("params"), form.get("methods", [DEFAULT_METHOD])
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(params, dict) and isinstance(methods, list):
        form["params"] = {method: params[method] for method in methods if method in params}


def fit_to_model(case: Case) -> None:
    """Keep a positive case positive once it names a served model and a real PNG or JPEG.

    What the server checks against the model and the image, the schema cannot know (the same
    schema serves every model): the class range and CAM layers of the model, a score grid no
    finer than the map, DICOM options only for a DICOM file, and an Idempotency-Key per request
    (the schema cannot say that a token must not repeat). Each is made to fit here; the server
    refuses each with 422 otherwise, which `test_explanations_api` and the DICOM tests check.
    """
    assert isinstance(case.body, dict)
    body = case.body
    body.pop("dicom", None)
    # Cheap methods only, as `flatmap_case` draws them: a costlier one from the examples or
    # coverage phase would take seconds, or pass the cost limit (a 422 the schema cannot state).
    given = body.get("methods")
    methods = [m for m in given if m in CHEAP] if isinstance(given, list) else []
    body["methods"] = methods or [DEFAULT_METHOD]
    methods = body["methods"]
    params = body.get("params")
    if isinstance(params, dict):
        fitted = {m: dict(params[m]) for m in methods if isinstance(params.get(m), dict)}
        for values in fitted.values():
            values.pop("layer", None)
        body["params"] = fitted
    if "target" in body:
        body["target"] = fitted_target(body["target"])
    output = body.get("output")
    if isinstance(output, dict) and isinstance(output.get("grid"), int):
        image = body["image"]
        width, height = IMAGE_SIZES[getattr(image, "data", image)]
        side = MODEL_SIDE if output.get("size") == "model" else min(width, height)
        output["grid"] = min(output["grid"], side)
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex


def fitted_target(target: object) -> object:
    """`target` within the served models' classes (a multipart field arrives as text)."""
    if isinstance(target, str) and target.startswith("top"):
        return f"top{min(int(target[3:]), len(MODEL_LABELS))}"
    if isinstance(target, int) and not isinstance(target, bool):
        return target % len(MODEL_LABELS)
    if isinstance(target, list) and all(isinstance(t, int) for t in target):
        return list(dict.fromkeys(t % len(MODEL_LABELS) for t in target))
    if isinstance(target, dict) and isinstance(target.get("class"), int):
        # A region target applies to segmentation models; the served ones are classifiers.
        return target["class"] % len(MODEL_LABELS)
    return target


def carries_real_image(case: Case) -> bool:
    """Whether the body holds one of this module's images, as base64 or as a file part."""
    image = case.body.get("image") if isinstance(case.body, dict) else None
    image = getattr(image, "data", image)
    return isinstance(image, str | bytes) and image in REAL_IMAGES


def clamp_sync_wait(case: Case) -> None:
    """Clamp a positive `?timeout=` (a number, or a numeric string from the coverage phase)."""
    query = case.query or {}
    try:
        timeout = float(query["timeout"])
    except (KeyError, TypeError, ValueError):
        return
    if timeout > 0:
        low, high = SYNC_WAIT_S
        case.query = {**query, "timeout": min(max(timeout, low), high)}


def after_call(_context: HookContext, case: Case, response: Response) -> None:
    """Count each answer by operation and status, for the summary at the end of the module."""
    SENT[(case.operation.label, response.status_code)] += 1


def load_schema() -> BaseSchema:
    """The gateway's schema with examples, a fixed seed and a bounded number of cases."""
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["too_slow"],
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                "no-shrink": True,
            },
        }
    )
    loaded = schemathesis.openapi.from_dict(with_examples(create_app().openapi()), config=config)
    loaded.hook(flatmap_case)
    loaded.hook(after_call)
    return loaded


schema = load_schema()


@pytest.fixture(scope="module")
def queued_job(stack: DevStack) -> str:
    """The id of a job queued for this module; it stands in for the example job id."""
    job = httpx.post(f"{stack.url}/v1/jobs", json=explain_example(), timeout=30)
    assert job.status_code == 202, job.text
    return str(job.json()["job_id"])


@pytest.fixture(scope="module")
def summary() -> Iterator[None]:
    """Prints how many cases were sent, by operation and status (`pytest -rP` shows it)."""
    yield
    print(f"\nschemathesis sent {sum(SENT.values())} cases:")
    for (label, status), count in sorted(SENT.items()):
        print(f"  {label:28s} {status}  ×{count}")


def cancel_if_queued(stack: DevStack, response: Response) -> None:
    """Cancel a job the fuzzer queued, so that later tests find the worker idle."""
    if response.status_code == 202 and "location" in response.headers:
        location = response.headers["location"][0]
        httpx.delete(f"{stack.url}{location}", timeout=10)


def is_added_example(case: Case, job_id: str) -> bool:
    """Whether the examples phase sent, unchanged, one of the examples `with_examples` added."""
    if case.meta is None or case.meta.phase.name != TestPhase.EXAMPLES:
        return False
    added_paths = ({"model_id": MODEL}, {"job_id": job_id})
    return case.body == explain_example() or case.path_parameters in added_paths


def test_the_fuzzed_schema_is_the_one_the_gateway_serves(client: httpx.Client) -> None:
    assert client.get("/openapi.json").json() == create_app().openapi()


@schema.parametrize()
@settings(deadline=timedelta(seconds=30))
@pytest.mark.usefixtures("summary")
def test_gateway_answers_as_its_schema_says(case: Case, stack: DevStack, queued_job: str) -> None:
    if case.path_parameters and case.path_parameters.get("job_id") == JOB_PLACEHOLDER:
        case.path_parameters = {**case.path_parameters, "job_id": queued_job}
    fit_positive_case(case)  # first: it may give a `source` case a real image
    if case.operation.path == "/v1/explanations" and carries_real_image(case):
        clamp_sync_wait(case)
    response = case.call_and_validate(base_url=stack.url, checks=CHECKS, timeout=30)
    cancel_if_queued(stack, response)
    if is_added_example(case, queued_job):
        if case.method.upper() == "DELETE":
            # The example job is queued, or already computed by the idle worker: cancelled (200)
            # or, once it has run, the documented refusal (409).
            assert response.status_code in (200, 409), response.text
        else:
            assert 200 <= response.status_code < 300, response.text
