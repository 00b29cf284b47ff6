"""Property-based fuzzing of every API operation from its own OpenAPI schema (Schemathesis):
thousands of generated requests, with a key that may do everything, against the real app over
a gallery of real PETS tracks. No answer may be a server error, and every status code must be
one the schema documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the API extra is not installed (pip install -e '.[api]')")
schemathesis = pytest.importorskip("schemathesis", reason="the test extra's schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import status_code_conformance  # noqa: E402

from refind.app.api import create_app  # noqa: E402
from refind.config import parse_config  # noqa: E402
from tests.app.api_server import api_config, sha  # noqa: E402

KEY = "fuzz-desk-1"
EXAMPLES = 200  # per operation: 11 operations take parameters, so over 2,000 calls in all


@pytest.fixture(scope="module")
def fuzz_app(gallery: Path) -> Iterator[object]:
    keys = [{"name": "desk", "key_sha256": sha(KEY), "forget": True, "manage_cameras": True}]
    # no refind serve is linked: camera changes get a clear 409 (test_api_hardening covers a
    # serve that does not answer: 503, which this check would count as a server error)
    cfg = parse_config(api_config(gallery, keys=keys))
    yield create_app(cfg)


STREAMS = {"/v1/alerts/stream"}  # server-sent events stay open: test_web reads that one


def fuzz(operation: object, seen: list[int]):  # type: ignore[no-untyped-def]
    """The Hypothesis test of one operation: each generated request is sent with the key, its
    status kept in ``seen``, and the answer checked."""

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())  # type: ignore[attr-defined]
    def run(case: object) -> None:
        response = case.call(headers={"X-API-Key": KEY})  # type: ignore[attr-defined]
        seen.append(response.status_code)
        case.validate_response(  # type: ignore[attr-defined]
            response, checks=[not_a_server_error, status_code_conformance])

    return run


def test_no_server_errors_and_only_documented_statuses(fuzz_app: object) -> None:
    """Every operation, EXAMPLES generated requests each (derandomized: the same each run)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    calls: dict[str, list[int]] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in STREAMS:
            continue
        label = f"{operation.method.upper()} {operation.path}"
        try:
            fuzz(operation, calls.setdefault(label, []))()
        except (Exception, BaseExceptionGroup) as err:  # a line per failed operation
            failures.append(f"{label}: {str(err)[:800]}")
    total = sum(len(v) for v in calls.values())
    print({k: len(v) for k, v in calls.items()}, "calls:", total)
    assert not failures, "\n".join(failures)
    assert total >= 2000, total
    assert not [c for v in calls.values() for c in v if c >= 500]
