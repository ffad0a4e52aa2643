"""The HTTP API against its own OpenAPI document: schemathesis, every check, in-process (no Ray).

Each operation gets generated requests (schema examples, the coverage phase's boundary and negative cases,
then fuzzing with positive and negative data, ``MAX_EXAMPLES`` each) sent to the real ingress app over fake
deployment handles (:mod:`tests.serving.inproc`); every registered check runs on every response: no 5xx,
status codes, content types, headers and bodies as documented, schema-valid requests accepted and invalid ones
rejected, undeclared methods answered 405 with ``Allow``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from tests.serving.inproc import ingress_app

MAX_EXAMPLES = 100


# Two statuses the checks do not expect by default, both documented per operation: a schema-valid swap names a
# path that is (almost surely) not an index version (400 bad_bundle), and an invalid body may be refused for its
# size before it is parsed (413 body_too_large).
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
CONFIG = SchemathesisConfig.from_dict({
    "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
    "operations": [{"include-path": "/v1/admin/indexes",
                    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403"]}}}]})
with ingress_app() as _app:  # the document as a replica publishes it (its deployed names as enums)
    schema = schemathesis.openapi.from_asgi("/openapi.json", _app, config=CONFIG)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=MAX_EXAMPLES, deterministic=True, database="none")


@pytest.fixture(scope="module", autouse=True)
def _ingress() -> Iterator[None]:
    """The same app with the same ingress object answering (schemathesis is eager: no lazy fixture here)."""
    with ingress_app():
        yield


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS.get_all())
