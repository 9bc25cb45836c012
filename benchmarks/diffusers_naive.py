"""The baseline for diffusers VAEs: a plain FastAPI app that runs the model inside each
request (one request, one forward pass, no batching), on the same raw-tensor wire format
as our /remote-decode and /remote-encode.

    python -m benchmarks.diffusers_naive --folder models/sd15 --port 8002 --threads 1
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

import diffusers
import torch
import uvicorn
from fastapi import FastAPI, Query, Request, Response


def tensor_of(body: bytes, shape: list[int]) -> torch.Tensor:
    return torch.frombuffer(bytearray(body), dtype=torch.float32).reshape(shape)


def reply(tensor: torch.Tensor) -> Response:
    return Response(tensor.contiguous().numpy().tobytes(), media_type="tensor/binary")


def create_app(model: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # async only to read the body; the forward pass then blocks the loop, as a naive
    # endpoint that awaits nothing does.
    @app.post("/remote-decode")
    async def decode(request: Request, shape: Annotated[list[int], Query()]) -> Response:
        z = tensor_of(await request.body(), shape)
        with torch.inference_mode():
            return reply(model.decode(z).sample)

    @app.post("/remote-encode")
    async def encode(request: Request, shape: Annotated[list[int], Query()]) -> Response:
        x = tensor_of(await request.body(), shape)
        with torch.inference_mode():
            encoded = model.encode(x)
        is_tiny = hasattr(encoded, "latents")
        return reply(encoded.latents if is_tiny else encoded.latent_dist.mode())

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Naive FastAPI wrapper around a diffusers VAE")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = diffusers.AutoencoderKL.load_config(args.folder)
    model = getattr(diffusers, config["_class_name"]).from_pretrained(args.folder).eval()
    uvicorn.run(create_app(model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
