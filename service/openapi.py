"""The OpenAPI document as the gateway serves it, for the committed snapshot and for client generators.

``python -m service.openapi > docs/openapi.json`` regenerates the snapshot tests/test_openapi.py checks.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def openapi_of(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every uploaded file also marked ``format: binary``.

    FastAPI describes an upload in OpenAPI 3.1 by ``contentMediaType`` alone, which generators such as
    openapi-python-client read as a text field (and then send the file's bytes as a string); the 3.0
    spelling beside it makes them send a file part.
    """
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                             openapi_version=app.openapi_version,
                             separate_input_output_schemas=app.separate_input_output_schemas)
        for body in schema.get("components", {}).get("schemas", {}).values():
            for field in body.get("properties", {}).values():
                for variant in [field, *field.get("anyOf", [])]:
                    if variant.get("contentMediaType") == "application/octet-stream":
                        variant["format"] = "binary"
        app.openapi_schema = schema
    return app.openapi_schema


def document() -> dict[str, Any]:
    """The schema of a gateway with default settings (the schema does not depend on them)."""
    from service.main import create_app  # here, not above: the gateway's module imports this one
    from xai.settings import Settings

    return create_app(Settings(redis_url="redis://unused")).openapi()


def main() -> None:
    print(json.dumps(document(), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
