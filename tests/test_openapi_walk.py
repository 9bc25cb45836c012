"""The OpenAPI document is exact: a property-based walk of /openapi.json with schemathesis,
in process through the app's real lifespan with the tiny test settings.

Its engine runs what its command line would: the schema's examples, the coverage phase
(each bound, just inside and just outside) and random requests, valid and invalid, for
every operation. Requests the document allows must be accepted, and those it forbids
must get a 4xx; no request may get a 5xx, and every answer must match what the document
declares. The one constraint no schema can state is which bytes are an image (or a .npy
file): those operations declare 400 for them, and a valid request may get a 400 only
with an image's own error message.
"""

from __future__ import annotations

import re

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.python.asgi import shutdown_lifespans

from vae_service.server.main import create_app
from vae_service.server.settings import Settings

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
)
ADMIN_KEY = "walk-admin-key"  # so that POST /models/{model}/reload can succeed
CONFIG = {
    "headers": {"Authorization": f"Bearer {ADMIN_KEY}"},
    # The same requests on every run, and nothing written to disk.
    "generation": {"mode": "all", "max-examples": 100, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "checks": {
        "enabled": False,
        **{name: {"enabled": True} for name in CHECKS},
        # 400 is an image no decoder reads (checked below); any other 4xx is a refusal.
        "positive_data_acceptance": {"enabled": True, "expected-statuses": ["2xx", "400"]},
    },
}
NOT_AN_IMAGE = re.compile(
    r"images\[\d+\] (is empty|could not be decoded|is not an image|has no)|npy"
)


def walk(app: object) -> tuple[list[str], int]:
    """Failures (with the request that caused each) and the number of requests sent."""
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG)
    )
    failures, sent = [], 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            sent += len(recorder.interactions)
            for case_id, checks in recorder.checks.items():
                request = recorder.interactions[case_id].request
                failures += [
                    f"{recorder.label} {check.name}: {check.failure_info.failure.title}\n"
                    f"  {request.method} {request.uri} {request.body!r:.300}"
                    for check in checks
                    if check.failure_info is not None
                ]
            for case_id, node in recorder.cases.items():
                response = recorder.interactions[case_id].response
                if (
                    node.value.meta is not None
                    and node.value.meta.generation.mode.is_positive
                    and response is not None
                    and response.status_code == 400
                    and not NOT_AN_IMAGE.search(response.content.decode(errors="replace"))
                ):
                    failures.append(f"{recorder.label}: valid request got {response.content!r}")
    return failures, sent


def test_the_server_accepts_exactly_what_the_schema_allows(api_settings: Settings) -> None:
    try:
        # Loading the document starts the lifespan (the model loads and warms up); it
        # runs until shutdown_lifespans().
        admin = Settings(admin_keys=ADMIN_KEY).admin_keys
        failures, sent = walk(create_app(api_settings.model_copy(update={"admin_keys": admin})))
    finally:
        shutdown_lifespans()
    assert sent > 500
    assert not failures, "\n".join(failures)
