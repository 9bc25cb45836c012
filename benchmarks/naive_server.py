"""The baseline: a plain FastAPI app that calls the model inside each request, with no
batching. Handlers are sync ``def``, so FastAPI runs each on its thread pool, as most
hand-written model endpoints do.

    python -m benchmarks.naive_server --weights W.safetensors --port 8002
"""

from __future__ import annotations

from typing import Any

import torch
import uvicorn
from fastapi import FastAPI

from benchmarks import peers


def create_app(weights: str, threads: int) -> FastAPI:
    model = peers.load_model(weights, threads)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/encode")
    def encode(body: dict[str, Any]) -> dict[str, Any]:
        with torch.inference_mode():
            mean, logvar = model.encode(peers.images_from_json(body, model))
        return peers.posterior_json(mean, logvar)

    @app.post("/decode")
    def decode(body: dict[str, Any]) -> dict[str, Any]:
        with torch.inference_mode():
            return peers.images_json(model.decode(peers.latents_from_json(body)))

    @app.get("/sample")
    def sample(n: int = 16, seed: int = 0) -> dict[str, Any]:
        z = peers.prior_draws(n, seed, model)
        with torch.inference_mode():
            return peers.images_json(model.decode(z), z)

    return app


def main() -> None:
    args = peers.parse_args("Naive FastAPI VAE server (benchmark baseline)")
    app = create_app(args.weights, args.threads)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
