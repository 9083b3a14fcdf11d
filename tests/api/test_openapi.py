"""The OpenAPI document: valid OpenAPI 3, every operation documented with a response model
(or an explicit content type), every /api/v1 operation secured by the bearer scheme."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api import ApiConfigError, ApiSettings, create_app
from api import _schemas as schemas
from provenance_store import SchemaOutdatedError


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def test_document_is_valid_openapi(openapi: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    assert openapi["openapi"].startswith("3.1")
    # The OpenAPI 3.1 meta-schema's core: paths, operations and responses are well-formed.
    assert openapi["info"]["title"] == "beamtwin"
    for path, item in openapi["paths"].items():
        assert path.startswith("/")
        for method, op in item.items():
            assert method in {"get", "post", "put", "patch", "delete"}
            assert op["responses"], f"{method} {path} documents no response"
            assert op["operationId"]
    # Every schema of the components is itself a valid JSON Schema (2020-12).
    for schema in openapi["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_route_has_a_response_model(openapi: dict[str, Any]) -> None:
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            ok = responses.get("200") or responses.get("201") or responses["202"]
            content = ok.get("content")
            assert content, f"{method} {path}: 200 has no content"
            for media, body in content.items():
                schema = body.get("schema")
                assert schema, f"{method} {path}: {media} has no schema"
                if media == "application/json":
                    assert schema != {}, f"{method} {path}: untyped JSON response"


def test_api_routes_are_secured_and_document_errors(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    api_ops = [
        (path, op)
        for path, item in openapi["paths"].items()
        if path.startswith("/api/v1")
        for op in item.values()
    ]
    assert len(api_ops) == 50
    for path, op in api_ops:
        assert op.get("security") == [{"HTTPBearer": []}], path
        assert {"401", "403", "404", "422"} <= set(op["responses"]), path
        assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in openapi["paths"][path]["get"]


def test_models_carry_examples(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    for name in ("Instrument", "Channel", "State", "Telemetry", "Flag", "Calibration", "Gap"):
        assert schemas[name].get("examples"), name
    for name in ("Dataset", "DatasetDetail", "SnapshotSummary", "Snapshot", "ProvDocument"):
        assert schemas[name].get("examples"), name
    assert schemas["SnapshotCorrection"]["required"] == ["reason", "fields"]


def test_telemetry_documents_csv(openapi: dict[str, Any]) -> None:
    op = openapi["paths"]["/api/v1/instruments/{instrument_id}/telemetry"]["get"]
    content = op["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/csv"}
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Telemetry"}
    assert "413" in op["responses"]


def test_app_needs_a_database() -> None:
    with pytest.raises(ApiConfigError, match="BEAMTWIN_DATABASE_URL"):
        create_app(ApiSettings(database_url=None))


def test_app_refuses_to_start_on_an_old_schema(empty_database_url: str) -> None:
    app = create_app(ApiSettings(database_url=SecretStr(empty_database_url)))
    with pytest.raises(SchemaOutdatedError, match="beamtwin db upgrade"), TestClient(app):
        pass


def test_readyz_reports_an_old_schema(empty_database_url: str) -> None:
    app = create_app(ApiSettings(database_url=SecretStr(empty_database_url)))
    client = TestClient(app)  # no lifespan: the app runs although the schema is old
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == "schema_outdated"
    assert "beamtwin db upgrade" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200
    client.close()
    app.state.engine.dispose()


def test_server_bugs_are_500_with_the_error_body(database_url: str) -> None:
    app = create_app(ApiSettings(database_url=SecretStr(database_url)))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/bad-model", response_model=schemas.Health)
    def bad_model() -> schemas.Health:
        return schemas.Health(status="broken")  # type: ignore[arg-type]

    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("/boom", "/bad-model"):
            response = client.get(path)
            assert response.status_code == 500, path
            assert response.json() == {"error": "internal_error", "detail": "internal server error"}
