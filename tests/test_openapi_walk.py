"""The OpenAPI document is exact: a property-based walk of /openapi.json with schemathesis,
in process through the app's real lifespan, as ``st run URL/openapi.json --checks all``
would walk it.

The app serves a model repository whose models differ where the document can tell:
fashion-mnist (the tiny model, latent_dim 4, no fitted prior), wide (latent_dim 6) and
fitted (a fitted prior), so that /models/{model}/decode, /interpolate and /sample are
written out for each model; and it has API keys, so that every operation but the
health checks declares its bearer key (the walk sends the admin key, and ``ignored_auth``
tries each operation without it).

Its engine runs what its command line would, every check included: the schema's
examples, the coverage phase (each bound, just inside and just outside), random
requests, valid and invalid, for every operation, and the stateful phase (names from
GET /models sent to the model routes). Requests the document allows must be accepted,
and those it forbids must get a 4xx; no request may get a 5xx, and every answer must
match what the document declares. The one constraint no schema can state is which bytes
are an image (or a .npy file): those operations declare 400 for them, and a valid
request may get a 400 only with the message for bytes that are no image.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import schemathesis
import torch
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.python.asgi import shutdown_lifespans

from tests.conftest import TINY, settings_for
from vae_service.model import VAE, VAEConfig, save_weights
from vae_service.model.prior import fit_prior
from vae_service.model.prior_files import attach_prior
from vae_service.server.main import create_app

ADMIN_KEY = "walk-admin-key"  # so that POST /models/{model}/reload can succeed
AUTHORIZATION = {"Authorization": f"Bearer {ADMIN_KEY}"}
WIDE = VAEConfig(image_size=28, channels=1, latent_dim=6, widths=(4, 8), hidden_dim=16)
META = {"data": {"name": "synthetic", "shape": [1, 28, 28]}, "training": {"epochs": 0}}
CONFIG = {
    "headers": AUTHORIZATION,
    # The same requests on every run, and nothing written to disk.
    "generation": {"mode": "all", "max-examples": 40, "deterministic": True, "database": "none"},
    "checks": {
        "enabled": True,  # --checks all
        # 400 is an image no decoder reads (checked below); any other 4xx is a refusal.
        "positive_data_acceptance": {"enabled": True, "expected-statuses": ["2xx", "400"]},
    },
}
# What a 400 says of bytes that are no image file (or no .npy file): an empty file is
# no such case, as the document's minLength says.
NOT_AN_IMAGE = re.compile(
    r"images\[\d+\] (could not be decoded|is not an image file|has no pixels)"
    r"|not a valid \.npy body|unsupported \.npy format"
)


def model_repository(folder: Path) -> Path:
    """fashion-mnist (tiny), wide (latent_dim 6) and fitted (a fitted prior)."""
    for name, config, seed in (("fashion-mnist", TINY, 0), ("wide", WIDE, 1), ("plain", TINY, 2)):
        torch.manual_seed(seed)
        save_weights(folder / f"{name}.safetensors", VAE(config).eval(), META)
    latents = torch.randn((90, 4), generator=torch.Generator().manual_seed(5)) * 2
    plain = folder / "plain.safetensors"
    attach_prior(plain, fit_prior(latents, 3), folder / "fitted.safetensors")
    plain.unlink()
    return folder


def walk(app: object) -> tuple[list[str], int, set[str]]:
    """Failures (with the request that caused each), the number of requests sent and
    the operations walked."""
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG), headers=AUTHORIZATION
    )
    failures, sent, walked = [], 0, set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            walked.add(recorder.label)
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
    return failures, sent, walked


def test_the_server_accepts_exactly_what_the_schema_allows() -> None:
    with tempfile.TemporaryDirectory() as folder:
        keys = {"api_keys": [SecretStr("walk-user-key")], "admin_keys": [SecretStr(ADMIN_KEY)]}
        settings = settings_for(Path(folder) / "unused.safetensors").model_copy(
            update={"model_dir": model_repository(Path(folder)), **keys}
        )
        try:
            # Loading the document starts the lifespan (the models load and warm up);
            # it runs until shutdown_lifespans().
            failures, sent, walked = walk(create_app(settings))
        finally:
            shutdown_lifespans()
    assert not failures, "\n".join(failures)
    assert sent > 1000
    assert "POST /models/wide/decode" in walked and "GET /models/fitted/sample" in walked
