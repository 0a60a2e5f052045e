"""Property-based fuzzing of every operation in the app's own OpenAPI schema (schemathesis).

Whatever schemathesis generates (random multipart bodies, query values, headers), the service
must answer without a 5xx, with a status code, content type and body that its schema documents. The number of
examples is bounded so CI stays fast; raise AGELENS_FUZZ_EXAMPLES for a longer hunt.
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings

EXAMPLES = int(os.environ.get("AGELENS_FUZZ_EXAMPLES", "30"))


# schemathesis drives the ASGI app in-process and runs its lifespan, so the real model is loaded.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(Settings(max_upload_bytes=4 * 2**20)))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_documented_responses(case: schemathesis.Case) -> None:
    # Not "positive data acceptance": schema-valid bytes are rarely a decodable photo, and the
    # 415/422 answers to them are correct (and documented).
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )
