"""The runtime around the model: half precision with its fp32 fall-back, thread and
precision settings, PNG decoding kept off the event loop, and 503 on a full queue."""

from __future__ import annotations

import io
import logging
import os
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import Tensor

from vae_service.model import load_weights
from vae_service.server.batch_jobs import Operation
from vae_service.server.main import create_app
from vae_service.server.request_bodies import decode_inline
from vae_service.server.runtime import Batching, ModelRuntime, run_guarded, torch_threads
from vae_service.server.settings import Settings


class HalfOverflows:
    """A fake model op that overflows under autocast, as fp16 can, and records each call."""

    def __init__(self, overflow: bool) -> None:
        self.overflow = overflow
        self.autocast: list[bool] = []

    def __call__(self, batch: Tensor) -> tuple[Tensor]:
        half = torch.is_autocast_enabled(batch.device.type)
        self.autocast.append(half)
        out = (batch * 2).to(torch.bfloat16 if half else torch.float32)
        return (out.fill_(float("inf")) if half and self.overflow else out,)


def test_non_finite_half_output_is_run_again_in_fp32(caplog: pytest.LogCaptureFixture) -> None:
    fake, batch = HalfOverflows(overflow=True), torch.rand(3, 4)
    with caplog.at_level(logging.WARNING, logger="service"):
        (out,) = run_guarded(fake, batch, torch.bfloat16)
    assert fake.autocast == [True, False]
    assert out.dtype == torch.float32 and torch.equal(out, batch * 2)
    assert "ran again in fp32" in caplog.text


def test_finite_half_output_is_kept_as_float32() -> None:
    fake, batch = HalfOverflows(overflow=False), torch.rand(3, 4)
    (out,) = run_guarded(fake, batch, torch.bfloat16)
    assert fake.autocast == [True]
    assert out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, batch * 2, atol=0.02, rtol=0.01)  # bf16 rounding


def test_fp32_runs_without_autocast() -> None:
    fake = HalfOverflows(overflow=True)
    run_guarded(fake, torch.rand(2, 4), None)
    assert fake.autocast == [False]


def test_the_cpu_ignores_half_precision(tiny_weights: os.PathLike[str]) -> None:
    runtime = ModelRuntime(load_weights(tiny_weights), Batching(precision="bf16"))
    try:
        assert runtime.half is None
    finally:
        runtime.batcher.close()


def test_zero_torch_threads_leaves_a_core_to_the_event_loop() -> None:
    assert torch_threads(0) == max(1, len(os.sched_getaffinity(0)) - 1)
    assert torch_threads(3) == 3


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


def test_only_small_pngs_are_decoded_on_the_event_loop() -> None:
    assert decode_inline([png(28, 28)] * 4)
    bomb = png(4000, 4000)  # ~16 KB of file, 16 M pixels: 90 ms to decode
    assert len(bomb) < 64 * 1024 and not decode_inline([bomb])
    jpeg = io.BytesIO()
    Image.new("L", (28, 28)).save(jpeg, format="JPEG")
    assert not decode_inline([jpeg.getvalue()])  # no cheap header check: off the loop
    assert not decode_inline([png(28, 28)] * 200)  # too many pixels in all


def test_full_queue_answers_503_with_retry_after(api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"max_queue_images": 1})
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.repository.serving().runtime
        decode = runtime.batcher.operations["decode"]
        started, release = threading.Event(), threading.Event()

        def held(z: Tensor) -> tuple[Tensor, ...]:
            started.set()
            release.wait(10)
            return decode.fn(z)

        runtime.batcher.operations["decode"] = Operation(held, decode.row_shape)
        body = {"z": [[0.0] * 4]}
        replies: list[int] = []

        def post() -> None:
            replies.append(client.post("/decode", json=body).status_code)

        running = threading.Thread(target=post)  # the worker holds this one
        running.start()
        assert started.wait(10)
        queued = threading.Thread(target=post)  # this one fills the queue
        queued.start()
        deadline = time.monotonic() + 10
        while runtime.batcher.queued_rows < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/decode", json=body)
        release.set()
        running.join(10)
        queued.join(10)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "queued" in refused.json()["detail"]
    assert replies == [200, 200]
