"""The OpenAPI document's key schemes and the `/docs` page that must work without internet."""

import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typing_extensions import override

from service.app import create_app
from service.auth import hash_key
from service.config import Settings

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


class AssetUrls(HTMLParser):
    """The `src` and `href` of every element of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    @override
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture()
def gateway(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """A gateway with authentication on: the docs must not need a key."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "viewer", "sha256": hash_key("secret")}]}))
    settings = Settings(redis_url=redis_url, auth=True, api_keys_file=keys)
    with TestClient(create_app(settings)) as client:
        yield client


def test_docs_page_loads_its_assets_from_the_gateway(gateway: TestClient) -> None:
    page = gateway.get("/docs")
    parser = AssetUrls()
    parser.feed(page.text)

    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assert '"validatorUrl": null' in page.text
    assert {Path(url).suffix for url in parser.urls} == set(CONTENT_TYPES)
    for url in parser.urls:
        assert url.startswith("/docs/assets/"), url
        asset = gateway.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(CONTENT_TYPES[Path(url).suffix]), url
        assert asset.content


def test_no_page_of_docs_from_a_cdn(gateway: TestClient) -> None:
    assert gateway.get("/redoc").status_code == 404
    assert gateway.get("/docs/oauth2-redirect").status_code == 404
    assert gateway.get("/docs/assets/no-such-file.js").status_code == 404


def test_openapi_declares_both_ways_to_present_a_key(gateway: TestClient) -> None:
    schema = gateway.get("/openapi.json").json()

    assert schema["components"]["securitySchemes"] == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key as `Authorization: Bearer <key>`.",
        },
        "apiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key.",
        },
    }
    secured = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") == [{"bearer": []}, {"apiKey": []}]
    }
    unsecured = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "security" not in operation
    }
    assert unsecured == {("GET", "/healthz"), ("GET", "/readyz")}
    assert {("POST", "/v1/explanations"), ("GET", "/metrics")} <= secured
    assert len(secured) + len(unsecured) == sum(len(ops) for ops in schema["paths"].values())
    for _, path in secured | unsecured:
        headers = [p["name"].lower() for p in schema["paths"][path].get("parameters", [])]
        assert "authorization" not in headers and "x-api-key" not in headers


def test_the_declared_security_is_what_the_gateway_asks_for(gateway: TestClient) -> None:
    """Every GET without path parameters: a key is refused missing iff the schema asks for one."""
    schema = gateway.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        if "get" not in operations or "{" in path:
            continue
        answer = gateway.get(path)
        assert (answer.status_code == 401) == ("security" in operations["get"]), path
    for presented in ({"Authorization": "Bearer secret"}, {"X-API-Key": "secret"}):
        assert gateway.get("/v1/methods", headers=presented).status_code == 200


def test_the_explain_routes_document_the_idempotency_key(gateway: TestClient) -> None:
    schema = gateway.get("/openapi.json").json()
    for path in (
        "/v1/explanations",
        "/v1/jobs",
        "/v1/models/{model_id}:explain",
        "/v1/models/{model_id}/visualizations",
    ):
        (header,) = (p for p in schema["paths"][path]["post"]["parameters"] if p["in"] == "header")
        assert header["name"] == "Idempotency-Key" and not header.get("required"), path
        assert "same `job_id`" in header["description"]
