"""Schemathesis over the gateway's OpenAPI schema: no generated request gets a 5xx.

Runs in-process (ASGI) against the real PostgreSQL, Redis and Orthanc, with an admin token so
requests get past authentication; 30 examples per operation and mode keep it short.
"""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.schemas import BaseSchema

from spinecloud_gateway.app import create_app
from spinecloud_shared.db.models import Role
from spinecloud_shared.orthanc.local import LocalOrthanc
from tests.integration.test_gateway_support import (
    bearer,
    gateway_settings,
    make_token,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Operations of the models, trainings and evaluations routers that the run must reach.
NEW_PATHS = {
    "/api/v1/models/{model_id}/promote",
    "/api/v1/trainings/{training_id}/retry",
    "/api/v1/evaluations/{evaluation_id}/tables/{table}.csv",
    "/api/v1/evaluations/{evaluation_id}/report",
}


@pytest.fixture(scope="module")
def admin_token(gateway_db: str) -> str:
    return make_token(gateway_db, Role.ADMIN, None, name="schemathesis")


@pytest.fixture(scope="module")
def api_schema(
    gateway_db: str,
    _redis_test_db: str,
    orthanc: LocalOrthanc,
    tmp_path_factory: pytest.TempPathFactory,
) -> BaseSchema:
    site = tmp_path_factory.mktemp("site")  # model and evaluation paths must lie in it
    app = create_app(gateway_settings(gateway_db, _redis_test_db, orthanc, data_dir=site))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_server_errors(api_schema: BaseSchema, admin_token: str) -> None:
    """Every operation, 30 valid and 30 invalid generated requests: no answer is a 5xx.

    Driven through Hypothesis directly: schemathesis' pytest plugin does not run on pytest 9.
    """
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 9
    paths = {operation.path for operation in operations}
    assert paths >= NEW_PATHS, NEW_PATHS - paths
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_5xx(case: schemathesis.Case) -> None:
            response = case.call(headers=bearer(admin_token))
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:300]}"
            )

        try:
            no_5xx()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break in /healthz and /readyz
