"""benchmarks/colour.py measures real work: every request it sends is one the service
answers 200 for the same 64x64 RGB weights, and every in-process counterpart runs."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi.testclient import TestClient

from benchmarks import bench, colour
from tests.conftest import settings_for
from vae_service.server.main import create_app


def test_every_row_is_work_the_service_answers() -> None:
    weights, described = colour.shapes_weights(None)
    assert described.startswith("the bundled shapes model")
    work = colour.build(weights)
    assert [w.name for w in work][:2] == ["encode 1 image, JSON", "decode 1 latent, JSON"]
    assert {w.images for w in work} == {1, 256}
    # the service's default limits, as the benchmark's server runs with
    limits = {"max_body_bytes": 32 * 1024 * 1024, "max_images_per_request": 1024}
    settings = settings_for(weights).model_copy(update=limits)
    with TestClient(create_app(settings)) as client, torch.inference_mode():
        for w in work:
            request = w.requests["ours"]
            headers = {"content-type": request.content_type, **dict(request.headers)}
            reply = client.request(
                request.method, request.path, content=request.body, headers=headers
            )
            assert reply.status_code == 200, (w.name, reply.text[:200])
            w.in_process()


def test_its_report_has_its_own_section(tmp_path: Path) -> None:
    target = tmp_path / "BENCHMARKS.md"
    bench.write_section(target, "the main run")
    bench.write_section(target, "colour, first", colour.WRITE_START, colour.WRITE_END)
    bench.write_section(target, "colour, again", colour.WRITE_START, colour.WRITE_END)
    text = target.read_text()
    assert "the main run" in text and "colour, again" in text and "first" not in text
