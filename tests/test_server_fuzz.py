"""A property-based fuzz of the whole HTTP API from its own OpenAPI schema (Schemathesis on
Hypothesis): every operation gets generated requests, valid and not, and must answer with no
5xx, with a status the schema documents, with the content type it documents, and with a body
that matches the documented schema (errors included: ``{"detail", "error"}``).

Bounded (a few dozen examples an operation, no shrinking past a deadline) so the suite stays
fast on two cores; ``BELKA_FUZZ_EXAMPLES`` raises it for a longer hunt.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)

import belka  # noqa: E402
from belka.server import ServerConfig, create_app  # noqa: E402

EXAMPLES = int(os.environ.get("BELKA_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


# The app and its lifespan (the service: model, storage, pools) start once, when this module is
# collected (Schemathesis makes one test per operation from the schema it reads then); its own
# calls then reach the same running app. teardown_module stops it.
_data = tempfile.mkdtemp(prefix="belka-fuzz-")
_app = create_app(ServerConfig(data_dir=Path(_data) / "data", allow="squirrel", workers=2,
                               allowed_hosts=("testserver",),
                               max_jobs=4, memory_wait_s=5), model=belka.load())
_running = TestClient(_app)
_running.__enter__()
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)
# Valid requests and invalid ones (wrong types, out-of-range numbers, missing parts), and the
# same sequence every run.
schema.config.generation.update(modes=list(schemathesis.GenerationMode), deterministic=True)


def teardown_module():
    _running.__exit__(None, None, None)
    shutil.rmtree(_data, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_error_and_no_schema_violation(case):
    case.call_and_validate(checks=CHECKS, excluded_checks=[])
